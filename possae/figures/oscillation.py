"""Figures of the oscillation chapter: activation vs position per layer, spectra, ablations, losses, feature scatter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from possae.figures import mark_context

FAMILIES = ("ReLU", "TopK")
ABLATION_COLORS = {"normal": "#1f77b4", "zero": "#d62728", "shuffle": "#2ca02c"}


def _families(df: pd.DataFrame) -> list[str]:
    return [f for f in FAMILIES if f in set(df["family"])] + sorted(set(df["family"]) - set(FAMILIES))


def position_curves_figure(positions: pd.DataFrame, value: str = "mean_act", first: int = 0,
                           title: str = "", log_y: bool = False) -> go.Figure:
    """Return a grid (rows: layers, columns: SAE families) of `value` vs position, training contexts dashed."""
    fams, layers = _families(positions), sorted(positions["layer"].unique())
    fig = make_subplots(len(layers), len(fams), shared_xaxes=True, vertical_spacing=0.04, horizontal_spacing=0.08,
                        subplot_titles=[f"{fam} SAE, layer {layer}" for layer in layers for fam in fams])
    for c, fam in enumerate(fams, 1):
        for r, layer in enumerate(layers, 1):
            for ablation, g in positions[(positions["family"] == fam) & (positions["layer"] == layer)
                                         & (positions["position"] >= first)].groupby("ablation", sort=False):
                fig.add_scatter(x=g["position"], y=g[value], mode="lines", name=ablation, legendgroup=ablation,
                                line=dict(color=ABLATION_COLORS.get(ablation), width=1.3),
                                showlegend=(r == 1 and c == 1), row=r, col=c)
            g = positions[(positions["family"] == fam) & (positions["layer"] == layer)]
            if len(g):
                mark_context(fig, int(g["context_size"].iloc[0]), int(g["position"].max()) + 1, label=False,
                             row=r, col=c)
    fig.update_xaxes(title_text="position", row=len(layers))
    if log_y:
        fig.update_yaxes(type="log")
    return fig.update_layout(height=220 * len(layers) + 80, title=title, legend_title="W_pos")


def spectrum_figure(spectra: pd.DataFrame) -> go.Figure:
    """Return each SAE's detrended power spectrum over the shuffled-position threshold against the period (log axes),
    one panel per family."""
    fams = _families(spectra)
    fig = make_subplots(1, len(fams), subplot_titles=[f"{f} SAEs" for f in fams], shared_yaxes=True)
    colors = qualitative.Plotly
    for c, fam in enumerate(fams, 1):
        for (layer, sid), g in spectra[spectra["family"] == fam].groupby(["layer", "sae_id"]):
            fig.add_scatter(x=g["period"], y=g["power_over_null"], mode="lines+markers", marker_size=3,
                            name=f"layer {layer}", legendgroup=f"layer {layer}", showlegend=(c == 1),
                            line=dict(color=colors[int(layer) % len(colors)]), row=1, col=c)
        fig.add_hline(y=1, line_dash="dash", line_color="gray", row=1, col=c)
    fig.update_xaxes(title_text="period (positions)", type="log")
    fig.update_yaxes(title_text="power / null threshold", type="log", col=1)
    return fig.update_layout(height=380, title="Detrended spectrum of the average activation, over the "
                                               "shuffled-position threshold (dashed: 1)")


def amplitude_figure(amplitude: pd.DataFrame, y: str = "relative_amplitude") -> go.Figure:
    """Return grouped bars of the oscillation amplitude per SAE under each W_pos condition."""
    fig = go.Figure()
    for ablation, g in amplitude.groupby("ablation", sort=False):
        fig.add_bar(x=[f"{f} L{layer}" for f, layer in zip(g["family"], g["layer"])], y=g[y], name=ablation,
                    marker_color=ABLATION_COLORS.get(ablation))
    return fig.update_layout(barmode="group", height=360, yaxis_title=y.replace("_", " "), legend_title="W_pos",
                             title="Relative amplitude of the average activation over positions 1..C-1")


def loss_by_position_figure(loss: pd.DataFrame, color: str = "ablation", title: str = "") -> go.Figure:
    """Return cross-entropy vs position, one line per value of `color` (condition or spliced SAE)."""
    fig = go.Figure()
    for name, g in loss.groupby(color, sort=False):
        fig.add_scatter(x=g["position"], y=g["ce"], mode="lines", name=str(name), line_width=1.3,
                        line_color=ABLATION_COLORS.get(name))
    return fig.update_layout(height=380, xaxis_title="position", yaxis_title="cross-entropy (nats)", title=title)


SCATTER_FEATURES = 4096  # live features drawn per SAE at most (a fixed sample past it: 12 x 24,576 made a 17 MB page)


def feature_scatter_figure(features: dict[str, pd.DataFrame], layers: dict[str, int],
                           max_points: int = SCATTER_FEATURES) -> go.Figure:
    """Return per SAE the per-feature mean vs std scatter, coloured by log10 firing density (log axes); an SAE with
    more than max_points live features shows a fixed random sample of them."""
    ids = list(features)
    fig = make_subplots(1, len(ids), subplot_titles=[f"layer {layers[s]} ({s})" for s in ids], shared_yaxes=True)
    sampled = False
    for c, sid in enumerate(ids, 1):
        df = features[sid][features[sid]["density"] > 0]
        if len(df) > max_points:
            df, sampled = df.sample(max_points, random_state=0).sort_index(), True
        fig.add_scatter(x=df["mean"], y=df["std"], mode="markers", showlegend=False, row=1, col=c,
                        marker=dict(size=3, color=np.log10(df["density"]), colorscale="Viridis", cmin=-5, cmax=0,
                                    colorbar=dict(title="log10 density") if c == len(ids) else None,
                                    showscale=c == len(ids)),
                        text=[f"feature {f}" for f in df["feature"]])
    fig.update_xaxes(type="log", title_text="mean activation")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="std of activation", col=1)
    title = "Per-feature mean, std and firing density"
    return fig.update_layout(height=380, title=title + (f" ({max_points:,} live features per SAE)" if sampled else ""))


def decile_figure(features: dict[str, pd.DataFrame], layers: dict[str, int]) -> go.Figure:
    """Return per SAE the median over features of each decile of nonzero activations, relative to the median."""
    fig = go.Figure()
    for sid, df in features.items():
        q = df[[c for c in df.columns if c.startswith("q")]].dropna()
        rel = q.div(q["q50"], axis=0).median()
        fig.add_scatter(x=[int(c[1:]) for c in q.columns], y=rel.to_numpy(), mode="lines+markers",
                        name=f"layer {layers[sid]}")
    return fig.update_layout(height=350, xaxis_title="decile of a feature's nonzero activations (%)",
                             yaxis_title="value / feature's median", yaxis_type="log",
                             title="Shape of the per-feature activation distribution (median over features)")
