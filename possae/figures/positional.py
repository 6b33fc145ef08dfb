"""Figures of the positional-features chapter: scores, profiles, peaks, the W_pos helix, neurons, the width sweep."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from possae.figures import CONTEXT_COLOR, legend_below, log_ticks, mark_context, scene_layout
from possae.neuronpedia import NO_PAGES, FeaturePages, trace_links


def sorted_scores_figure(r2_pos: Float[np.ndarray, " d_sae"], threshold: float) -> go.Figure:
    """Return every feature's R2_pos sorted in decreasing order (log rank axis), the threshold marked."""
    y = np.sort(np.asarray(r2_pos, dtype=float))[::-1]
    fig = go.Figure(go.Scatter(x=np.arange(1, len(y) + 1), y=y, mode="lines+markers", marker=dict(size=3),
                               name="R²_pos", showlegend=False))
    fig.add_hline(y=threshold, line_dash="dash", line_color="firebrick", annotation_text=f"threshold {threshold:g}")
    fig.update_xaxes(type="log", title_text="feature rank (1 = most positional)", **log_ticks([1, len(y)]))
    return fig.update_layout(height=360, yaxis_title="R²_pos", yaxis_range=[0, 1.02],
                             title="Share of each feature's variance explained by position")


def note_figure(text: str, title: str) -> go.Figure:
    """Return a small empty figure that says why there is nothing to draw."""
    fig = go.Figure().add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig.update_layout(height=160, title=title, xaxis_visible=False, yaxis_visible=False)


def profile_grid_figure(profiles: pd.DataFrame, preacts: pd.DataFrame, windows: dict[int, int],
                        n_cols: int = 1, pages: FeaturePages | None = None) -> go.Figure:
    """Return one panel per feature: mean ± std over all tokens vs position and c_i(p) (right axis), zoomed to its peak.

    Each panel shows positions 0..windows[feature]; position 0, the BOS slot, is shaded. With `pages` on Neuronpedia,
    the mean's hover text names the feature's page and its customdata holds the page's URL.
    """
    pages = pages or NO_PAGES
    title = "Top positional features, zoomed to their peaks"
    feats = list(dict.fromkeys(profiles["feature"]))
    if not feats:
        return note_figure("No positional feature: no profile to draw.", title)
    n_rows = max(1, math.ceil(len(feats) / n_cols))
    fig = make_subplots(n_rows, n_cols, subplot_titles=[f"feature {f}" for f in feats], vertical_spacing=0.3 / n_rows,
                        horizontal_spacing=0.2, specs=[[{"secondary_y": True}] * n_cols for _ in range(n_rows)])
    for j, f in enumerate(feats):
        r, c = j // n_cols + 1, j % n_cols + 1
        end = windows[f]
        d = profiles[(profiles["feature"] == f) & (profiles["position"] <= end)]
        x = d["position"].tolist()
        lo, hi = (d["mean"] - d["std"]).tolist(), (d["mean"] + d["std"]).tolist()
        fig.add_scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor="rgba(31,119,180,0.2)",
                        line=dict(width=0), hoverinfo="skip", name="mean ± std", legendgroup="band",
                        showlegend=j == 0, row=r, col=c)
        hover = ({} if not pages.hosted else dict(
            **trace_links(pages, [f] * len(x)),
            hovertemplate=f"{pages.hover(f)}<br>position %{{x}}<br>mean %{{y:.3f}}<extra></extra>"))
        fig.add_scatter(x=x, y=d["mean"], mode="lines+markers", marker=dict(size=3), line=dict(color="#1f77b4"),
                        name="mean activation", legendgroup="mean", showlegend=j == 0, row=r, col=c, **hover)
        p = preacts[(preacts["feature"] == f) & (preacts["position"] <= end)]
        fig.add_scatter(x=p["position"], y=p["preact_pos"], mode="lines", line=dict(color="#d62728", width=1),
                        name="c_i(p), positional pre-activation", legendgroup="c", showlegend=j == 0,
                        row=r, col=c, secondary_y=True)
        fig.add_scatter(x=[0, end], y=[p["fire_some"].iloc[0]] * 2, mode="lines",
                        line=dict(color="#ff7f0e", width=1.5, dash="dot"), name="c above this: some token fires",
                        legendgroup="floor", showlegend=j == 0, row=r, col=c, secondary_y=True)
        fig.add_vrect(x0=-0.5, x1=0.5, fillcolor=CONTEXT_COLOR, opacity=0.15, line_width=0, row=r, col=c)
        fig.update_xaxes(range=[-0.5, end + 0.5], title_text="position", row=r, col=c)
        fig.update_yaxes(title_text="activation", row=r, col=c, secondary_y=False)
        fig.update_yaxes(title_text="c_i(p)", row=r, col=c, secondary_y=True)
    fig.update_layout(height=260 * n_rows + 80, title=title, margin=dict(l=60, r=60))
    return legend_below(fig)


def peak_histogram_figure(histograms: dict[str, Int[Tensor, " n_pos"]]) -> go.Figure:
    """Return stacked bars: how many features of each group peak at each position 0..n_pos-1."""
    n_pos = len(next(iter(histograms.values())))
    fig = go.Figure([go.Bar(x=np.arange(len(h)), y=h.numpy(), name=name) for name, h in histograms.items()
                     if int(h.sum()) > 0])  # a group with no feature gets no legend entry
    fig.update_layout(barmode="stack", height=360, xaxis_title="peak position", yaxis_title="features",
                      xaxis_range=[-0.5, n_pos - 0.5], title="Where positional features peak")
    return legend_below(fig)


def helix_overlay_figure(helix, pages: FeaturePages | None = None) -> go.Figure:
    """Return two 3-D panels on W_pos's top-3 PCs: its rows (a curve) and the positional features' unit decoder rows
    (hover: the feature, its Neuronpedia page when `pages` has one, and its peak)."""
    pages = pages or NO_PAGES
    rows, row_positions, dirs, features, peaks = helix.rows, helix.row_positions, helix.dirs, helix.features, helix.peaks
    cmax = float(max(int(row_positions.max()), int(peaks.max()) if len(peaks) else 0))
    color = dict(colorscale="Viridis", cmin=0, cmax=cmax)
    fig = make_subplots(2, 1, specs=[[{"type": "scene"}], [{"type": "scene"}]], vertical_spacing=0.06,
                        subplot_titles=("W_pos rows (centred)", "decoder directions of the positional features"))
    fig.add_scatter3d(x=rows[:, 0].tolist(), y=rows[:, 1].tolist(), z=rows[:, 2].tolist(), mode="lines+markers",
                      marker=dict(size=2.5, color=row_positions.tolist(), showscale=True,
                                  colorbar=dict(title="position", thickness=14, len=0.5), **color),
                      line=dict(color="lightgray"), text=[f"position {p}" for p in row_positions.tolist()],
                      showlegend=False, row=1, col=1)
    if len(features):
        fig.add_scatter3d(x=[0.0] * len(features), y=[0.0] * len(features), z=[0.0] * len(features), mode="markers",
                          marker=dict(size=1, color="black"), showlegend=False, hoverinfo="skip", row=2, col=1)
        fig.add_scatter3d(x=dirs[:, 0].tolist(), y=dirs[:, 1].tolist(), z=dirs[:, 2].tolist(), mode="markers",
                          marker=dict(size=4, color=peaks.tolist(), **color),
                          text=[f"{pages.hover(f)}, peak {p}" for f, p in zip(features.tolist(), peaks.tolist())],
                          showlegend=False, row=2, col=1, **trace_links(pages, features.tolist()))
    axes = [f"PC{i + 1} ({float(helix.shares[i]):.0%})" for i in range(3)]
    return fig.update_layout(height=900, scene=scene_layout(axes), scene2=scene_layout(axes), margin=dict(l=10, r=10),
                             title="The W_pos helix and the positional features")


def r2_scatter_figure(scores: pd.DataFrame, threshold: float, low: float, high: float,
                      pages: FeaturePages | None = None) -> go.Figure:
    """Return R2_tok vs R2_pos, one point per (sampled) feature, positional ones (column 'positional') highlighted
    (hover: the feature, its Neuronpedia page when `pages` has one, and its peak)."""
    pages = pages or NO_PAGES
    positional = scores["positional"].to_numpy(dtype=bool)
    fig = make_subplots(2, 1, vertical_spacing=0.16, row_heights=[0.55, 0.45],
                        subplot_titles=("all features", f"zoom: R²_pos < {low:g} (near 0)"))
    for row in (1, 2):
        for mask, name, color in ((~positional, "other features", "#7f7f7f"), (positional, "positional", "#d62728")):
            d = scores[mask]
            fig.add_trace(go.Scattergl(x=d["r2_pos"], y=d["r2_tok"], mode="markers", name=f"{name} ({len(d)})",
                                       legendgroup=name, showlegend=row == 1,
                                       marker=dict(size=4, opacity=0.5 if name == "other features" else 0.9, color=color),
                                       text=[f"{pages.hover(i)}, peak {p}" for i, p in zip(d.index, d["peak_position"])],
                                       **trace_links(pages, d.index.tolist())), row=row, col=1)
        fig.add_scatter(x=[0, 1], y=[1, 0], mode="lines", line=dict(color="lightgray", dash="dot"),
                        name="R²_pos + R²_tok = 1", legendgroup="sum", showlegend=row == 1, row=row, col=1)
        fig.update_yaxes(title_text="R²_tok (token)", range=[-0.02, 1.02], row=row, col=1)
    fig.add_vline(x=threshold, line_dash="dash", line_color="firebrick", row=1, col=1)
    for x in (low, high):
        fig.add_vline(x=x, line_dash="dot", line_color=CONTEXT_COLOR, row=1, col=1)
    fig.update_xaxes(title_text="R²_pos (position)", range=[-0.02, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="R²_pos (position), near 0", range=[-0.001, low], row=2, col=1)
    fig.update_layout(height=720, title="Variance explained by position vs by token, per feature")
    return legend_below(fig)


def neuron_share_figure(share: Float[Tensor, " d_mlp"], threshold: float, chance: float) -> go.Figure:
    """Return every neuron's positional share sorted in decreasing order, the threshold and the chance level marked."""
    y = share.sort(descending=True).values.numpy()
    fig = go.Figure(go.Scatter(x=np.arange(1, len(y) + 1), y=y, mode="lines", showlegend=False))
    fig.add_hline(y=threshold, line_dash="dash", line_color="firebrick", annotation_text=f"threshold {threshold:g}")
    fig.add_hline(y=chance, line_dash="dot", line_color=CONTEXT_COLOR, annotation_text="chance",
                  annotation_position="top right")
    fig.update_xaxes(type="log", **log_ticks([1, len(y)]))
    return fig.update_layout(height=340, xaxis_title="neuron rank (1 = most positional)",
                             yaxis_title="between-position / total variance",
                             title="Layer-0 MLP neurons on held-out text: variance explained by position")


def neuron_profiles_figure(profiles: pd.DataFrame, context_size: int) -> go.Figure:
    """Return mean ± std activation vs position on held-out text, one line and band per neuron."""
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for j, (n, d) in enumerate(profiles.groupby("neuron", sort=False)):
        col = palette[j % len(palette)]
        x = d["position"].tolist()
        lo, hi = (d["mean"] - d["std"]).tolist(), (d["mean"] + d["std"]).tolist()
        rgb = tuple(int(col[i:i + 2], 16) for i in (1, 3, 5))
        fig.add_scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor=f"rgba{rgb + (0.15,)}",
                        line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=str(n))
        fig.add_scatter(x=x, y=d["mean"], mode="lines", line=dict(color=col), name=f"neuron {n}", legendgroup=str(n))
    n_pos = int(profiles["position"].max()) + 1 if len(profiles) else context_size
    mark_context(fig, context_size, n_pos, label=False)
    return fig.update_layout(height=380, xaxis_title="position", yaxis_title="activation (mean ± std over windows)",
                             title="The most positional layer-0 MLP neurons on held-out text")


def width_sweep_figure(sweep: pd.DataFrame, slope: float) -> go.Figure:
    """Return two panels vs d_sae (log axes): positional features (with the power-law fit), and their mean peak width."""
    title = "Positional features vs SAE width"
    if len(sweep) == 0:
        return note_figure("No width sweep on this profile.", title)
    fig = make_subplots(1, 2, horizontal_spacing=0.2, subplot_titles=("positional features", "mean peak width"))
    fig.add_scatter(x=sweep["d_sae"], y=sweep["positional"], mode="lines+markers", text=list(sweep.index),
                    name="positional features", row=1, col=1)
    ok = sweep["positional"] > 0
    if math.isfinite(slope) and ok.sum() >= 2:
        x = sweep["d_sae"][ok].to_numpy(float)
        y = sweep["positional"][ok].to_numpy(float)
        b = float(np.mean(np.log(y) - slope * np.log(x)))
        fig.add_scatter(x=x, y=np.exp(b) * x**slope, mode="lines", line=dict(dash="dot", color="gray"),
                        name=f"fit: ∝ d_sae^{slope:.2f}", row=1, col=1)
    fig.add_scatter(x=sweep["d_sae"], y=sweep["mean_peak_width"], mode="lines+markers", text=list(sweep.index),
                    name="mean peak width", row=1, col=2)
    widths = sweep["d_sae"].to_numpy(float)
    fig.update_xaxes(type="log", title_text="d_sae (SAE width)", tickvals=widths.tolist(),
                     ticktext=[f"{int(w):,}" for w in widths], tickangle=-45)
    fig.update_yaxes(type="log", title_text="positional features", row=1, col=1,
                     **log_ticks(sweep["positional"].to_numpy(float)))
    fig.update_yaxes(title_text="positions ≥ half max", row=1, col=2)
    fig.update_layout(height=400, title=title, margin=dict(l=60, r=20))
    return legend_below(fig, gap=90)
