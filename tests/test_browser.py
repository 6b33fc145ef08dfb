"""Every page of the built book in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

The test serves the quick-profile book on 127.0.0.1 itself and fails on any console error, any failed request,
any request to another host, and any plotly figure that did not draw.
"""

import json
from urllib.parse import urlparse

import pytest

from possae.browser import MISSING, chromium_path, open_chromium, open_page, serve


def problems(events: list[dict], host: str) -> list[str]:
    """Return a line for every console error, failed request or request to a host other than `host`."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"uncaught exception: {d.get('exception', {}).get('description', d.get('text'))}")
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"console error ({p['entry']['source']}): {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = urlparse(p["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss") and url.hostname != host:
                out.append(f"request to another host: {p['request']['url']}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"failed request: {p.get('errorText')} ({p.get('type')})")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            out.append(f"failed request: {p['response']['status']} {p['response']['url']}")
    return out


@pytest.fixture(scope="module")
def chromium():
    exe = chromium_path()
    if exe is None:
        pytest.skip(MISSING)
    return exe


@pytest.fixture(scope="module")
def served_book(quick_book):
    with serve(quick_book) as base:
        yield quick_book, base


@pytest.fixture(scope="module")
def page(chromium, tmp_path_factory):
    with open_chromium(chromium, tmp_path_factory.mktemp("chromium-profile")) as tools:
        yield tools


def load(page, url: str, draw_timeout: float = 15.0) -> dict:
    """Open `url`, wait for its load event and its figures; return {'figures', 'blank', 'problems'}."""
    page.events.clear()
    drawn = open_page(page, url, draw_timeout=draw_timeout)
    page.call("Runtime.evaluate", expression="1")
    return {**drawn, "problems": problems(page.events, "127.0.0.1")}


def test_every_page_loads_clean_and_every_figure_draws(served_book, page):
    book, base = served_book
    pages = sorted(p.relative_to(book).as_posix() for p in book.rglob("*.html")
                   if p.relative_to(book).parts[0] != "_static")  # _static holds the theme's template fragments
    assert "chapters/setup.html" in pages and "chapters/oscillation.html" in pages
    report, failures = {}, []
    for rel in pages:
        seen = load(page, f"{base}/{rel}")
        report[rel] = seen["figures"]
        failures += [f"{rel}: {p}" for p in seen["problems"]]
        failures += [f"{rel}: plotly figure {i} did not draw (no .main-svg)" for i in seen["blank"]]
    print(f"\nbrowser: {len(pages)} pages, {sum(report.values())} plotly figures drawn, "
          f"{len(failures)} problems; figures per page: {json.dumps(report)}")
    assert not failures, "\n".join(failures)
    no_figures = ("introduction.html", "ledger.html")  # prose, and the ledger's table: no figure by design
    chapters = [p for p in pages if p.startswith("chapters/") and not p.endswith(no_figures)]
    assert all(report[p] >= 1 for p in chapters), report


def test_the_check_catches_what_it_looks_for(page, tmp_path):
    (tmp_path / "_browser_check.html").write_text(
        '<html><body><div class="plotly-graph-div" id="empty"></div>'
        '<img src="missing.png"><img src="http://example.invalid/x.png">'
        '<script>console.error("boom")</script></body></html>')
    with serve(tmp_path) as base:  # a site of its own: the book's folder is only read, by tests that may run beside
        seen = load(page, f"{base}/_browser_check.html", draw_timeout=1.0)  # its empty figure never draws
    assert seen["blank"] == ["empty"]
    text = "\n".join(seen["problems"])
    assert "console error: boom" in text
    assert "failed request: 404" in text and "missing.png" in text
    assert "request to another host: http://example.invalid/x.png" in text


def test_the_screenshot_script_saves_one_png_per_figure_at_each_width(served_book, chromium, tmp_path):
    """`python -m possae.screenshots` on one chapter: a PNG per figure and width, as wide as the figure drawn there."""
    import struct

    from possae.figures.lint import BOOK_WIDTH, page_figures
    from possae.screenshots import save_screenshots

    book, _ = served_book
    n = len(page_figures((book / "chapters" / "setup.html").read_text()))
    saved = save_screenshots(book, tmp_path, widths=(1280, 390), only=["setup"])
    assert sorted(p.name for p in saved) == sorted(f"setup-{k}-{w}.png" for k in range(1, n + 1) for w in (1280, 390))
    for png in saved:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert height > 100 and width <= (BOOK_WIDTH if png.stem.endswith("1280") else 390), (png.name, width)
