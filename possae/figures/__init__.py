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
    """Make plotly figures render without any external script (the book's default)."""
    pio.renderers[RENDERER] = _OfflineHTML()
    pio.renderers.default = RENDERER


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
