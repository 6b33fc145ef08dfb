"""Rehearse the gpt2 profile offline: run each chapter against a stand-in Hugging Face cache, at full gpt2-small shapes.

The stand-in cache (``possae standin CACHE``) holds gpt2 with its real W_pos and tokenizer but random other weights,
and every SAE the gpt2 profile names. Each chapter runs through :func:`possae.book.execute_chapter` with the gpt2
profile's parameters (plus any ``-p NAME VALUE``); while its kernel runs, the benchmark polls the resident set size
of every process below this one and keeps the kernel's peak. It prints a table: chapter, wall seconds, peak RSS of
the executing kernel (MiB) and the executed notebook. Nothing here asserts a timing.

    .venv/bin/python benchmarks/bench_gpt2_profile.py /tmp/hub                    # every chapter
    .venv/bin/python benchmarks/bench_gpt2_profile.py /tmp/hub --only setup semantic
    .venv/bin/python benchmarks/bench_gpt2_profile.py /tmp/hub --build          # the whole `possae build`, HTML too
    HF_HUB_CACHE=/tmp/hub .venv/bin/python benchmarks/bench_gpt2_profile.py -p n_heldout_tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", nargs="?", default=os.environ.get("HF_HUB_CACHE"),
                    help="the stand-in hub cache (default: $HF_HUB_CACHE)")
    ap.add_argument("--only", nargs="+", default=None, help="chapters to run (default: every chapter, in book order)")
    ap.add_argument("--profile", default="gpt2")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter for every chapter that declares it (YAML value)")
    ap.add_argument("--out", type=Path, default=None, help="folder of the executed notebooks (default: build/bench-gpt2)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    ap.add_argument("--build", action="store_true",
                    help="time `possae build --profile PROFILE` itself (every chapter, then the HTML) instead")
    return ap.parse_args()


class PeakRSS:
    """Poll the RSS of every descendant of this process (the papermill kernel) and keep the largest one seen."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0  # bytes, of the largest single descendant
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            for child in self._me.children(recursive=True):
                try:
                    self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def use_offline_cache(cache: str | None) -> None:
    """Point this process (and its kernels) at the hub cache, offline, with no wandb and no progress bars."""
    if not cache:
        sys.exit("give the (stand-in) hub cache as an argument or in $HF_HUB_CACHE (write one with `possae standin "
                 "CACHE`)")
    os.environ["HF_HUB_CACHE"] = str(Path(cache).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> int:
    args = _parse()
    use_offline_cache(args.cache)

    from possae.book import PROFILES, ChapterFailed, _source, chapter_names, chapter_parameters, execute_chapter
    from possae.data_paths import REPO_ROOT
    from possae.standin import standin_active

    if not standin_active():
        print(f"warning: {args.cache} is not a stand-in cache (no possae-standin.json): this runs the real weights",
              file=sys.stderr)
    import yaml

    extra = args.extra = {name: yaml.safe_load(value) for name, value in args.p}
    out = args.out or REPO_ROOT / "build" / "bench-gpt2"
    rows = []
    if args.build:
        rows = timed_build(args.profile, extra)
        return report(rows, args)
    for chapter in args.only or chapter_names():
        src = _source(REPO_ROOT, f"chapters/{chapter}")
        declared = chapter_parameters(src)
        params = {k: v for k, v in {**PROFILES[args.profile], **extra}.items() if k in declared}
        if "chapters_dir" in declared:  # the ledger reads the notebooks this run executed, as possae build does
            params["chapters_dir"] = str(out.resolve())
        print(f"[bench] {chapter}: {params}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        status = "ok"
        with PeakRSS() as rss:
            try:
                page = execute_chapter(src, out / f"{chapter}.ipynb", params)
            except ChapterFailed as e:
                status, page = f"FAILED: {e}", out / f"{chapter}.failed.ipynb"
        rows.append({"chapter": chapter, "wall_s": round(time.perf_counter() - t0, 1),
                     "peak_rss_mib": round(rss.peak / 2**20), "status": status, "page": str(page)})
        print(f"[bench] {chapter}: {rows[-1]['wall_s']} s, {rows[-1]['peak_rss_mib']} MiB, {status}",
              file=sys.stderr, flush=True)
    return report(rows, args)


def timed_build(profile: str, extra: dict) -> list[dict]:
    """Run possae.book.build(profile) in this process; return a row per chapter (and one for the HTML) with its wall
    time and the peak RSS of its kernel, cut at the build's own progress lines."""
    from possae import book
    from possae.book import ChapterFailed

    rows: list[dict] = []
    log = book._log
    with PeakRSS() as rss:
        started = {"name": "stage", "t0": time.perf_counter()}

        def close(next_name: str) -> None:
            rows.append({"chapter": started["name"], "wall_s": round(time.perf_counter() - started["t0"], 1),
                         "peak_rss_mib": round(rss.peak / 2**20), "status": "ok", "page": ""})
            started.update(name=next_name, t0=time.perf_counter())
            rss.peak = 0

        def cut(message: str) -> None:
            log(message)
            if message.startswith("executing "):
                close(Path(message.split()[1]).stem)
            elif message.startswith("building the HTML"):
                close("HTML (jupyter-book)")

        book._log = cut
        html = ""
        try:
            html = book.build(profile, extra=extra)
            close("")
        except ChapterFailed as e:  # the chapters timed so far, and the one that failed
            close("")
            rows[-1]["status"] = f"FAILED: {e}"
        finally:
            book._log = log
    for r in rows:
        r["page"] = str(html) if r["chapter"].startswith("HTML") else ""
    return [r for r in rows if r["chapter"] != "stage"]


def report(rows: list[dict], args: argparse.Namespace) -> int:
    """Print the table (and write the JSON); return 0 when every chapter ran."""
    print(f"\n{'chapter':<24}{'wall s':>9}{'peak RSS MiB':>14}  page")
    for r in rows:
        print(f"{r['chapter']:<24}{r['wall_s']:>9.1f}{r['peak_rss_mib']:>14}  {r['page']}"
              + ("" if r["status"] == "ok" else f"  ({r['status'][:200]})"))
    print(f"{'total':<24}{sum(r['wall_s'] for r in rows):>9.1f}{max(r['peak_rss_mib'] for r in rows):>14}")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "cache": args.cache, "extra": args.extra, "rows": rows},
                                        indent=1))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
