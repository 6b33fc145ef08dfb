"""The recorded layer-0 statistics benchmark (benchmarks/bench_layer0_stats.py), as a table for the book."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from possae.data_paths import REPO_ROOT

LAYER0_BENCHMARK = REPO_ROOT / "benchmarks" / "results" / "layer0_stats.json"


def layer0_benchmark_frame(path: str | Path = LAYER0_BENCHMARK) -> pd.DataFrame:
    """Return one row per benchmarked device: seconds for the matmul floor, the exact path and brute force, ratios, memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No benchmark results at {path}. Run `python benchmarks/bench_layer0_stats.py` first.")
    result = json.loads(path.read_text())
    shapes = result["shapes"]
    rows = []
    for s in sorted(result["sections"], key=lambda s: s["device"] != "cpu"):  # the CPU first: the chapter cites it
        name = s.get("device_name") or f"cpu ({result['cpu_count']} cores, {result['cpu_model']})"
        timed = s["brute_force_inputs_subsample"]
        rows.append({
            "device": name,
            "inputs": result["inputs_total"],
            "shapes": f"{shapes['d_vocab']:,} tokens × {shapes['n_ctx']:,} positions, d_model {shapes['d_model']}, "
                      f"d_sae {shapes['d_sae']:,}",
            "matmul floor (s)": s["matmul_seconds"],
            "exact (s)": s["exact_seconds"],
            "brute force (s)": s["brute_force_seconds_extrapolated"],
            "brute force timed on": ("all inputs" if timed >= result["inputs_total"]
                                     else f"{timed:,} inputs, extrapolated"),
            "exact / matmul": s["ratio_exact_over_matmul"],
            "exact, statistics left on the GPU (s)": s.get("exact_seconds_on_device", float("nan")),
            "speed-up vs brute force": s["speedup_vs_brute_force"],
            "exact peak memory (GB)": _peak_gb(s, "exact"),
            "brute force peak memory (GB)": _peak_gb(s, "brute_force"),
            "max |exact - brute| (mean)": s["brute_vs_exact_max_abs_diff_on_subsample"]["mean"],
        })
    return pd.DataFrame(rows)


def _peak_gb(section: dict, path: str) -> float:
    """Return a path's peak memory in GB: the GPU's allocations on a GPU, the process's RSS on a CPU."""
    cuda = (section.get("cuda_peak_mb") or {}).get(path)
    return (cuda if cuda is not None else section["peak_rss_mb"][path]) / 1024


BOOK_BENCHMARK = REPO_ROOT / "benchmarks" / "results" / "book_organism_cpu.json"
README_TABLE_START, README_TABLE_END = "<!-- book-times: start -->", "<!-- book-times: end -->"


def book_time_table(path: str | Path = BOOK_BENCHMARK) -> str:
    """Return the README's time table (markdown) from benchmarks/bench_book.py's record of a fresh clone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No book benchmark at {path}. Run `python3 benchmarks/bench_book.py` first.")
    r = json.loads(path.read_text())
    b, again = r["book"], r["book_again"]
    per = ", ".join(f"{name} {c['wall_s']:.0f} s" for name, c in b["chapters"].items())
    rows = [
        ("`make install` (the virtual environment; pip's cache warm)", r["install_s"]),
        (f"`make book` after it: {len(b['chapters'])} chapters, {b['jobs']} at a time, in {b['chapters_wall_s']:.0f} s "
         f"({per}); the HTML in {b['html_s']:.0f} s", b["make_book_s"]),
        ("`make book` with the install, from the fresh clone", b["make_book_with_install_s"]),
        (f"`make book` again on the same clone (chapters run again: {', '.join(again['chapters_run_again']) or 'none'})",
         again["make_book_s"]),
    ]
    for key, label in (("test", "`make test` next (its `quick`-profile book included)"),
                       ("test_again", "`make test` again (its `quick`-profile book up to date)")):
        if key in r:
            n, failed = sum(f["tests"] for f in r[key]["files"].values()), r[key].get("failures", 0)
            rows.append((f"{label}: {n} tests" + (f", {failed} failed" if failed else ", all passed"),
                         r[key]["make_test_s"]))
    lines = [README_TABLE_START, f"Measured by `benchmarks/bench_book.py` at commit {r['commit'][:10]} on "
             f"{r['machine']['cpu_count']} CPU cores ({r['machine']['cpu_model']}), {r['date']}:", "",
             "| step | wall time |", "|---|---|", *(f"| {label} | {s:.0f} s |" for label, s in rows), README_TABLE_END]
    return "\n".join(lines)
