"""Figures of the length-generalization chapter: error vs position, positional profiles, spurious firing, fixes."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from possae.figures import legend_below, log_ticks, mark_context
from possae.length import MEAN_LABEL, RANDOM_LABEL, RANDOM_REC_LABEL
from possae.neuronpedia import NO_PAGES, FeaturePages, trace_links

METRIC_TITLES = {"nmse": "nMSE", "mse": "MSE"}
# ten distinct colours (the SAE first, blue; the first baseline second, grey), then darker ones: no two methods of one
# figure share a colour
PALETTE = ["#1f77b4", "#7f7f7f", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"]
# the baselines' line styles: each drawn apart from the methods (solid) and from the other baselines
BASELINE_DASH = {RANDOM_LABEL: "dot", RANDOM_REC_LABEL: "dash", MEAN_LABEL: "dashdot"}


def _empty(fig: go.Figure, text: str) -> go.Figure:
    """Return fig with a centred note saying why it has no data."""
    return fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)


def error_vs_position_figure(frames: dict[str, pd.DataFrame], context_size: int, metrics: tuple[str, ...] = ("nmse",),
                             methods: list[str] | None = None, log_y: bool = True, title: str | None = None,
                             n_cols: int = 2) -> go.Figure:
    """Return a grid of panels, one per (metric, frame of error_curves, e.g. held-out text, all tokens): the metric vs
    position, one line per method (the baselines in BASELINE_DASH's styles, any other "random" method dotted), the
    context marked. With one metric, the frames wrap
    into rows of `n_cols` panels; with several, each metric is a row.
    """
    cells = [(metric, name) for metric in metrics for name in frames]
    cols = len(frames) if len(metrics) > 1 else min(n_cols, len(frames))
    rows = -(-len(cells) // cols)
    multi = len(metrics) > 1
    titles = [f"{name}: {METRIC_TITLES.get(metric, metric)}" if multi else name for metric, name in cells]
    fig = make_subplots(rows, cols, subplot_titles=titles, horizontal_spacing=0.14, vertical_spacing=0.32 / rows)
    colors: dict[str, str] = {}
    for k, (metric, name) in enumerate(cells):
        row, col = k // cols + 1, k % cols + 1
        df = frames[name]
        for method in methods or list(dict.fromkeys(df["method"])):
            d = df[df["method"] == method]
            if d.empty:
                continue
            first = method not in colors
            color = colors.setdefault(method, PALETTE[len(colors) % len(PALETTE)])
            fig.add_scatter(x=d["position"], y=d[metric], mode="lines", name=method, legendgroup=method,
                            line=dict(color=color, dash=BASELINE_DASH.get(method, "dot" if "random" in method else None)),
                            showlegend=first,
                            row=row, col=col)
        mark_context(fig, context_size, row=row, col=col)
        y = df[metric].to_numpy(float)
        fig.update_yaxes(title_text=METRIC_TITLES.get(metric, metric), row=row, col=col,
                         **(dict(type="log", **log_ticks(y)) if log_y else {}))
        fig.update_xaxes(title_text="position", row=row, col=col)
    fig.update_layout(height=120 + 300 * rows, title=title, margin=dict(l=60, r=20))
    return legend_below(fig)


def positional_profiles_figure(profiles: pd.DataFrame, context_size: int, value: str = "mean",
                               pages: FeaturePages | None = None) -> go.Figure:
    """Return `value` (mean activation over all tokens) vs position, one line per feature, the context marked; with
    `pages` on Neuronpedia, the hover text names each feature's page and the line's customdata holds its URL."""
    pages = pages or NO_PAGES
    fig = go.Figure()
    for feature, d in profiles.groupby("feature", sort=False):
        fig.add_scatter(x=d["position"], y=d[value], mode="lines", name=f"feature {feature}",
                        **_feature_hover(pages, int(feature), len(d)))
    if profiles.empty:
        _empty(fig, "no positional feature")
    mark_context(fig, context_size)
    fig.update_layout(height=400, xaxis_title="position", yaxis_title=f"{value} activation over all tokens",
                      title="Positional features inside and past the SAE's context")
    return legend_below(fig)


def firing_by_kind_figure(df: pd.DataFrame, context_size: int) -> go.Figure:
    """Return the expected number of firing features per token vs position, one line per column of df (log scale)."""
    fig = go.Figure([go.Scatter(x=df.index, y=df[c], mode="lines", name=c) for c in df.columns])
    mark_context(fig, context_size)
    fig.update_yaxes(type="log", **log_ticks(df.to_numpy(float)))
    fig.update_layout(height=380, xaxis_title="position", yaxis_title="firing features per token",
                      title="Active features per token vs position (all tokens)")
    return legend_below(fig)


def spurious_rate_figure(df: pd.DataFrame, context_size: int) -> go.Figure:
    """Return spurious pairs per token (positional / non-positional) and their share of L0, vs position."""
    fig = make_subplots(2, 1, vertical_spacing=0.2,
                        subplot_titles=("spurious (token, feature) pairs per token", "spurious share of the active features"))
    for c in ("non-positional", "positional"):
        fig.add_scatter(x=df.index, y=df[c], mode="lines", name=f"{c} features", row=1, col=1)
    fig.add_scatter(x=df.index, y=df["spurious_share_of_l0"], mode="lines", name="spurious / L0",
                    line=dict(color="black"), row=2, col=1)
    for row in (1, 2):
        mark_context(fig, context_size, row=row, col=1)
        fig.update_xaxes(title_text="position", row=row, col=1)
    fig.update_yaxes(type="log", title_text="pairs per token", row=1, col=1,
                     **log_ticks(df[["non-positional", "positional"]].to_numpy(float)))
    fig.update_yaxes(tickformat=".0%", title_text="share of L0", row=2, col=1)
    fig.update_layout(height=640, title="Features firing past the context on tokens<br>that never fire them inside it",
                      margin=dict(l=60, r=20, t=120))
    return legend_below(fig)


def _feature_hover(pages: FeaturePages, feature: int, n: int, label: str = "") -> dict:
    """Return a line's hovertemplate naming the feature's Neuronpedia page and its customdata (the URL), or {}."""
    if not pages.hosted:
        return {}
    lead = f"{label}<br>" if label else ""
    return dict(**trace_links(pages, [feature] * n),
                hovertemplate=f"{lead}{pages.hover(feature)}<br>position %{{x}}<br>%{{y:.3f}}<extra></extra>")


def example_profile_figure(df: pd.DataFrame, context_size: int, pages: FeaturePages | None = None) -> go.Figure:
    """Return one feature's activation vs position for a few tokens (one line per `label`), the context marked; with
    `pages` on Neuronpedia, the hover text names the feature's page and each line's customdata holds its URL."""
    pages = pages or NO_PAGES
    fig = go.Figure()
    for label, d in df.groupby("label", sort=False):
        fig.add_scatter(x=d["position"], y=d["activation"], mode="lines", name=label,
                        **_feature_hover(pages, int(d["feature"].iloc[0]), len(d), label))
    if df.empty:
        _empty(fig, "no spurious example found")
    mark_context(fig, context_size)
    title = "No example" if df.empty else f"Feature {int(df['feature'].iloc[0])} on W_E[t] + W_pos[p]"
    fig.update_layout(height=380, xaxis_title="position", yaxis_title="activation", title=title)
    return legend_below(fig)
