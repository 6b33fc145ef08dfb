"""Time each chapter's computation in this process: load its model and SAEs, then its one `analyze` call.

For a machine without Jupyter (a GPU node): no papermill kernel, no figures, no HTML. Each chapter takes the
profile's parameters (plus any ``-p NAME VALUE``) through its own parameters class, with ``device`` set, and runs
what its code cell runs before the figures. The ledger is left out: it only reads the other chapters' notebooks.
After each chapter a JSON line is appended to --json, so a run cut short keeps what finished. Nothing here asserts a
timing.

    HF_HUB_OFFLINE=1 python benchmarks/bench_gpt2_analyze.py /tmp/hub --device cuda --json out.jsonl
    python benchmarks/bench_gpt2_analyze.py /tmp/hub --only setup positional --deadline 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from bench_gpt2_profile import use_offline_cache  # this folder is on sys.path when a script here runs


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", nargs="?", default=os.environ.get("HF_HUB_CACHE"),
                    help="the (stand-in) hub cache (default: $HF_HUB_CACHE)")
    ap.add_argument("--only", nargs="+", default=None, help="chapters to run (default: every chapter, in book order)")
    ap.add_argument("--profile", default="gpt2")
    ap.add_argument("--device", default=None, help="device of every chapter (default: CUDA when present)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter for every chapter that declares it (YAML value)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after which no further chapter starts (the one running finishes)")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per chapter here")
    return ap.parse_args()


def compute(chapter: str, params):
    """Return the chapter's Result: its subjects loaded as its code cell loads them, then its analyze."""
    from possae.loaders import load_model_and_sae

    if chapter in ("setup", "positional", "semantic"):
        import importlib

        module = importlib.import_module(f"possae.{chapter}")
        model, sae = load_model_and_sae(params.sae_release, params.sae_id, device=params.device,
                                        model_name=params.model_name)
        return module.analyze(model, sae, params)
    if chapter in ("length_generalization", "past_context"):
        from possae import length, past_context

        model, sae, control = length.load_subjects(params)
        module = length if chapter == "length_generalization" else past_context
        return module.analyze(model, sae, params, control)
    if chapter == "oscillation":
        from possae import oscillation

        model, saes = oscillation.load_subjects(params)
        return oscillation.analyze(model, saes, params)
    if chapter == "matching":
        from possae import matching

        model, dictionaries, tokens = matching.load_inputs(params)
        return matching.analyze(model, dictionaries, tokens, params)
    raise ValueError(f"no computation to time for chapter {chapter!r}")


def main() -> int:
    args = _parse()
    use_offline_cache(args.cache)

    import torch
    import yaml

    from possae.book import PROFILES, chapter_names, params_class
    from possae.devices import default_device

    device = str(default_device(args.device))
    extra = {name: yaml.safe_load(value) for name, value in args.p}
    chapters = [c for c in (args.only or chapter_names()) if c != "ledger"]
    cuda = device.startswith("cuda")
    start, rows = time.perf_counter(), []
    for chapter in chapters:
        if args.deadline is not None and time.perf_counter() - start > args.deadline:
            rows.append({"chapter": chapter, "status": "not started: past the deadline"})
            continue
        cls = params_class(chapter)
        given = {k: v for k, v in {**PROFILES[args.profile], **extra}.items() if k in cls.names()}
        params = cls.from_mapping({**given, "device": device})
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"[bench] {chapter} on {device}: {given}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            compute(chapter, params)
            status = "ok"
        except Exception as e:  # noqa: BLE001 - a chapter that breaks is reported, and the others still run
            status = f"FAILED: {type(e).__name__}: {e}"
        if cuda:
            torch.cuda.synchronize()
        row = {"chapter": chapter, "device": device, "wall_s": round(time.perf_counter() - t0, 1),
               "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
               "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "status": status}
        rows.append(row)
        print(f"[bench] {chapter}: {row['wall_s']} s, {status[:300]}", file=sys.stderr, flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n{'chapter':<24}{'wall s':>9}{'GPU peak MiB':>14}{'RSS so far MiB':>16}  status")
    for r in rows:
        print(f"{r['chapter']:<24}{r.get('wall_s', float('nan')):>9.1f}{str(r.get('cuda_peak_mib', '-')):>14}"
              f"{str(r.get('peak_rss_mib_so_far', '-')):>16}  {r['status'][:200]}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
