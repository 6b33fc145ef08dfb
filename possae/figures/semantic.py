"""Figures of the semantic-features chapter: token scores, chosen tokens' top features, position invariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from possae.figures import CONTEXT_COLOR, legend_below, mark_context
from possae.neuronpedia import NO_PAGES, FeaturePages, trace_links

RANK_COLORS = px.colors.qualitative.Plotly  # the k-th top feature of every token has the same colour


def score_curve_figure(curve: pd.DataFrame, scores: pd.DataFrame, threshold: float, max_points: int = 2000) -> go.Figure:
    """Return sorted R2_tok and R2_pos vs rank (threshold marked) beside a 2-D histogram of (R2_pos, R2_tok) per feature.

    The curves keep at most about max_points evenly spaced ranks (the first and last always), to keep pages light.
    """
    step = max(1, -(-len(curve) // max_points))
    curve = curve.iloc[sorted(set(range(0, len(curve), step)) | {len(curve) - 1})]
    fig = make_subplots(2, 1, row_heights=[0.45, 0.55], vertical_spacing=0.16,
                        subplot_titles=("scores sorted over the features", "live features by (R²_pos, R²_tok)"))
    fig.add_scatter(x=curve.index, y=curve["r2_tok"], mode="lines", name="R²_tok (token)", row=1, col=1)
    fig.add_scatter(x=curve.index, y=curve["r2_pos"], mode="lines", name="R²_pos (position)",
                    line=dict(dash="dot"), row=1, col=1)
    fig.add_hline(y=threshold, line_dash="dash", line_color=CONTEXT_COLOR, row=1, col=1,
                  label=dict(text=f"threshold {threshold:g}", textposition="end", yanchor="bottom",
                             font=dict(size=11, color=CONTEXT_COLOR)))
    alive = scores[scores["alive"]]
    edges = np.linspace(0.0, 1.0, 21)
    counts, _, _ = np.histogram2d(alive["r2_pos"].clip(0, 1), alive["r2_tok"].clip(0, 1), bins=[edges, edges])
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    shown = np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 0.5, np.nan).T  # colour: log count; empty: blank
    top = max(1, int(np.ceil(np.log10(max(counts.max(), 1)))))
    bar = dict(title="features", thickness=14, len=0.5, y=0.27, tickvals=[e + 0.5 for e in range(top + 1)],
               ticktext=[f"{10 ** e:,}" for e in range(top + 1)])
    fig.add_heatmap(x=centres, y=centres, z=shown.tolist(), customdata=counts.T.astype(int).tolist(), colorscale="Blues",
                    zmin=0, showscale=True, colorbar=bar, row=2, col=1,
                    hovertemplate="R²_pos ≈ %{x:.3f}<br>R²_tok ≈ %{y:.3f}<br>%{customdata} features<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[1, 0], mode="lines", line=dict(color=CONTEXT_COLOR, dash="dot"),
                    name="R²_pos + R²_tok = 1", row=2, col=1)
    fig.update_xaxes(title_text="feature rank", row=1, col=1)
    fig.update_yaxes(title_text="share of variance", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="R²_pos", range=[0, 1], row=2, col=1)
    fig.update_yaxes(title_text="R²_tok", range=[0, 1], row=2, col=1)
    fig.update_layout(height=760, margin=dict(l=60, r=20),
                      title="How much of each feature's variance the token explains")
    return legend_below(fig)


def token_profiles_figure(profiles: pd.DataFrame, context_size: int, n_cols: int = 2,
                          pages: FeaturePages | None = None) -> go.Figure:
    """Return one panel per token: activation vs position of its top features, the context marked.

    Each line is named '#rank feature i' under the legend group of its token, and coloured by rank, as in the table
    of the tokens' top features (columns label, rank, feature, position, activation). With `pages` on Neuronpedia, the
    hover text names the feature's page and the line's customdata holds its URL.
    """
    pages = pages or NO_PAGES
    labels = list(dict.fromkeys(profiles["label"]))
    n_rows = max(1, -(-len(labels) // n_cols))
    fig = make_subplots(n_rows, n_cols, subplot_titles=[f"token {label}" for label in labels],
                        vertical_spacing=0.5 / n_rows if n_rows > 1 else 0.1, horizontal_spacing=0.08)
    for k, label in enumerate(labels):
        row, col = k // n_cols + 1, k % n_cols + 1
        d = profiles[profiles["label"] == label]
        for (rank, feature), g in d.groupby(["rank", "feature"], sort=True):
            name = f"#{rank} feature {feature}"
            colour = RANK_COLORS[(rank - 1) % len(RANK_COLORS)]
            shown = f"#{rank} {pages.hover(feature)}"
            hover = f"token {label}<br>{shown}<br>position %{{x}}<br>activation %{{y:.3f}}<extra></extra>"
            fig.add_scatter(x=g["position"], y=g["activation"], mode="lines", name=name, legendgroup=label,
                            legendgrouptitle_text=f"token {label}", line=dict(color=colour), row=row, col=col,
                            hovertemplate=hover, **trace_links(pages, [feature] * len(g)))
        mark_context(fig, context_size, row=row, col=col)
        fig.update_xaxes(title_text="position", row=row, col=col)
        fig.update_yaxes(title_text="activation", row=row, col=col)
    fig.update_layout(height=320 * n_rows, margin=dict(l=60, r=20), legend=dict(font=dict(size=10)),
                      title="Each token's top features, activation vs position")
    return legend_below(fig, font_size=10)


def variation_figure(frame: pd.DataFrame, threshold: float) -> go.Figure:
    """Return histograms of log10 of the variation over positions (cv) on each feature's top token, semantic vs not."""
    ok = frame[(frame["top_mean"] > 0) & frame["cv"].notna()]
    fig = go.Figure()
    for name, d in (("semantic (R²_tok ≥ %g)" % threshold, ok[ok["r2_tok"] >= threshold]),
                    ("other", ok[ok["r2_tok"] < threshold])):
        if len(d):
            fig.add_histogram(x=np.log10(d["cv"].clip(lower=1e-6)), name=f"{name}: {len(d)}", opacity=0.7,
                              xbins=dict(size=0.1))
    fig.update_layout(barmode="overlay", height=380, xaxis_title="log10 cv over positions (top token)",
                      yaxis_title="features", title="Variation over positions of each feature's<br>activation on its top token")
    return legend_below(fig)


def invariant_profiles_figure(profiles: pd.DataFrame, context_size: int, pages: FeaturePages | None = None) -> go.Figure:
    """Return activation vs position of features on their top tokens (one line per label), the context marked; with
    `pages` on Neuronpedia, the hover text names each feature's page and the line's customdata holds its URL."""
    pages = pages or NO_PAGES
    fig = go.Figure()
    for label, d in profiles.groupby("label", sort=False):
        f = int(d["feature"].iloc[0])
        hover = ({} if not pages.hosted else dict(
            **trace_links(pages, [f] * len(d)),
            hovertemplate=f"{label}<br>{pages.hover(f)}<br>position %{{x}}<br>activation %{{y:.3f}}<extra></extra>"))
        fig.add_scatter(x=d["position"], y=d["activation"], mode="lines", name=label, **hover)
    if not len(profiles):
        fig.add_annotation(text="no semantic feature fires on its top token", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    mark_context(fig, context_size)
    fig.update_layout(height=420, xaxis_title="position", yaxis_title="activation on the top token",
                      legend=dict(font=dict(size=10)), margin=dict(l=60, r=20),
                      title="The most position-invariant features,<br>on their top tokens, at every position")
    return legend_below(fig, font_size=10)
