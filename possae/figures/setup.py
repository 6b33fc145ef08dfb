"""Figures of the setup chapter: held-out loss, W_pos principal components and position-position cosines."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from possae.figures import scene_layout
from possae.wpos import pca, position_cosine_matrix


def heldout_loss_figure(df: pd.DataFrame) -> go.Figure:
    """Return grouped bars of held-out loss and the unigram baseline per corpus."""
    fig = go.Figure([go.Bar(name="organism", x=df["corpus"], y=df["loss"]),
                     go.Bar(name="unigram baseline", x=df["corpus"], y=df["unigram_loss"])])
    return fig.update_layout(barmode="group", xaxis_title="held-out corpus", yaxis_title="cross-entropy (nats/token)",
                             height=380, title="Held-out loss per corpus")


def wpos_pca_figure(W_pos: Float[Tensor, "n_pos d_model"], first: int = 1, n_components: int = 6,
                    title: str | None = None) -> go.Figure:
    """Return W_pos's explained-variance ratios above its rows projected on the top 3 PCs (3-D, coloured by position)."""
    scores, ratios, _ = pca(W_pos[first:])
    pos = torch.arange(first, W_pos.shape[0])
    fig = make_subplots(2, 1, specs=[[{"type": "xy"}], [{"type": "scene"}]], row_heights=[0.25, 0.75],
                        vertical_spacing=0.2,
                        subplot_titles=("variance explained per principal component",
                                        "rows on the top 3 principal components"))
    fig.add_bar(x=[f"PC{i + 1}" for i in range(n_components)], y=ratios[:n_components].tolist(), row=1, col=1,
                showlegend=False)
    fig.add_scatter3d(x=scores[:, 0].tolist(), y=scores[:, 1].tolist(), z=scores[:, 2].tolist(), mode="lines+markers",
                      marker=dict(size=2.5, color=pos.tolist(), colorscale="Viridis", showscale=True,
                                  colorbar=dict(title="position", len=0.6, y=0.35, thickness=14)),
                      line=dict(color="lightgray"), text=[f"position {p}" for p in pos.tolist()], showlegend=False,
                      row=2, col=1)
    title = title or f"W_pos, rows {first}..{W_pos.shape[0] - 1}"
    fig.update_xaxes(title_text="principal component", row=1, col=1)
    fig.update_yaxes(title_text="variance", tickformat=".0%", row=1, col=1)
    axes = [f"PC{i + 1} ({float(ratios[i]):.0%})" for i in range(3)]
    return fig.update_layout(height=680, title=title, margin=dict(l=60, r=20),
                             scene=scene_layout(axes))


MAX_HEATMAP_SIDE = 512  # more positions than this are shown every k-th (GPT-2's 1023 x 1023 would be a 20 MB page)


def position_cosine_figure(W_pos: Float[Tensor, "n_pos d_model"], first: int = 1,
                           max_side: int = MAX_HEATMAP_SIDE) -> go.Figure:
    """Return the heatmap of cosine similarity between every pair of positions (every k-th past max_side rows)."""
    C = position_cosine_matrix(W_pos[first:])
    pos = list(range(first, W_pos.shape[0]))
    title = "cosine similarity of W_pos rows"
    if len(pos) > max_side:
        step = -(-len(pos) // max_side)
        C, pos = C[::step, ::step].float().numpy(), pos[::step]  # float32 arrays travel base64-encoded
        title += f" (every {step}th position)" if step > 3 else f" (every {['', '', '2nd', '3rd'][step]} position)"
    else:
        C = C.tolist()
    fig = go.Figure(go.Heatmap(z=C, x=pos, y=pos, colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
                               colorbar=dict(title="cosine", thickness=14)))
    return fig.update_layout(height=520, xaxis_title="position", yaxis_title="position", margin=dict(l=60, r=20),
                             yaxis=dict(autorange="reversed", scaleanchor="x", constrain="domain"),
                             xaxis=dict(constrain="domain"), title=title)
