"""Every page of the built book in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

The test serves the quick-profile book on 127.0.0.1 itself and fails on any console error, any failed request,
any request to another host, and any plotly figure that did not draw.
"""

import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0"]
FIGURES_DRAWN = """(() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return {figures: divs.length, blank: divs.filter(d => !d.querySelector('.main-svg')).map(d => d.id)};
})()"""


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket: commands, and the events seen meanwhile."""

    def __init__(self, url: str):
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []

    def call(self, method: str, **params) -> dict:
        """Send one command; return its result (events that arrive meanwhile are kept in self.events)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        """Read events until one called `method` arrives."""
        import websocket

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        """Return the value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


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
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("needs a headless browser: Debian's `chromium` package (apt-get install -y chromium)")
    return exe


@pytest.fixture(scope="module")
def served_book(quick_book):
    handler = functools.partial(_QuietHandler, directory=str(quick_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield quick_book, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page(chromium, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        from urllib.request import urlopen

        targets = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        tools = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def figures_drawn(page: DevTools, redirects: int = 3) -> dict:
    """Return {'figures', 'blank'} of the page shown, following a page that navigates on (the book's index.html
    is a meta-refresh to the first chapter, and can move on between its load event and the evaluation)."""
    for _ in range(redirects):
        try:
            return page.evaluate(FIGURES_DRAWN)
        except RuntimeError as e:
            if "navigated or closed" not in str(e):
                raise
            page.wait_for("Page.loadEventFired")
    return page.evaluate(FIGURES_DRAWN)


def load(page: DevTools, url: str) -> dict:
    """Open `url`, wait for its load event and its figures; return {'figures', 'blank', 'problems'}."""
    page.events.clear()
    page.call("Page.navigate", url=url)
    page.wait_for("Page.loadEventFired")
    end = time.monotonic() + 15
    drawn = figures_drawn(page)
    while drawn["blank"] and time.monotonic() < end:  # plotly draws right after the scripts run
        time.sleep(0.2)
        drawn = figures_drawn(page)
    time.sleep(0.3)  # late console messages and requests
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


def test_the_check_catches_what_it_looks_for(served_book, page, tmp_path):
    book, base = served_book
    bad = book / "_browser_check.html"
    bad.write_text('<html><body><div class="plotly-graph-div" id="empty"></div>'
                   '<img src="missing.png"><img src="http://example.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    try:
        seen = load(page, f"{base}/_browser_check.html")
    finally:
        bad.unlink()
    assert seen["blank"] == ["empty"]
    text = "\n".join(seen["problems"])
    assert "console error: boom" in text
    assert "failed request: 404" in text and "missing.png" in text
    assert "request to another host: http://example.invalid/x.png" in text
