"""Figures of the length-generalization chapter: error vs position, positional profiles, spurious firing, fixes."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from possae.figures import mark_context
from possae.neuronpedia import NO_PAGES, FeaturePages, trace_links

METRIC_TITLES = {"nmse": "nMSE", "mse": "MSE"}
PALETTE = ["#1f77b4", "#7f7f7f", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


def _empty(fig: go.Figure, text: str) -> go.Figure:
    """Return fig with a centred note saying why it has no data."""
    return fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)


def error_vs_position_figure(frames: dict[str, pd.DataFrame], context_size: int, metrics: tuple[str, ...] = ("nmse",),
                             methods: list[str] | None = None, log_y: bool = True, title: str | None = None) -> go.Figure:
    """Return a grid of panels, one row per metric and one column per frame of error_curves (e.g. held-out text, all tokens).

    Each panel shows the metric vs position, one line per method (random baselines dotted), the context marked.
    """
    titles = list(frames) + [""] * (len(frames) * (len(metrics) - 1))
    fig = make_subplots(len(metrics), len(frames), subplot_titles=titles, shared_xaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.08)
    colors: dict[str, str] = {}
    for row, metric in enumerate(metrics, start=1):
        for col, df in enumerate(frames.values(), start=1):
            for method in methods or list(dict.fromkeys(df["method"])):
                d = df[df["method"] == method]
                if d.empty:
                    continue
                first = method not in colors
                color = colors.setdefault(method, PALETTE[len(colors) % len(PALETTE)])
                fig.add_scatter(x=d["position"], y=d[metric], mode="lines", name=method, legendgroup=method,
                                line=dict(color=color, dash="dot" if "random" in method else None), showlegend=first,
                                row=row, col=col)
            mark_context(fig, context_size, row=row, col=col)
        fig.update_yaxes(title_text=METRIC_TITLES.get(metric, metric), row=row, col=1)
    for col in range(1, len(frames) + 1):
        fig.update_xaxes(title_text="position", row=len(metrics), col=col)
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig.update_layout(height=180 + 280 * len(metrics), title=title, legend=dict(orientation="h", y=-0.12))


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
    return fig.update_layout(height=400, xaxis_title="position", yaxis_title=f"{value} activation over all tokens",
                             title="Positional features inside and past the SAE's context")


def firing_by_kind_figure(df: pd.DataFrame, context_size: int) -> go.Figure:
    """Return the expected number of firing features per token vs position, one line per column of df (log scale)."""
    fig = go.Figure([go.Scatter(x=df.index, y=df[c], mode="lines", name=c) for c in df.columns])
    mark_context(fig, context_size)
    return fig.update_layout(height=380, xaxis_title="position", yaxis_title="firing features per token (all tokens)",
                             yaxis_type="log", title="Active features per token vs position")


def spurious_rate_figure(df: pd.DataFrame, context_size: int) -> go.Figure:
    """Return spurious pairs per token (positional / non-positional) and their share of L0, vs position."""
    fig = make_subplots(1, 2, subplot_titles=("spurious (token, feature) pairs per token", "share of the active features"))
    for c in ("non-positional", "positional"):
        fig.add_scatter(x=df.index, y=df[c], mode="lines", name=f"{c} features", row=1, col=1)
    fig.add_scatter(x=df.index, y=df["spurious_share_of_l0"], mode="lines", name="spurious / L0",
                    line=dict(color="black"), row=1, col=2)
    for col in (1, 2):
        mark_context(fig, context_size, row=1, col=col)
        fig.update_xaxes(title_text="position", row=1, col=col)
    fig.update_yaxes(type="log", title_text="per token (log scale)", row=1, col=1)
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    return fig.update_layout(height=400, title="Features firing past the context on tokens that never fire them inside it")


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
    return fig.update_layout(height=380, xaxis_title="position", yaxis_title="activation", title=title)
