"""Plotly figure builders for the book (one module per chapter) and an offline renderer.

plotly.js is served once by the site (``_static/plotly.min.js``), so figures render as bare ``<div>``s and the
HTML loads nothing from outside the site.
"""

from __future__ import annotations

import plotly.io as pio

RENDERER = "possae_offline"
CONTEXT_COLOR = "gray"  # the line marking the end of an SAE's training context, in every chapter


class _OfflineHTML(pio.base_renderers.MimetypeRenderer):
    """Render figures as bare <div>s; the book loads plotly.min.js once from its own _static folder."""

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                           config={"displaylogo": False})
        return {"text/html": html}


def use_offline_renderer() -> None:
    """Set how a chapter's outputs render: plotly figures without any external script (the book's default), and
    tables with every cell whole (pandas cuts a cell past 50 characters to '...')."""
    import pandas as pd

    pio.renderers[RENDERER] = _OfflineHTML()
    pio.renderers.default = RENDERER
    pd.set_option("display.max_colwidth", None)


def mark_context(fig, context_size: int, n_pos: int | None = None, label: bool = True, row: int | None = None,
                 col: int | None = None):
    """Return fig with a dashed line between the SAE's last trained position and the first unseen one.

    Nothing is drawn when n_pos is given and the context covers all n_pos positions; `label` writes "SAE context" at
    the line's top, as the line's own label (an annotation in data coordinates would stretch the x-axis to hold it).
    """
    if n_pos is not None and context_size >= n_pos:
        return fig
    kw = {} if row is None else dict(row=row, col=col)
    if label:
        kw.update(label=dict(text="SAE context", textposition="end", textangle=0, xanchor="left", yanchor="top",
                             padding=4, font=dict(size=10, color=CONTEXT_COLOR)))
    return fig.add_vline(x=context_size - 0.5, line_dash="dash", line_color=CONTEXT_COLOR, **kw)


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_label(exponent: int) -> str:
    """Return 10**exponent as a tick label: 0.01 .. 1000 written out, else 10⁻⁴, 10⁵ ..."""
    if -2 <= exponent <= 3:
        return f"{10.0 ** exponent:,g}"
    return "10" + str(exponent).translate(SUPERSCRIPT)


def log_ticks(values, max_ticks: int = 6, min_ticks: int = 3) -> dict:
    """Return tickvals/ticktext for a log axis over `values` (positive ones): powers of ten, every k-th decade when
    there are more than `max_ticks`; over less than a decade and a half, where fewer than `min_ticks` powers fall
    inside the data, also 2x and 5x, then finer steps, all written out in full (0.2, 0.3, 50): never plotly's bare
    minor digits."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return dict(dtick=1)
    vmin, vmax = float(v.min()), float(v.max())
    lo, hi = int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax)))
    hi = max(hi, lo + 1)
    step = max(1, -(-(hi - lo) // max_ticks))
    vals = [10.0 ** e for e in range(lo - lo % step if step > 1 else lo, hi + 1, step)]
    text = [power_label(round(np.log10(x))) for x in vals]
    for mantissas in ((1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 7, 8)):
        if np.log10(vmax / vmin) >= 1.5 or sum(vmin <= x <= vmax for x in vals) >= min_ticks:
            break  # a decade and a half or more: powers of ten alone
        vals = [float(f"{m * 10.0 ** e:.6g}") for e in range(lo, hi + 1) for m in mantissas]
        text = [power_label(e) if m == 1 else f"{m * 10.0 ** e:,.6g}" for e in range(lo, hi + 1) for m in mantissas]
    return dict(tickvals=vals, ticktext=text)


def legend_below(fig, gap: int = 64, row_px: int = 22, font_size: int = 12):
    """Return fig with a horizontal legend under the x-axis title (not on it), its bottom margin grown to hold it.

    `gap` is the px from the plot area's bottom edge to the legend (tick labels and the x-axis title)."""
    from possae.figures.lint import BOOK_WIDTH, DEFAULT_HEIGHT, DEFAULT_MARGIN, text_width

    lay = fig.layout
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    width = (lay.width or BOOK_WIDTH) - 20
    rows, used = 1, 0.0
    for name in dict.fromkeys(names):
        w = text_width(name, font_size) + 50
        if used + w > width and used:
            rows, used = rows + 1, 0.0
        used += w
    margin_t = lay.margin.t if lay.margin.t is not None else DEFAULT_MARGIN["t"]
    old_bottom = lay.margin.b if lay.margin.b is not None else DEFAULT_MARGIN["b"]
    bottom = gap + rows * row_px + 12
    height = lay.height or DEFAULT_HEIGHT
    plot_h = height - margin_t - old_bottom  # kept: the figure grows by the legend's rows
    return fig.update_layout(height=height + bottom - old_bottom, margin=dict(b=bottom),
                             legend=dict(orientation="h", x=0, xanchor="left", y=-gap / max(plot_h, 1), yanchor="top"))


def scene_layout(titles: list[str], eye: float = 1.5) -> dict:
    """Return a 3-D scene's layout: its axes titled (never plotly's x/y/z), seen from far enough that the axis titles
    fit inside the figure."""
    return dict(xaxis_title=titles[0], yaxis_title=titles[1], zaxis_title=titles[2],
                camera=dict(eye=dict(x=eye, y=eye, z=eye * 0.6)), aspectmode="cube")
