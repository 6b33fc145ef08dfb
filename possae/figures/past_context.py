"""Figures of the past-context chapter: spliced loss vs position, the fine-tuning curve, the rotary control."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from possae.figures import legend_below, log_ticks
from possae.figures.length import error_vs_position_figure


def loss_vs_position_figure(curves: pd.DataFrame, context_size: int, methods: list[str]) -> go.Figure:
    """Return the increase in next-token loss with each method spliced in, vs position (loss_curves), context marked."""
    fig = error_vs_position_figure({"held-out text": curves}, context_size, metrics=("delta_loss",), methods=methods,
                                   log_y=False, title="Next-token loss with the reconstruction spliced in at layer 0")
    return fig.update_yaxes(title_text="loss increase over the model (nats)")


def finetune_figure(frame: pd.DataFrame, reference_past: float | None, reference_label: str) -> go.Figure:
    """Return nMSE inside and past the context vs fine-tuning tokens (finetune_frame), with the full-context SAE's
    nMSE past the context as a dashed reference."""
    x = [f"{t // 1000:,}k" if t else "0 (the SAE)" for t in frame["tokens"]]
    fig = go.Figure([
        go.Scatter(x=x, y=frame["nmse_past"], mode="lines+markers", name="past the context"),
        go.Scatter(x=x, y=frame["nmse_in"], mode="lines+markers", name="inside the context"),
    ])
    if reference_past is not None:  # the line's own label: an annotation would stretch the log axis to hold it
        fig.add_hline(y=reference_past, line_dash="dash", line_color="gray",
                      label=dict(text=f"{reference_label}, past the context", textposition="end", yanchor="top",
                                 font=dict(size=11, color="gray")))
    y = frame[["nmse_past", "nmse_in"]].to_numpy(float).ravel().tolist() + ([reference_past] if reference_past else [])
    fig.update_yaxes(type="log", **log_ticks(y))
    fig.update_layout(height=420, xaxis_title="tokens of full-context fine-tuning", yaxis_title="nMSE",
                      title="The fine-tuning fix: nMSE vs fine-tuning tokens")
    return legend_below(fig)


def rotary_figure(curves: pd.DataFrame, context_size: int) -> go.Figure:
    """Return nMSE vs position at each layer (layer_curves), the learned-absolute organism beside its rotary twin."""
    if curves.empty:
        return go.Figure().add_annotation(text="no rotary model on this profile", showarrow=False, xref="paper",
                                          yref="paper", x=0.5, y=0.5).update_layout(height=200)
    frames = {f"layer {layer}": d.assign(method=d["model"]) for layer, d in curves.groupby("layer", sort=True)}
    return error_vs_position_figure(frames, context_size, metrics=("nmse",),
                                    title="SAE nMSE vs position: learned absolute positions vs rotary (log scale)")
