"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open the built book's pages, serve
them on 127.0.0.1, and photograph each figure.

The browser test (tests/test_browser.py) checks every page with it; `python -m possae.screenshots` saves one PNG per
figure at the book's widths.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0"]
FIGURES_DRAWN = """(() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return {figures: divs.length, blank: divs.filter(d => !d.querySelector('.main-svg')).map(d => d.id)};
})()"""
MISSING = "needs a headless browser: Debian's `chromium` package (apt-get install -y chromium)"


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


def chromium_path() -> str | None:
    """Return the path of Debian's chromium, or None."""
    return shutil.which("chromium")


@contextmanager
def open_chromium(exe: str, profile: Path | None = None):
    """Start headless chromium; yield a DevTools client on its first page (Page, Runtime, Log, Network enabled)."""
    own = profile is None
    profile = Path(tempfile.mkdtemp(prefix="possae-chromium-")) if own else profile
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
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
        if own:
            shutil.rmtree(profile, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(folder: Path):
    """Serve a folder on 127.0.0.1 (a free port) while the block runs; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


def open_page(page: DevTools, url: str, settle: float = 0.3, draw_timeout: float = 15.0) -> dict:
    """Open `url`, wait for its load event and up to draw_timeout seconds for its figures to draw; return
    {'figures', 'blank'}."""
    page.call("Page.navigate", url=url)
    page.wait_for("Page.loadEventFired")
    end = time.monotonic() + draw_timeout
    drawn = figures_drawn(page)
    while drawn["blank"] and time.monotonic() < end:  # plotly draws right after the scripts run
        time.sleep(0.2)
        drawn = figures_drawn(page)
    time.sleep(settle)  # late console messages and requests, plotly's resize to the column
    return drawn


def set_width(page: DevTools, width: int, height: int = 900) -> None:
    """Make the page's window `width` px wide (a phone's below 600 px: mobile emulation, as a phone draws it)."""
    page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
              mobile=width < 600)


FIGURE_BOXES = """(() => [...document.querySelectorAll('.plotly-graph-div')].map(d => {
  const r = d.getBoundingClientRect();
  return {id: d.id, x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height};
}))()"""


def figure_boxes(page: DevTools) -> list[dict]:
    """Return each figure's box on the page shown ({'id', 'x', 'y', 'width', 'height'} in CSS px)."""
    return page.evaluate(FIGURE_BOXES)


def screenshot(page: DevTools, box: dict, path: Path) -> Path:
    """Save the region `box` of the page shown as a PNG."""
    clip = {k: box[k] for k in ("x", "y", "width", "height")}
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip={**clip, "scale": 1})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
