"""Benchmark possae.layer0_stats on gpt2-small shapes with random weights.

Times, each in its own child process (so that its peak RSS is its own): the bare matmul W_E @ W_enc
(the floor of the exact path, streamed over the same feature chunks; and the same product formed in the exact
path's token blocks), the exact path over the full distribution (all tokens x all positions), and the brute-force path (sae.encode on every input). On a
GPU the weights sit on the device first (as a chapter's model does), each path is timed on its second
call (the first one, which loads CUDA's kernels, is reported as "cold"), the exact path is also
profiled by operator, and brute force runs over all d_vocab x n_ctx inputs in large batches. On a CPU
brute force runs on a subsample of inputs and is extrapolated. Prints a table and writes
benchmarks/results/layer0_stats.json (--append keeps the sections of other devices already there).

    python benchmarks/bench_layer0_stats.py                          # full gpt2-small shapes, on the CPU
    python benchmarks/bench_layer0_stats.py --device cuda --append   # a GPU section beside the CPU one
    python benchmarks/bench_layer0_stats.py --scale 0.1              # 10% of d_vocab, d_sae and n_ctx
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from sae_lens import StandardSAE, StandardSAEConfig  # noqa: E402

from possae.hooks import LAYER0_INPUT as LAYER0_HOOK
from possae.layer0_stats import (  # noqa: E402
    default_feature_chunk,
    default_token_block,
    exact_stats,
    layer0_stats,
    resolve_token_weights,
)

GPT2 = dict(d_vocab=50_257, n_ctx=1_024, d_model=768, d_sae=24_576)
RESULTS = Path(__file__).resolve().parent / "results" / "layer0_stats.json"


def shapes(scale: float) -> dict[str, int]:
    """Return gpt2-small shapes with d_vocab, n_ctx and d_sae scaled by `scale` (d_model kept)."""
    return dict(
        d_vocab=max(64, round(GPT2["d_vocab"] * scale)),
        n_ctx=max(8, round(GPT2["n_ctx"] * scale)),
        d_model=GPT2["d_model"],
        d_sae=max(64, round(GPT2["d_sae"] * scale)),
    )


@torch.no_grad()
def build(shp: dict[str, int], pos_ratio: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, StandardSAE]:
    """Return random (W_E, W_pos, ReLU SAE) at these shapes, with b_enc set for a log-uniform spread of firing rates.

    W_E rows have norm ~3.5 (like GPT-2's); W_pos is a smooth, low-rank (helix-like) curve over positions plus a
    little noise, with row norm pos_ratio times W_E's; W_enc columns are random unit vectors. b_enc is set so that
    feature i fires on a share r_i of inputs, r_i log-uniform in [5e-5, 5e-3] (mean L0 about 26 at d_sae 24,576).
    """
    g = torch.Generator().manual_seed(seed)
    V, n, d, F = shp["d_vocab"], shp["n_ctx"], shp["d_model"], shp["d_sae"]
    W_E = torch.randn(V, d, generator=g) * (3.5 / math.sqrt(d))
    p = torch.arange(n, dtype=torch.float32)[:, None] / GPT2["n_ctx"]
    freqs = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])[None, :]
    basis = torch.cat([torch.cos(2 * math.pi * p * freqs), torch.sin(2 * math.pi * p * freqs)], dim=1)
    dirs = torch.randn(basis.shape[1], d, generator=g) / math.sqrt(d)
    W_pos = basis @ dirs + 0.15 * torch.randn(n, d, generator=g) / math.sqrt(d)
    W_pos = W_pos * (pos_ratio * 3.5 / W_pos.norm(dim=1).mean())
    cfg = StandardSAEConfig(d_in=d, d_sae=F, apply_b_dec_to_input=True)
    cfg.metadata.hook_name = LAYER0_HOOK
    sae = StandardSAE(cfg)
    W_enc = torch.randn(d, F, generator=g)
    sae.W_enc.copy_(W_enc / W_enc.norm(dim=0, keepdim=True))
    sae.W_dec.copy_(sae.W_enc.T)
    sae.b_dec.copy_(0.05 * torch.randn(d, generator=g))
    t = torch.randint(0, V, (4096,), generator=g)
    q = torch.randint(0, n, (4096,), generator=g)
    z = (W_E[t] + W_pos[q] - sae.b_dec) @ sae.W_enc
    rate = torch.exp(torch.empty(F).uniform_(math.log(5e-5), math.log(5e-3), generator=g))
    zq = torch.distributions.Normal(0.0, 1.0).icdf(1 - rate)
    sae.b_enc.copy_(-(z.mean(0) + z.std(0) * zq))
    return W_E, W_pos, sae


@torch.no_grad()
def sample_l0(W_E: torch.Tensor, W_pos: torch.Tensor, sae: StandardSAE, n: int = 4096, seed: int = 1) -> float:
    """Return the mean number of firing features over n random (token, position) inputs, from sae.encode."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, W_E.shape[0], (n,), generator=g)
    q = torch.randint(0, W_pos.shape[0], (n,), generator=g)
    return (sae.encode(W_E[t] + W_pos[q]) > 0).sum(1).double().mean().item()


def max_rss_mb() -> float:
    """Return this process's peak resident set size in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    """Wait for queued CUDA work, if any."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, object]:
    """Return (seconds, value) of fn(), waiting for queued CUDA work before and after."""
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - t0, value


def profile_top(fn, device: str, n: int = 12) -> dict:
    """Return fn()'s wall time, the device's busy time and the n operators that take the most device time (CPU
    time on a CPU), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    return {"wall_ms": wall * 1e3, "device_busy_ms": sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3,
            "top": [{"op": e.key, "calls": e.count, "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3,
                     "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in rows]}


def child(args: argparse.Namespace) -> dict:
    """Run one measurement (args.child) in this process and return its figures."""
    shp = shapes(args.scale)
    W_E, W_pos, sae = build(shp, args.pos_ratio)
    dev = args.device
    cuda = dev.startswith("cuda")
    out: dict = {"rss_before_mb": max_rss_mb()}
    if cuda:  # the weights live on the GPU, as a chapter's model and SAE do there
        W_E, W_pos, sae = W_E.to(dev), W_pos.to(dev), sae.to(dev)
        torch.cuda.reset_peak_memory_stats()
    # timed twice on a GPU: the first call loads CUDA's kernels and libraries ("cold"), the second is the cost
    repeats = 2 if cuda else 1
    chunk = args.feature_chunk or default_feature_chunk(dev)
    if args.child == "matmul":
        E, WT = W_E.to(dev), sae.W_enc.detach().to(dev).T

        def floor() -> None:
            for f0 in range(0, WT.shape[0], chunk):
                A = WT[f0 : f0 + chunk] @ E.T
                del A

        times = [timed(floor, dev)[0] for _ in range(repeats)]
        out["seconds"], out["seconds_cold"] = times[-1], times[0]
    elif args.child == "matmul_blocked":  # the same product in the exact path's token blocks, and nothing else
        E, WT = W_E.to(dev), sae.W_enc.detach().to(dev).T
        block = default_token_block(chunk)

        def blocked() -> None:
            for f0 in range(0, WT.shape[0], chunk):
                for t0 in range(0, E.shape[0], block):
                    A = WT[f0 : f0 + chunk] @ E[t0 : t0 + block].T
                    del A

        times = [timed(blocked, dev)[0] for _ in range(repeats)]
        out["seconds"], out["seconds_cold"] = times[-1], times[0]
    elif args.child == "exact":
        def run():
            return layer0_stats(W_E, W_pos, sae, method="exact", device=dev, feature_chunk=args.feature_chunk,
                                progress=False)

        runs = [timed(run, dev) for _ in range(repeats)]
        out["seconds"], out["seconds_cold"] = runs[-1][0], runs[0][0]
        st = runs[-1][1]
        out["exact_expected_l0"] = st.l0_by_position().mean().item()
        out["share_positional_r2_gt_0.5"] = (st.r2_pos > 0.5).double().mean().item()
        if cuda:
            w, pos = resolve_token_weights(None, W_E.shape[0]), torch.arange(W_pos.shape[0])

            def on_device():  # the same, with the statistics left on the GPU (no copy back to the host)
                return exact_stats(W_E, W_pos, sae, w, pos, torch.device(dev), chunk, progress=False, to_host=False)

            out["seconds_on_device"] = [timed(on_device, dev)[0] for _ in range(2)][-1]
            out["profile"] = profile_top(run, dev)
            out["seconds_by_feature_chunk"] = {
                c: timed(lambda: layer0_stats(W_E, W_pos, sae, method="exact", device=dev, feature_chunk=c,
                                              progress=False), dev)[0]
                for c in (1024, 4096)}
    elif args.child == "brute":
        from possae.layer0_stats import brute_force_stats

        V, n = shp["d_vocab"], shp["n_ctx"]
        n_tok = V if args.brute_inputs <= 0 else min(V, max(1, args.brute_inputs // n))
        toks = torch.randperm(V, generator=torch.Generator().manual_seed(2))[:n_tok].sort().values
        sub_E = W_E[toks.to(W_E.device)]
        w = resolve_token_weights(None, n_tok)
        pos = torch.arange(n)
        out["seconds_subsample"], bf = timed(
            lambda: brute_force_stats(sub_E, W_pos, sae, w, pos, torch.device(dev), batch_size=args.batch_size,
                                      progress=False), dev)
        out["inputs_subsample"] = n_tok * n
        out["seconds"] = out["seconds_subsample"] * (V * n) / out["inputs_subsample"]
        ex = exact_stats(sub_E, W_pos, sae, w, pos, torch.device(dev), chunk, progress=False)
        out["max_abs_diff_vs_exact"] = {
            k: (getattr(ex, k) - getattr(bf, k)).abs().max().item()
            for k in ("mean", "std", "firing_rate", "mean_preact", "r2_pos", "r2_tok")
        }
    elif args.child == "l0":
        out["sample_l0"] = sample_l0(W_E, W_pos, sae)
        out["seconds"] = 0.0
    out["peak_rss_mb"] = max_rss_mb()
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(method: str, args: argparse.Namespace, device: str) -> dict:
    """Return the figures of one measurement run in a fresh Python process."""
    cmd = [sys.executable, __file__, "--child", method, "--device", device]
    for k in ("scale", "pos_ratio", "feature_chunk", "brute_inputs", "batch_size"):
        if getattr(args, k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{method} child failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_name(device: str) -> str:
    """Return the device in words: the GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, {cpu_model()})"


def section(args: argparse.Namespace, device: str) -> dict:
    """Return the matmul / exact / brute-force figures on one device."""
    mm = run_child("matmul", args, device)
    mb = run_child("matmul_blocked", args, device)
    ex = run_child("exact", args, device)
    bf = run_child("brute", args, device)
    inputs = shapes(args.scale)["d_vocab"] * shapes(args.scale)["n_ctx"]
    return {
        "device": device,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matmul_seconds": mm["seconds"],
        "exact_seconds": ex["seconds"],
        "matmul_seconds_cold": mm["seconds_cold"],
        "exact_seconds_cold": ex["seconds_cold"],
        "exact_seconds_on_device": ex.get("seconds_on_device"),
        "brute_force_seconds_extrapolated": bf["seconds"],
        "brute_force_seconds_subsample": bf["seconds_subsample"],
        "brute_force_inputs_subsample": bf["inputs_subsample"],
        "brute_force_extrapolated": bf["inputs_subsample"] < inputs,
        "brute_force_batch_size": args.batch_size,
        "ratio_exact_over_matmul": ex["seconds"] / mm["seconds"],
        # the exact path forms the product in token blocks that stay in cache (possae.layer0_stats.firing_entries),
        # which can cost less than the floor above, written to memory whole: its ratio to the same blocked product
        "matmul_blocked_seconds": mb["seconds"],
        "ratio_exact_over_blocked_matmul": ex["seconds"] / mb["seconds"],
        "speedup_vs_brute_force": bf["seconds"] / ex["seconds"],
        "peak_rss_mb": {"matmul": mm["peak_rss_mb"], "exact": ex["peak_rss_mb"], "brute_force": bf["peak_rss_mb"]},
        "rss_after_building_weights_mb": ex["rss_before_mb"],
        "cuda_peak_mb": {k: v.get("cuda_peak_mb") for k, v in (("matmul", mm), ("exact", ex), ("brute_force", bf))},
        "exact_expected_l0": ex["exact_expected_l0"],
        "share_features_r2_pos_gt_0.5": ex["share_positional_r2_gt_0.5"],
        "brute_vs_exact_max_abs_diff_on_subsample": bf["max_abs_diff_vs_exact"],
        "exact_profile": ex.get("profile"),
        "exact_seconds_by_feature_chunk": ex.get("seconds_by_feature_chunk"),
    }


def main() -> None:
    """Parse arguments, run the measurements, print a table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of d_vocab, d_sae and n_ctx (1.0 = gpt2-small)")
    ap.add_argument("--device", default="cpu", help="device to time on: cpu (a CUDA section is added when one is "
                    "available) or cuda")
    ap.add_argument("--pos-ratio", type=float, default=0.8, help="W_pos row norm / W_E row norm")
    ap.add_argument("--feature-chunk", type=int, default=None,
                    help="features per block of the exact path (default: possae's, 1,024 on a CPU, 8,192 on a GPU)")
    ap.add_argument("--brute-inputs", type=int, default=None,
                    help="(token, position) inputs brute force runs on, 0 for all (default: 16,384 on a CPU, all on a GPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="inputs per sae.encode call in brute force (default: 1,024 on a CPU, 32,768 on a GPU)")
    ap.add_argument("--append", action="store_true", help="keep the other devices' sections already in --out")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if args.brute_inputs is None:
        args.brute_inputs = 0 if cuda else 16_384
    if args.batch_size is None:
        args.batch_size = 32_768 if cuda else 1024
    if args.child:
        print(json.dumps(child(args)))
        return
    shp = shapes(args.scale)
    l0 = run_child("l0", args, "cpu")["sample_l0"]
    sections = [section(args, args.device)]
    if torch.cuda.is_available() and not cuda:
        sections.append(section(args, "cuda"))
    result = {
        "shapes": shp,
        "scale": args.scale,
        "pos_ratio": args.pos_ratio,
        "inputs_total": shp["d_vocab"] * shp["n_ctx"],
        "sample_mean_l0": l0,
        "sections": sections,
    }
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old["shapes"] != shp or old["pos_ratio"] != args.pos_ratio:
            sys.exit(f"{args.out} holds another configuration ({old['shapes']}, pos_ratio {old['pos_ratio']}); "
                     "write elsewhere with --out, or drop --append")
        mine = {s["device"] for s in sections}
        result["sections"] = [s for s in old["sections"] if s["device"] not in mine] + sections
    print(f"shapes {shp}  inputs {result['inputs_total']:,}  sample L0 {l0:.1f}")
    print(f"{'device':8} {'matmul s':>9} {'exact s':>8} {'exact/mm':>9} {'cold mm/exact s':>16} {'brute s':>9} "
          f"{'speed-up':>9} {'RSS exact MB':>13} {'RSS brute MB':>13}")
    for s in result["sections"]:
        est = " (extrap.)" if s.get("brute_force_extrapolated", True) else ""
        cold = f"{s['matmul_seconds_cold']:.2f}/{s['exact_seconds_cold']:.2f}" if "exact_seconds_cold" in s else "-"
        print(
            f"{s['device']:8} {s['matmul_seconds']:9.2f} {s['exact_seconds']:8.2f} {s['ratio_exact_over_matmul']:9.2f} "
            f"{cold:>16} {s['brute_force_seconds_extrapolated']:9.1f} {s['speedup_vs_brute_force']:9.0f} "
            f"{s['peak_rss_mb']['exact']:13.0f} {s['peak_rss_mb']['brute_force']:13.0f}{est}"
        )
        print(f"  {s.get('device_name', '')}: exact expected L0 {s['exact_expected_l0']:.1f}; brute vs exact on "
              f"{s['brute_force_inputs_subsample']:,} inputs: {s['brute_vs_exact_max_abs_diff_on_subsample']}")
        if s.get("exact_profile"):
            prof = s["exact_profile"]
            print(f"  exact with the statistics left on the GPU: {s['exact_seconds_on_device']:.3f} s "
                  f"({s['exact_seconds_on_device'] / s['matmul_seconds']:.2f}x the matmul); profiled: "
                  f"{prof['wall_ms']:.0f} ms wall, device busy {prof['device_busy_ms']:.0f} ms; by feature chunk: "
                  f"{s['exact_seconds_by_feature_chunk']}")
            for row in prof["top"]:
                print(f"    {row['op'][:60]:60} {row['calls']:>7} calls {row['self_device_ms']:9.1f} ms device "
                      f"{row['self_cpu_ms']:9.1f} ms cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
