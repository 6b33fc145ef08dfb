"""Figures of the feature-matching chapter: top-4 cosine distributions, layer-by-layer heatmaps, shares per comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from possae.figures import legend_below
from possae.matching import STUDY_RANGES



def top_cosine_figure(long: pd.DataFrame, threshold: float = 0.7, bins: int = 60,
                      title: str = "Each feature's 1st..4th best decoder cosine in the other dictionary") -> go.Figure:
    """Return one panel per rank (1st..4th best cosine): the share of features per cosine bin, one line per pair."""
    ranks = sorted(long["rank"].unique())
    lo = min(-0.1, float(np.floor(long["cosine"].min() * 10) / 10)) if len(long) else -0.1
    edges = np.linspace(lo, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    n_cols = 2
    n_rows = -(-len(ranks) // n_cols)
    fig = make_subplots(n_rows, n_cols, shared_yaxes=True, horizontal_spacing=0.06, vertical_spacing=0.3 / n_rows,
                        subplot_titles=[f"{'1st 2nd 3rd 4th'.split()[r - 1] if r <= 4 else f'{r}th'} best" for r in ranks])
    colors = qualitative.Plotly
    for p, (pair, g) in enumerate(long.groupby("pair", sort=False)):
        for c, r in enumerate(ranks, 1):
            v = g.loc[g["rank"] == r, "cosine"].to_numpy()
            counts, _ = np.histogram(np.clip(v, lo, 1.0), bins=edges)
            fig.add_scatter(x=centers, y=counts / max(len(v), 1), mode="lines", name=pair, legendgroup=pair,
                            line=dict(color=colors[p % len(colors)], width=1.5,
                                      dash="dot" if "random" in pair else None),
                            showlegend=(c == 1), row=(c - 1) // n_cols + 1, col=(c - 1) % n_cols + 1)
            fig.add_vline(x=threshold, line_dash="dash", line_color="gray", row=(c - 1) // n_cols + 1,
                          col=(c - 1) % n_cols + 1)
            fig.update_xaxes(title_text="cosine", row=(c - 1) // n_cols + 1, col=(c - 1) % n_cols + 1)
    fig.update_yaxes(title_text="share of features", col=1)
    fig.update_layout(height=140 + 300 * n_rows, title=title, margin=dict(l=60, r=20))
    return legend_below(fig)


def layer_heatmap_figure(matrix: pd.DataFrame, value: str = "share", threshold: float = 0.7) -> go.Figure:
    """Return one heatmap per SAE family: row layer's features, column layer's dictionary, colour = `value`."""
    fams = list(dict.fromkeys(matrix["family"]))
    label = {"share": f"share with a match ≥ {threshold:g}", "mmcs": "mean max cosine (MMCS)"}.get(value, value)
    fig = make_subplots(1, len(fams), subplot_titles=[f"{f} SAEs" for f in fams], horizontal_spacing=0.12)
    for c, fam in enumerate(fams, 1):
        m = matrix[matrix["family"] == fam].pivot(index="layer_a", columns="layer_b", values=value)
        fig.add_heatmap(z=m.to_numpy(), x=[str(x) for x in m.columns], y=[str(y) for y in m.index], zmin=0, zmax=1,
                        colorscale="Viridis", text=np.round(m.to_numpy(), 2), texttemplate="%{text}",
                        colorbar=dict(title=label, len=0.9), showscale=(c == 1),
                        hovertemplate="features of layer %{y}<br>in layer %{x}'s dictionary: %{z:.3f}<extra></extra>",
                        row=1, col=c)
        fig.update_xaxes(title_text="dictionary of layer", type="category", row=1, col=c)
        fig.update_yaxes(title_text="features of layer", type="category", autorange="reversed", row=1, col=c)
    return fig.update_layout(height=420, title=f"Layer against layer: {label}")


def comparison_figure(results: pd.DataFrame, threshold: float = 0.7,
                      study_ranges: dict[str, tuple[float, float]] | None = STUDY_RANGES) -> go.Figure:
    """Return the share of features matched per pair, best match (of the smaller dictionary's features; both
    directions' mean when equal) beside Hungarian: horizontal bars, one panel per comparison (stacked, panels as tall as
    their pairs), with the study's reported range as a band where it has one."""
    comps = list(dict.fromkeys(results["comparison"]))
    counts = [max(1, int((results["comparison"] == c).sum())) for c in comps]
    row_px, gap_px = 34, 52
    plot_h = sum(counts) * row_px + gap_px * (len(comps) - 1)
    fig = make_subplots(len(comps), 1, shared_xaxes=True, subplot_titles=comps, row_heights=counts,
                        vertical_spacing=gap_px / plot_h if len(comps) > 1 else 0)
    for r, comp in enumerate(comps, 1):
        g = results[results["comparison"] == comp]
        y = [f"{a} / {b}" for a, b in zip(g["a"], g["b"])]
        fig.add_bar(y=y, x=g["dec_share_small"], orientation="h", name="best match", marker_color="#1f77b4",
                    legendgroup="best", showlegend=(r == 1), row=r, col=1)
        fig.add_bar(y=y, x=g["hungarian_share"], orientation="h", name="one-to-one", marker_color="#ff7f0e",
                    legendgroup="hung", showlegend=(r == 1), row=r, col=1)
        if study_ranges and comp in study_ranges:
            lo, hi = study_ranges[comp]
            fig.add_vrect(x0=lo, x1=hi, fillcolor="gray", opacity=0.2, line_width=0, row=r, col=1)
        fig.update_yaxes(title_text="pair", autorange="reversed", tickfont=dict(size=10), row=r, col=1)
    fig.update_xaxes(range=[0, 1.02])
    fig.update_xaxes(title_text=f"share with cosine ≥ {threshold:g}", showticklabels=True,
                     row=len(comps), col=1)
    fig.update_layout(height=plot_h + 180, barmode="group", margin=dict(t=110, l=10, r=20, b=80),
                      title="Share matched per pair<br>(grey band: the study's reported range)")
    fig.update_yaxes(automargin=True)
    return legend_below(fig, gap=50)
