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
    for s in result["sections"]:
        rows.append({
            "device": s["device"] if s["device"] != "cpu" else f"cpu ({result['cpu_count']} cores, {result['cpu_model']})",
            "inputs": result["inputs_total"],
            "shapes": f"{shapes['d_vocab']:,} tokens × {shapes['n_ctx']:,} positions, d_model {shapes['d_model']}, "
                      f"d_sae {shapes['d_sae']:,}",
            "matmul floor (s)": s["matmul_seconds"],
            "exact (s)": s["exact_seconds"],
            "brute force (s, extrapolated)": s["brute_force_seconds_extrapolated"],
            "exact / matmul": s["ratio_exact_over_matmul"],
            "speed-up vs brute force": s["speedup_vs_brute_force"],
            "exact peak memory (GB)": s["peak_rss_mb"]["exact"] / 1024,
            "brute force peak memory (GB)": s["peak_rss_mb"]["brute_force"] / 1024,
            "max |exact - brute| (mean)": s["brute_vs_exact_max_abs_diff_on_subsample"]["mean"],
        })
    return pd.DataFrame(rows)
