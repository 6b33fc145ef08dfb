"""One-to-one feature matching, dense against sparse, side by side: wall time, peak memory, and whether the two agree.

Each (case, method) runs in a fresh subprocess so that its peak resident memory (ru_maxrss, Linux: KiB) is its own:
`base` is the peak before the matching (Python, torch, the two input dictionaries), `peak` the peak after it, and
`own` = peak - base the matching's addition. Methods:
  dense   possae.matching.hungarian_match: the full float64 cosine matrix and scipy's linear_sum_assignment.
  sparse  possae.matching.sparse_match from scratch (its own top-k pass, k=8).
  +top    sparse_match given match_pair's top-4 cosines (computed before the clock starts, as match_pair does).
Cases: `rand` draws two independent dictionaries of unit directions (d=768: cosines ~ N(0, 1/768), the hardest
case for sparse candidate graphs); `perm` takes b = a permuted + noise of the same norm (cosine ~0.7 with the
partner, as between two SAEs sharing features); `rect` is a random pair of different widths.

--organism adds the matching chapter's own one-to-one matches on the shipped organism suite (every pair of its
comparisons and controls, with the chapter's default parameters): for dense and sparse (given match_pair's top-4
cosines, as the chapter runs it), each in its own process, the seconds of every pair, their sum, the process's peak
memory, and whether sparse certified itself and returned dense's pairs. The record goes under "organism_suite".

Run: .venv/bin/python benchmarks/bench_matching.py [--sizes 2048 8192 24576] [--dense-max 8192] [--rect] [--organism]
     [--json PATH]
(--json writes every run's figures, e.g. to benchmarks/results/matching_cpu.json, which the README quotes.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D = 768


def dictionaries(kind: str, n_a: int, n_b: int, seed: int = 0):
    """Return the two (n, 768) float32 dictionaries of a case."""
    import torch

    from possae.matching import unit_rows

    def draw(n, s):
        return unit_rows(torch.randn(n, D, generator=torch.Generator().manual_seed(s)))

    a = draw(n_a, seed)
    if kind == "perm":
        perm = torch.randperm(n_a, generator=torch.Generator().manual_seed(seed + 2))
        return a, unit_rows(a[perm] + draw(n_a, seed + 1))
    return a, draw(n_b, seed + 1)


def worker(method: str, kind: str, n_a: int, n_b: int, out: str) -> None:
    """Run one method on one case and write its figures (and the matched columns) to `out`."""
    import numpy as np
    import torch

    from possae.matching import hungarian_match, sparse_match, top_cosines

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    a, b = dictionaries(kind, n_a, n_b)
    top = top_cosines(a, b, 4, device="cpu") if method == "+top" else None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if method == "dense":
        m = hungarian_match(a, b, device="cpu")
    else:
        m = sparse_match(a, b, device="cpu", top=top)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(out + ".npy", np.stack([m.rows, m.cols]))
    Path(out).write_text(json.dumps({
        "wall": wall, "base": base / 2**20, "peak": peak / 2**20, "total": m.total, "certified": m.certified,
        "gap": m.gap_bound, "rounds": m.rounds, "edges": m.n_edges, "k": m.k}))


def suite_pairs():
    """Return ({label: Dictionary} of the matching chapter's SAEs, the (label_a, label_b) pairs it matches one-to-one)."""
    from possae.matching import MatchingParams, comparison_pairs, load_inputs, ref_label, resolve_groups

    params = MatchingParams()
    _, dictionaries, _ = load_inputs(params)
    groups = resolve_groups(params)
    pairs = [p for ps in comparison_pairs(groups, dictionaries, params.sae_release).values() for p in ps]
    pairs += [(ref_label(a, params.sae_release), ref_label(b, params.sae_release)) for a, b in groups.controls]
    return dictionaries, list(dict.fromkeys(pairs))


def suite_worker(method: str, out: str) -> None:
    """Match every pair of the organism suite one-to-one with `method` (dense or sparse) and write the figures."""
    import numpy as np
    import torch

    from possae.matching import TOP_K, hungarian_match, sparse_match, top_cosines

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    dictionaries, pairs = suite_pairs()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows, cols = [], {}
    for la, lb in pairs:
        a, b = dictionaries[la].decoder, dictionaries[lb].decoder
        top = top_cosines(a, b, TOP_K, device="cpu") if method == "sparse" else None
        t = time.perf_counter()
        m = hungarian_match(a, b, device="cpu") if method == "dense" else sparse_match(a, b, device="cpu", top=top)
        rows.append({"a": la, "b": lb, "n_a": a.shape[0], "n_b": b.shape[0], "seconds": time.perf_counter() - t,
                     "total_cosine": m.total, "certified": bool(m.certified), "gap_bound": m.gap_bound})
        cols[f"{la}|{lb}"] = np.stack([m.rows, m.cols])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(out + ".npz", **cols)
    Path(out).write_text(json.dumps({"pairs": rows, "base": base / 2**20, "peak": peak / 2**20}))


def organism_suite(tmp: str, timeout: int) -> dict:
    """Return the organism suite's one-to-one matches, dense and sparse, each timed in a fresh process."""
    import numpy as np

    res = {}
    for method in ("dense", "sparse"):
        out = os.path.join(tmp, f"suite-{method}.json")
        subprocess.run([sys.executable, __file__, "--suite-worker", method, out], check=True, timeout=timeout)
        res[method] = json.loads(Path(out).read_text())
        res[method]["cols"] = np.load(out + ".npz")
    record = {"pairs": []}
    for d, s in zip(res["dense"]["pairs"], res["sparse"]["pairs"]):
        key = f"{d['a']}|{d['b']}"
        same = np.array_equal(res["dense"]["cols"][key], res["sparse"]["cols"][key])
        record["pairs"].append({"a": d["a"], "b": d["b"], "n_a": d["n_a"], "n_b": d["n_b"],
                                "dense_seconds": d["seconds"], "sparse_seconds": s["seconds"],
                                "sparse_certified": s["certified"], "sparse_gap_bound": s["gap_bound"],
                                "same_pairs": bool(same), "total_difference": s["total_cosine"] - d["total_cosine"]})
    for method in ("dense", "sparse"):
        record[f"{method}_seconds"] = sum(p["seconds"] for p in res[method]["pairs"])
        record[f"{method}_peak_rss_gib"] = res[method]["peak"]
        record[f"{method}_base_rss_gib"] = res[method]["base"]
    return record


def run(method: str, kind: str, n_a: int, n_b: int, tmp: str, timeout: int) -> dict:
    """Run worker in a fresh process; return its figures (or the reason it gave none)."""
    out = os.path.join(tmp, f"{method}-{kind}-{n_a}-{n_b}.json")
    cmd = [sys.executable, __file__, "--worker", method, kind, str(n_a), str(n_b), out]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:60] if proc.stderr.strip() else f"rc {proc.returncode}"}
    res = json.loads(Path(out).read_text())
    res["path"] = out + ".npy"
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 24576])
    parser.add_argument("--kinds", nargs="+", default=["rand", "perm"])
    parser.add_argument("--dense-max", type=int, default=8192, help="largest n the dense method runs at")
    parser.add_argument("--rect", nargs="*", default=None, metavar="NAxNB",
                        help="rectangular random pairs (default none; e.g. 12288x24576 24576x32768)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures to this JSON file")
    parser.add_argument("--organism", action="store_true", help="also time the organism suite's pairs, dense and sparse")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--suite-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.suite_worker:
        suite_worker(*args.suite_worker)
        return
    if args.worker:
        method, kind, n_a, n_b, out = args.worker
        worker(method, kind, int(n_a), int(n_b), out)
        return
    import numpy as np

    cases = [(kind, n, n) for n in args.sizes for kind in args.kinds]
    cases += [("rect", *map(int, r.split("x"))) for r in (args.rect or [])]
    print(f"d = {D}, {os.cpu_count()} CPUs, torch threads {os.environ.get('BENCH_THREADS', '2')}, load "
          f"{os.getloadavg()[0]:.1f}; memory: peak RSS of a fresh process (GB), base = before matching")
    head = (f"{'case':>5} {'n_a':>6} {'n_b':>6} | {'method':>6} {'time s':>7} {'base':>5} {'peak':>5} {'own':>5} | "
            f"{'total cos':>13} {'cert':>5} {'gap bound':>9} {'rounds':>6} {'edges':>8} | same as dense")
    print(head)
    print("-" * len(head))
    record = {"d": D, "cpu_count": os.cpu_count(), "threads": int(os.environ.get("BENCH_THREADS", "2")),
              "date": time.strftime("%Y-%m-%d"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, n_a, n_b in cases:
            methods = (["dense"] if max(n_a, n_b) <= args.dense_max else []) + ["sparse", "+top"]
            results = {m: run(m, kind, n_a, n_b, tmp, args.timeout) for m in methods}
            dense = results.get("dense")
            for m, r in results.items():
                if "error" in r:
                    print(f"{kind:>5} {n_a:>6} {n_b:>6} | {m:>6} {r['error']}")
                    continue
                same = ""
                if m != "dense" and dense and "error" not in dense:
                    equal = np.array_equal(np.load(r["path"]), np.load(dense["path"]))
                    same = f"{'same pairs' if equal else 'other pairs'}, total {r['total'] - dense['total']:+.1e}"
                elif m != "dense":
                    same = "(dense not run)"
                record["runs"].append({"case": kind, "n_a": n_a, "n_b": n_b, "method": m, "seconds": r["wall"],
                                       "base_rss_gib": r["base"], "peak_rss_gib": r["peak"], "total_cosine": r["total"],
                                       "certified": r["certified"], "gap_bound": r["gap"], "rounds": r["rounds"],
                                       "edges": r["edges"], "same_as_dense": same or None})
                print(f"{kind:>5} {n_a:>6} {n_b:>6} | {m:>6} {r['wall']:>7.1f} {r['base']:>5.2f} {r['peak']:>5.2f} "
                      f"{r['peak'] - r['base']:>5.2f} | {r['total']:>13.6f} {str(r['certified']):>5} "
                      f"{r['gap']:>9.1e} {r['rounds']:>6} {r['edges']:>8} | {same}", flush=True)
        if args.organism:
            suite = record["organism_suite"] = organism_suite(tmp, args.timeout)
            print(f"organism suite, {len(suite['pairs'])} pairs: dense {suite['dense_seconds']:.1f} s (peak "
                  f"{suite['dense_peak_rss_gib']:.2f} GB), sparse {suite['sparse_seconds']:.1f} s (peak "
                  f"{suite['sparse_peak_rss_gib']:.2f} GB); sparse certified on "
                  f"{sum(p['sparse_certified'] for p in suite['pairs'])}, same pairs as dense on "
                  f"{sum(p['same_pairs'] for p in suite['pairs'])}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
