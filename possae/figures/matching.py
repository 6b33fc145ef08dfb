"""Figures of the feature-matching chapter: top-4 cosine distributions, layer-by-layer heatmaps, shares per comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from possae.matching import STUDY_RANGES

# legends sit outside every panel and its title: to the right of the plot area, or below the x-axis titles
RIGHT_LEGEND = dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top")


def top_cosine_figure(long: pd.DataFrame, threshold: float = 0.7, bins: int = 60,
                      title: str = "Each feature's 1st..4th best decoder cosine in the other dictionary") -> go.Figure:
    """Return one panel per rank (1st..4th best cosine): the share of features per cosine bin, one line per pair."""
    ranks = sorted(long["rank"].unique())
    lo = min(-0.1, float(np.floor(long["cosine"].min() * 10) / 10)) if len(long) else -0.1
    edges = np.linspace(lo, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = make_subplots(1, len(ranks), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"{'1st 2nd 3rd 4th'.split()[r - 1] if r <= 4 else f'{r}th'} best" for r in ranks])
    colors = qualitative.Plotly
    for p, (pair, g) in enumerate(long.groupby("pair", sort=False)):
        for c, r in enumerate(ranks, 1):
            v = g.loc[g["rank"] == r, "cosine"].to_numpy()
            counts, _ = np.histogram(np.clip(v, lo, 1.0), bins=edges)
            fig.add_scatter(x=centers, y=counts / max(len(v), 1), mode="lines", name=pair, legendgroup=pair,
                            line=dict(color=colors[p % len(colors)], width=1.5,
                                      dash="dot" if "random" in pair else None),
                            showlegend=(c == 1), row=1, col=c)
            fig.add_vline(x=threshold, line_dash="dash", line_color="gray", row=1, col=c)
            fig.update_xaxes(title_text="cosine", row=1, col=c)
    fig.update_yaxes(title_text="share of features", row=1, col=1)
    return fig.update_layout(height=420, title=title, margin=dict(b=150),
                             legend=dict(orientation="h", x=0, xanchor="left", y=-0.3, yanchor="top"))


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
    directions' mean when equal) beside Hungarian, pairs grouped by comparison, with the study's reported range as a
    band where it has one."""
    comps = list(dict.fromkeys(results["comparison"]))
    fig = make_subplots(1, len(comps), shared_yaxes=True, subplot_titles=comps, horizontal_spacing=0.02,
                        column_widths=[max(1, (results["comparison"] == c).sum()) for c in comps])
    for c, comp in enumerate(comps, 1):
        g = results[results["comparison"] == comp]
        x = [f"{a} / {b}" for a, b in zip(g["a"], g["b"])]
        fig.add_bar(x=x, y=g["dec_share_small"], name="best match", marker_color="#1f77b4",
                    legendgroup="best", showlegend=(c == 1), row=1, col=c)
        fig.add_bar(x=x, y=g["hungarian_share"], name="one-to-one", marker_color="#ff7f0e",
                    legendgroup="hung", showlegend=(c == 1), row=1, col=c)
        if study_ranges and comp in study_ranges:
            lo, hi = study_ranges[comp]
            fig.add_hrect(y0=lo, y1=hi, fillcolor="gray", opacity=0.2, line_width=0, row=1, col=c)
        fig.update_xaxes(tickangle=45, row=1, col=c)
    fig.update_yaxes(title_text=f"share of features with cosine ≥ {threshold:g}", range=[0, 1.02], row=1, col=1)
    return fig.update_layout(height=520, barmode="group", legend=RIGHT_LEGEND, margin=dict(t=90),
                             title="Share matched per pair (grey band: the study's reported range)")
