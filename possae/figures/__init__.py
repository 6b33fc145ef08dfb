"""Plotly figure builders for the book (one module per chapter) and an offline renderer.

plotly.js is served once by the site (``_static/plotly.min.js``), so figures render as bare ``<div>``s and the
HTML loads nothing from outside the site.
"""

from __future__ import annotations

import plotly.io as pio

RENDERER = "possae_offline"


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
