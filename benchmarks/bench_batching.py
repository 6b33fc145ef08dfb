"""Windows per forward pass against wall time, on the organism's oscillation passes (CPU).

The passes hold per batch the logits (windows x n_ctx x d_vocab floats) and every SAE's activations (windows x n_ctx
x d_sae). Past glibc's 32 MiB mmap threshold each such tensor is mapped afresh and page-faulted on every batch, so a
larger batch is not faster. This times possae.oscillation.position_pass, normal (with per-feature statistics and the
splices) and with W_pos zeroed, on the same held-out windows at several batch sizes, checks that every batch size
gives the same per-position loss, and records the result in benchmarks/results/batching_cpu.json.

Run: HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/bench_batching.py [--windows 96] [--sizes 16 8 4 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "batching_cpu.json"


def main() -> None:
    """Time the passes at each batch size and write the results file."""
    from possae.heldout import heldout_windows
    from possae.metrics import windows_per_batch
    from possae.oscillation import OscillationParams, load_subjects, position_pass

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=96, help="held-out windows of n_ctx tokens to pass")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 8, 4, 2], help="windows per forward pass")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    params = OscillationParams()
    model, saes = load_subjects(params)
    tokens = heldout_windows(model.tokenizer, model.cfg.n_ctx, params.n_heldout_tokens)[: args.windows]
    rows, reference = [], None
    for size in args.sizes:
        t0 = time.perf_counter()
        normal = position_pass(model, tokens, saes, "normal", feature_stats=True, splice=True, batch_size=size)
        t1 = time.perf_counter()
        position_pass(model, tokens, saes, "zero", batch_size=size)
        t2 = time.perf_counter()
        ce = normal.loss.mean("ce")
        reference = ce if reference is None else reference
        rows.append({"windows_per_pass": size, "normal_seconds": round(t1 - t0, 2), "zero_seconds": round(t2 - t1, 2),
                     "max_ce_difference": float((ce - reference).abs().max())})
        print(rows[-1], flush=True)
    result = {"what": "possae.oscillation.position_pass on the organism, all 8 SAEs of the oscillation chapter",
              "windows": len(tokens), "n_ctx": model.cfg.n_ctx, "d_vocab": model.cfg.d_vocab,
              "d_sae": {sid: sae.cfg.d_sae for sid, sae in saes.items()},
              "default_windows_per_pass": windows_per_batch(model, model.cfg.n_ctx),
              "torch_threads": torch.get_num_threads(), "cpu_count": len(__import__("os").sched_getaffinity(0)),
              "machine": platform.machine(), "torch_version": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
