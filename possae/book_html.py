"""The book's Sphinx extension (named in _config.yml): what each built page loads and how its tables and tokens read.

- plotly.js (4.8 MB, served from _static) is loaded only by pages that hold a figure;
- possae.css (from possae/book_static) styles tables, the ledger (cards on narrow screens) and escaped tokens;
- a token that is part of a UTF-8 character, shown in a table as its escaped bytes ('\\xe2\\x80', see
  possae.tokenizer.token_label), gets a tooltip saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

PLOTLY_JS = "plotly.min.js"
CSS = "possae.css"
STATIC = Path(__file__).parent / "book_static"
FIGURE_MARK = 'class="plotly-graph-div"'
PARTIAL_UTF8_TIP = ("part of a UTF-8 character: this token's bytes decode to no character on their own, "
                    "so they are shown as \\x escapes")
# a quoted token label holding at least one \xNN escape, alone in a table cell or in a comma-separated list
_CELL = re.compile(r"(<td[^>]*>)(.*?)(</td>)", re.S)
_ESCAPED = re.compile(r"(?:'|&#39;)((?:[^'&<>\\]|\\x[0-9a-f]{2})*\\x[0-9a-f]{2}(?:[^'&<>\\]|\\x[0-9a-f]{2})*)(?:'|&#39;)")


def page_has_figure(body: str) -> bool:
    """Whether a page's rendered body holds a plotly figure."""
    return FIGURE_MARK in body


def mark_partial_tokens(body: str) -> str:
    """Return a page body with each escaped-bytes token label in a table cell wrapped in a span with a tooltip."""
    def cell(m: re.Match) -> str:
        inner = _ESCAPED.sub(lambda t: f'<span class="partial-utf8" title="{PARTIAL_UTF8_TIP}">\'{t.group(1)}\'</span>',
                             m.group(2))
        return m.group(1) + inner + m.group(3)

    return _CELL.sub(cell, body)


def _page(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body") or ""
    if page_has_figure(body):  # the builder's list is this page's (Sphinx resets it per page); app.add_js_file would
        app.builder.add_js_file(PLOTLY_JS)  # also register it for every page written after this one
    if "\\x" in body:
        context["body"] = mark_partial_tokens(body)


def _static(app) -> None:
    app.config.html_static_path.append(str(STATIC))


def _not_on_every_page(app, config) -> None:
    """Take plotly.js out of the scripts every page loads (Jupyter Book lists there every .js file in _static)."""
    config.html_js_files = [js for js in config.html_js_files
                            if (js if isinstance(js, str) else js[0]) != PLOTLY_JS]


def setup(app):
    app.connect("config-inited", _not_on_every_page, priority=900)  # after Sphinx's own conversion (800)
    app.connect("builder-inited", _static)
    app.add_css_file(CSS)
    app.connect("html-page-context", _page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
