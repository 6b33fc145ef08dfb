"""A Sphinx extension of the book: plotly.js (4.8 MB, served from _static) is loaded only by pages that hold a figure.

Named in _config.yml's extensions; figures are rendered as bare <div>s by possae.figures' offline renderer.
"""

from __future__ import annotations

PLOTLY_JS = "plotly.min.js"
FIGURE_MARK = 'class="plotly-graph-div"'


def page_has_figure(body: str) -> bool:
    """Whether a page's rendered body holds a plotly figure."""
    return FIGURE_MARK in body


def _add_plotly(app, pagename, templatename, context, doctree) -> None:
    if page_has_figure(context.get("body") or ""):
        app.add_js_file(PLOTLY_JS)


def setup(app):
    app.connect("html-page-context", _add_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
