"""Photograph every figure of the built book: one PNG per figure at each window width, to look at them.

    python -m possae.screenshots [_build/html] [--out _build/screenshots] [--widths 1280 390] [--only setup]

Files are named <page>-<k>-<width>.png (k: the figure's place on its page, from 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from possae.browser import MISSING, chromium_path, figure_boxes, open_chromium, open_page, screenshot, serve, set_width
from possae.data_paths import REPO_ROOT

WIDTHS = (1280, 390)  # a laptop's window and a phone's


def figure_pages(html: Path) -> list[Path]:
    """Return the book's chapter pages under an HTML folder, in name order."""
    return sorted((html / "chapters").glob("*.html"))


def save_screenshots(html: Path, out: Path, widths=WIDTHS, only: list[str] | None = None) -> list[Path]:
    """Save one PNG per figure of every chapter page (or those named in `only`) at each width; return the files."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError(MISSING)
    out.mkdir(parents=True, exist_ok=True)
    pages = [p for p in figure_pages(html) if only is None or p.stem in only]
    saved = []
    with serve(html) as base, open_chromium(exe) as page:
        for width in widths:
            set_width(page, width)
            for p in pages:
                open_page(page, f"{base}/{p.relative_to(html).as_posix()}", settle=0.6)
                for k, box in enumerate(figure_boxes(page), 1):
                    if box["width"] and box["height"]:
                        saved.append(screenshot(page, box, out / f"{p.stem}-{k}-{width}.png"))
    return saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m possae.screenshots", description=__doc__.split("\n")[0])
    ap.add_argument("html", nargs="?", type=Path, default=REPO_ROOT / "_build" / "html")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "_build" / "screenshots")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    ap.add_argument("--only", nargs="+", help="chapter names (default: every chapter)")
    args = ap.parse_args(argv)
    saved = save_screenshots(args.html, args.out, args.widths, args.only)
    print(f"{len(saved)} screenshots in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
