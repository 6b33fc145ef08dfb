"""The recorded layer-0 statistics benchmark (benchmarks/bench_layer0_stats.py), as a table for the book."""

from __future__ import annotations

import json
import re
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
            "exact / matmul in token blocks": s.get("ratio_exact_over_blocked_matmul", float("nan")),
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


def recorded_chapter_walls(path: str | Path = BOOK_BENCHMARK) -> dict[str, float]:
    """Return each chapter's wall time (s) in the recorded book benchmark ({} when there is no readable record)."""
    try:
        chapters = json.loads(Path(path).read_text())["book"]["chapters"]
        return {name: float(c["wall_s"]) for name, c in chapters.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


BOOK_TARGETS_S = {"chapters": 150.0, "chapter": 40.0, "html": 30.0, "book": 300.0, "test": 300.0}  # issue 24's, seconds


def book_targets(record: dict) -> list[tuple[str, float, float]]:
    """Return issue 24's targets as (what, measured seconds, limit) from a bench_book record: the chapters' wall, the
    longest chapter, the HTML step, and each `make` with the install (make test only where the record has it)."""
    b = record["book"]
    name, longest = max(b["chapters"].items(), key=lambda kv: kv[1]["wall_s"])
    rows = [("all chapters", b["chapters_wall_s"], BOOK_TARGETS_S["chapters"]),
            (f"the longest chapter ({name})", longest["wall_s"], BOOK_TARGETS_S["chapter"]),
            ("the HTML", b["html_s"], BOOK_TARGETS_S["html"]),
            ("`make book` with the install", b["make_book_with_install_s"], BOOK_TARGETS_S["book"])]
    if "test" in record:
        rows.append(("`make test` with the install", record["install_s"] + record["test"]["make_test_s"],
                     BOOK_TARGETS_S["test"]))
    return rows


def targets_sentence(record: dict) -> str:
    """Return the sentence that holds a bench_book record against issue 24's targets, each met or missed."""
    rows = book_targets(record)
    parts = [f"{what} {s:.0f} s (at most {limit:.0f}: {'met' if s <= limit else 'missed'})" for what, s, limit in rows]
    missed = sum(s > limit for _, s, limit in rows)
    verdict = "every target is met" if not missed else f"{missed} of {len(rows)} targets are missed"
    return f"Against issue 24's targets, {verdict}: {'; '.join(parts)}."


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
             "| step | wall time |", "|---|---|", *(f"| {label} | {s:.0f} s |" for label, s in rows), "",
             targets_sentence(r), README_TABLE_END]
    return "\n".join(lines)


SIDE_BY_SIDE = REPO_ROOT / "benchmarks" / "results" / "layer0_stats_side_by_side.json"
MATCHING_BENCHMARK = REPO_ROOT / "benchmarks" / "results" / "matching_cpu.json"
README_ENGINE_START, README_ENGINE_END = "<!-- engine-figures: start -->", "<!-- engine-figures: end -->"
SAME_CODE = 1.05  # two commits' exact/matmul ratios within 5 % of each other, timed side by side: the code did not slow


def _span(values: list[float]) -> str:
    """Return '7.1-7.6 s' (or '7.1 s' for one value)."""
    lo, hi = min(values), max(values)
    return f"{lo:.1f} s" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f} s"


def _blocked(section: dict) -> str:
    """Return ', and Nx the same product formed in the exact path's token blocks (M s)' where the record has it."""
    if section.get("matmul_blocked_seconds") is None:
        return ""
    return (f" and {section['ratio_exact_over_blocked_matmul']:.2f}x the same product formed in the cache-sized token "
            f"blocks the exact path uses ({section['matmul_blocked_seconds']:.1f} s)")


def engine_paragraph(layer0: str | Path = LAYER0_BENCHMARK, side: str | Path = SIDE_BY_SIDE,
                     matching: str | Path = MATCHING_BENCHMARK) -> str:
    """Return the README's figures for the exact layer-0 engine and the one-to-one matching, from the recorded
    benchmarks (no figure typed)."""
    r = json.loads(Path(layer0).read_text())
    cpu = next(s for s in r["sections"] if s["device"] == "cpu")
    name = re.sub(r"^cpu \((.*)\)$", r"\1", cpu["device_name"])
    lines = [README_ENGINE_START,
             f"On the CPU ({name}, {cpu['torch_threads']} threads): "
             f"{cpu['exact_seconds']:.1f} s for the full "
             f"{r['inputs_total'] / 1e6:.0f}M-input distribution, {cpu['ratio_exact_over_matmul']:.2f}x the one "
             f"unavoidable matmul ({cpu['matmul_seconds']:.1f} s){_blocked(cpu)}, about "
             f"{cpu['speedup_vs_brute_force']:,.0f}x faster than brute force (timed on "
             f"{cpu['brute_force_inputs_subsample']:,} inputs and extrapolated)."]
    if Path(side).is_file():
        sb = json.loads(Path(side).read_text())
        then = sb["recorded_then"]
        old, new = dict.fromkeys(run["commit"] for run in sb["runs"])  # the two commits, in the order they ran
        runs = {c: [x for x in sb["runs"] if x["commit"] == c] for c in (old, new)}
        ratio = {c: sum(x["ratio_exact_over_matmul"] for x in v) / len(v) for c, v in runs.items()}
        floors = [x["matmul_seconds"] for x in sb["runs"]]
        recorded = {c: v["exact_seconds"] / v["matmul_seconds"] for c, v in then.items()}
        slowed = ratio[new] > SAME_CODE * ratio[old]
        floors_then = ", ".join(f"{v['matmul_seconds']:.1f} s" for v in then.values())
        lines.append(
            f"The ratio was recorded as {' and then '.join(f'{x:.2f}x' for x in recorded.values())} on earlier runs. "
            f"Run side by side on one machine ({Path(side).name}, {len(runs[old])} rounds each), commit {old} (which "
            f"recorded {recorded.get(old, float('nan')):.2f}x) and commit {new} take "
            f"{_span([x['exact_seconds'] for x in runs[old]])} and {_span([x['exact_seconds'] for x in runs[new]])} "
            f"over a matmul of {_span(floors)} (mean ratios {ratio[old]:.2f}x and {ratio[new]:.2f}x): "
            + ("the newer code is slower." if slowed else
               "the code did not slow down. The machines differ: the matmul took "
               f"{floors_then} in the earlier records, while the rest of the exact path, which does not scale with "
               f"the matmul, takes {cpu['exact_seconds'] - cpu['matmul_seconds']:.1f} s here."))
    gpu = next((s for s in r["sections"] if s["device"] == "cuda"), None)
    if gpu:
        stats_mb = 4 * r["shapes"]["n_ctx"] * r["shapes"]["d_sae"] * 8 / 1e6  # mean, std, rate, pre-activation
        lines.append(
            f"On an {gpu['device_name']}: brute force over all {r['inputs_total'] / 1e6:.0f}M inputs in batches of "
            f"{gpu['brute_force_batch_size']:,} takes {gpu['brute_force_seconds_subsample']:.1f} s; the exact path "
            f"takes {gpu['exact_seconds_on_device']:.3f} s with its statistics left on the GPU "
            f"({gpu['exact_seconds_on_device'] / gpu['matmul_seconds']:.2f}x the matmul, {gpu['matmul_seconds']:.3f} s), "
            f"and {gpu['exact_seconds']:.2f} s when its {stats_mb:.0f} MB of float64 statistics are copied into newly "
            "allocated host memory, which is what `layer0_stats` returns.")
    if Path(matching).is_file():
        m = json.loads(Path(matching).read_text())
        big = max(x["n_a"] for x in m["runs"])
        run = {x["method"]: x for x in m["runs"] if x["n_a"] == big and x["case"] == "rand"}
        x, dense = run.get("sparse"), run.get("dense")
        if x:
            lines.append(
                f"One-to-one matching of two random {big:,}-feature dictionaries on {m['threads']} threads: the sparse "
                f"match takes {x['seconds']:.1f} s and {x['peak_rss_gib']:.2f} GB at peak, "
                + ("certified optimal" if x["certified"] else f"within {x['gap_bound']:.1e} of optimal")
                + (f", with the dense Hungarian match's pairs ({dense['seconds']:.1f} s, {dense['peak_rss_gib']:.2f} GB)"
                   if dense and x["same_as_dense"] and x["same_as_dense"].startswith("same pairs") else "") + ".")
        suite = m.get("organism_suite")
        if suite:
            n = len(suite["pairs"])
            lines.append(
                f"The matching chapter's {n} one-to-one matches on the organism suite take {suite['dense_seconds']:.1f} s "
                f"dense and {suite['sparse_seconds']:.1f} s sparse in all; the sparse match certified itself on "
                f"{sum(p['sparse_certified'] for p in suite['pairs'])} of {n} pairs and returned the dense pairs on "
                f"{sum(p['same_pairs'] for p in suite['pairs'])}.")
    lines.append(README_ENGINE_END)
    return "\n".join(lines)


README = REPO_ROOT / "README.md"


def refresh_readme(path: str | Path = README) -> None:
    """Rewrite the README's generated blocks (the book's time table, the engine figures) from the recorded files."""
    path = Path(path)
    text = path.read_text()
    for start, end, make in ((README_TABLE_START, README_TABLE_END, book_time_table),
                             (README_ENGINE_START, README_ENGINE_END, engine_paragraph)):
        if start not in text or end not in text:
            raise ValueError(f"{path} has no block {start} ... {end} to rewrite; put the two markers back.")
        text = text[: text.index(start)] + make() + text[text.index(end) + len(end):]
    path.write_text(text)


if __name__ == "__main__":  # python -m possae.benchmark_results: the README quotes the benchmarks just recorded
    refresh_readme()
    print(f"rewrote the generated blocks of {README}")
