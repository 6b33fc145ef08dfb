"""Figures of the oscillation chapter: activation vs position per layer, spectra, ablations, losses, feature scatter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from possae.figures import legend_below, log_ticks, mark_context

FAMILIES = ("ReLU", "TopK")
ABLATION_COLORS = {"normal": "#1f77b4", "zero": "#d62728", "shuffle": "#2ca02c"}
VALUE_TITLES = {"mean_act": "mean activation", "mean_nonzero": "mean nonzero act.", "nmse": "nMSE"}
FAMILY_SHADES = {"ReLU": ["#08306b", "#2171b5", "#6baed6", "#9ecae1"],  # one hue per family, darker = earlier layer
                 "TopK": ["#7f2704", "#d94801", "#fd8d3c", "#fdae6b"]}
LAYER_COLORS = qualitative.D3


def sae_families(positions: pd.DataFrame) -> dict[str, str]:
    """Return {sae_id: family} from a frame with columns sae_id and family (e.g. the chapter's positions)."""
    return dict(zip(positions["sae_id"], positions["family"]))


def _family_color(family: str, k: int) -> str:
    shades = FAMILY_SHADES.get(family, LAYER_COLORS)
    return shades[k % len(shades)]


def _families(df: pd.DataFrame) -> list[str]:
    return [f for f in FAMILIES if f in set(df["family"])] + sorted(set(df["family"]) - set(FAMILIES))


def position_curves_figure(positions: pd.DataFrame, value: str = "mean_act", first: int = 0,
                           title: str = "", log_y: bool = False, fit_context: bool = False) -> go.Figure:
    """Return a grid (rows: layers, columns: SAE families) of `value` vs position, training contexts dashed.

    With `fit_context`, each panel's y-axis spans the values inside the SAE's training context: values past it (which
    can be many times larger) run off the panel instead of flattening the curve the text is about.
    """
    fams, layers = _families(positions), sorted(positions["layer"].unique())
    several = positions["ablation"].nunique() > 1  # one condition: the title names it, no legend
    fig = make_subplots(len(layers), len(fams), shared_xaxes=True, vertical_spacing=0.06, horizontal_spacing=0.18,
                        subplot_titles=[f"{fam} SAE, layer {layer}" for layer in layers for fam in fams])
    for c, fam in enumerate(fams, 1):
        for r, layer in enumerate(layers, 1):
            for ablation, g in positions[(positions["family"] == fam) & (positions["layer"] == layer)
                                         & (positions["position"] >= first)].groupby("ablation", sort=False):
                fig.add_scatter(x=g["position"], y=g[value], mode="lines", name=ablation, legendgroup=ablation,
                                line=dict(color=ABLATION_COLORS.get(ablation), width=1.3),
                                showlegend=several and r == 1 and c == 1, row=r, col=c)
            g = positions[(positions["family"] == fam) & (positions["layer"] == layer)]
            if len(g):
                context = int(g["context_size"].iloc[0])
                mark_context(fig, context, int(g["position"].max()) + 1, label=False, row=r, col=c)
                shown = g[g["position"] >= first]
                y = shown[value].to_numpy(float)
                axis = dict(title_text=VALUE_TITLES.get(value, value))
                if log_y:
                    axis.update(type="log", **log_ticks(y))
                if fit_context and not log_y:
                    inside = shown.loc[shown["position"] < context, value].to_numpy(float)
                    lo, hi = float(np.nanmin(inside)), float(np.nanmax(inside))
                    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 1.0
                    axis.update(range=[lo - pad, hi + pad])
                fig.update_yaxes(row=r, col=c, **axis)
    fig.update_xaxes(title_text="position", row=len(layers))
    fig.update_layout(height=230 * len(layers) + 100, title=title, legend_title="W_pos", margin=dict(l=70, r=20, t=120))
    return legend_below(fig) if several else fig


def spectrum_figure(spectra: pd.DataFrame) -> go.Figure:
    """Return each SAE's detrended power spectrum over the red-noise threshold against the period (log axes),
    one panel per family."""
    fams = _families(spectra)
    fig = make_subplots(1, len(fams), subplot_titles=[f"{f} SAEs" for f in fams], shared_yaxes=True,
                        horizontal_spacing=0.05)
    colors = qualitative.Plotly
    for c, fam in enumerate(fams, 1):
        for (layer, sid), g in spectra[spectra["family"] == fam].groupby(["layer", "sae_id"]):
            fig.add_scatter(x=g["period"], y=g["power_over_null"], mode="lines+markers", marker_size=3,
                            name=f"layer {layer}", legendgroup=f"layer {layer}", showlegend=(c == 1),
                            line=dict(color=colors[int(layer) % len(colors)]), row=1, col=c)
        fig.add_hline(y=1, line_dash="dash", line_color="gray", row=1, col=c)
    fig.update_xaxes(title_text="period (positions)", type="log", **log_ticks(spectra["period"]))
    fig.update_yaxes(title_text="power / null threshold", type="log", col=1,
                     **log_ticks(list(spectra["power_over_null"]) + [1.0]))
    fig.update_layout(height=400, title="Detrended spectrum of the average activation<br>over the "
                                        "red-noise threshold (dashed: 1)", margin=dict(l=60, r=20, t=120))
    return legend_below(fig)


def amplitude_figure(amplitude: pd.DataFrame, y: str = "relative_amplitude") -> go.Figure:
    """Return grouped bars of the oscillation amplitude per SAE: normal and zero W_pos in one panel, shuffled W_pos
    (often many times larger) in its own below."""
    panels = [("normal and zeroed W_pos", ["normal", "zero"]), ("shuffled W_pos", ["shuffle"])]
    present = set(amplitude["ablation"])
    panels = [(t, [a for a in abl if a in present]) for t, abl in panels if set(abl) & present]
    others = [a for a in dict.fromkeys(amplitude["ablation"]) if a not in {"normal", "zero", "shuffle"}]
    if others:
        panels.append(("other W_pos", others))
    fig = make_subplots(len(panels), 1, subplot_titles=[t for t, _ in panels], vertical_spacing=0.22)
    for r, (_, ablations) in enumerate(panels, 1):
        for ablation in ablations:
            g = amplitude[amplitude["ablation"] == ablation]
            fig.add_bar(x=[f"{f} L{layer}" for f, layer in zip(g["family"], g["layer"])], y=g[y], name=ablation,
                        marker_color=ABLATION_COLORS.get(ablation), row=r, col=1)
        fig.update_yaxes(title_text=y.replace("_", " "), row=r, col=1)
        fig.update_xaxes(title_text="SAE (family, layer)", row=r, col=1)
    fig.update_layout(barmode="group", height=260 * len(panels) + 120, legend_title="W_pos", margin=dict(l=60, r=20, t=120),
                      title="Relative amplitude of the average activation<br>over positions 1..C-1")
    return legend_below(fig)


def loss_by_position_figure(loss: pd.DataFrame, color: str = "ablation", title: str = "") -> go.Figure:
    """Return cross-entropy vs position, one line per value of `color` (condition or spliced SAE)."""
    fig = go.Figure()
    for name, g in loss.groupby(color, sort=False):
        fig.add_scatter(x=g["position"], y=g["ce"], mode="lines", name=str(name), line_width=1.3,
                        line_color=ABLATION_COLORS.get(name))
    fig.update_layout(height=380, xaxis_title="position", yaxis_title="cross-entropy (nats)", title=title)
    return legend_below(fig)


def spliced_loss_figure(spliced: pd.DataFrame, families: dict[str, str], title: str = "") -> go.Figure:
    """Return cross-entropy vs position with each SAE spliced in: one panel per family (each on its own scale), one
    line per layer, the clean model in every panel. `spliced` names models '<sae_id> (layer L)' or 'clean'."""
    models = [m for m in dict.fromkeys(spliced["model"]) if m != "clean"]
    sid = {m: m.split(" (")[0] for m in models}
    fams = [f for f in FAMILIES if f in families.values()] + sorted(set(families.values()) - set(FAMILIES))
    fams = [f for f in fams if any(families.get(sid[m]) == f for m in models)]
    fig = make_subplots(len(fams), 1, subplot_titles=[f"{f} SAEs spliced in" for f in fams], vertical_spacing=0.16)
    clean = spliced[spliced["model"] == "clean"]
    for r, fam in enumerate(fams, 1):
        if len(clean):
            fig.add_scatter(x=clean["position"], y=clean["ce"], mode="lines", name="clean (no SAE)",
                            legendgroup="clean", showlegend=r == 1, line=dict(color="black", width=1.3),
                            row=r, col=1)
        for k, m in enumerate(m for m in models if families.get(sid[m]) == fam):
            g = spliced[spliced["model"] == m]
            fig.add_scatter(x=g["position"], y=g["ce"], mode="lines", name=f"{fam} {m}", line_width=1.3,
                            line_color=_family_color(fam, k), row=r, col=1)
        fig.update_yaxes(title_text="cross-entropy (nats)", row=r, col=1)
        fig.update_xaxes(title_text="position", row=r, col=1)
    fig.update_layout(height=300 * len(fams) + 120, title=title, margin=dict(l=60, r=20))
    return legend_below(fig)


SCATTER_FEATURES = 4096  # live features drawn per SAE at most (a fixed sample past it: 12 x 24,576 made a 17 MB page)


def feature_scatter_figure(features: dict[str, pd.DataFrame], layers: dict[str, int],
                           max_points: int = SCATTER_FEATURES, n_cols: int = 2) -> go.Figure:
    """Return per SAE the per-feature mean vs std scatter, coloured by log10 firing density (log axes), in rows of
    `n_cols` panels; an SAE with more than max_points live features shows a fixed random sample of them."""
    ids = list(features)
    n_rows = max(1, -(-len(ids) // n_cols))
    fig = make_subplots(n_rows, n_cols, subplot_titles=[f"L{layers[s]} {s}" for s in ids],
                        horizontal_spacing=0.16, vertical_spacing=0.36 / n_rows)
    plot_h = 260 * n_rows - 200  # the plot area's height: the figure's (260 n_rows + 100) less its margins (300)
    sampled = False
    for k, sid in enumerate(ids):
        r, c = k // n_cols + 1, k % n_cols + 1
        df = features[sid][features[sid]["density"] > 0]
        if len(df) > max_points:
            df, sampled = df.sample(max_points, random_state=0).sort_index(), True
        fig.add_scatter(x=df["mean"], y=df["std"], mode="markers", showlegend=False, row=r, col=c,
                        marker=dict(size=3, color=np.log10(df["density"]), colorscale="Viridis", cmin=-5, cmax=0,
                                    colorbar=dict(title="firing density", thickness=12, tickvals=[-5, -4, -3, -2, -1, 0],
                                                  ticktext=["10⁻⁵", "10⁻⁴", "0.001", "0.01", "0.1", "1"],
                                                  orientation="h", x=0, xanchor="left", len=0.9, y=-90 / plot_h,
                                                  yanchor="top"),  # under the grid: the panels keep the width
                                    showscale=k == 0),
                        text=[f"feature {f}" for f in df["feature"]])
        fig.update_xaxes(type="log", title_text="mean activation", row=r, col=c, **log_ticks(df["mean"], max_ticks=3))
        fig.update_yaxes(type="log", title_text="std", row=r, col=c, **log_ticks(df["std"], max_ticks=4))
    title = "Per-feature mean, std and firing density"
    return fig.update_layout(height=260 * n_rows + 100, margin=dict(l=60, r=20, t=100, b=200),
                             title=title + (f"<br>({max_points:,} live features per SAE)" if sampled else ""))


def decile_figure(features: dict[str, pd.DataFrame], layers: dict[str, int],
                  families: dict[str, str] | None = None) -> go.Figure:
    """Return per SAE the median over features of each decile of nonzero activations, relative to the median; lines
    named by family and layer, one hue per family."""
    fig = go.Figure()
    families = families or {}
    seen: dict[str, int] = {}
    ys = []
    for sid, df in features.items():
        q = df[[c for c in df.columns if c.startswith("q")]].dropna()
        rel = q.div(q["q50"], axis=0).median()
        fam = families.get(sid, "")
        k = seen[fam] = seen.get(fam, -1) + 1
        name = f"{fam} layer {layers[sid]} ({sid})" if fam else f"layer {layers[sid]} ({sid})"
        fig.add_scatter(x=[int(c[1:]) for c in q.columns], y=rel.to_numpy(), mode="lines+markers", name=name,
                        line_color=_family_color(fam, k) if fam else LAYER_COLORS[len(ys) % len(LAYER_COLORS)])
        ys += rel.to_numpy().tolist()
    fig.update_yaxes(type="log", **log_ticks(ys))
    fig.update_layout(height=380, xaxis_title="decile of a feature's nonzero activations (%)",
                      yaxis_title="value / feature's median", margin=dict(l=60, r=20),
                      title="Shape of the per-feature activation distribution<br>(median over features)")
    return legend_below(fig)
