"""Average SAE activation vs token position across layers: streamed per-position statistics, their Fourier spectra,
W_pos ablations (zeroed, shuffled), spliced-SAE cross-entropy and per-feature activation quantiles."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from possae.hooks import POS_EMBED as POS_HOOK, sae_family, sae_layer
from possae.progress import tqdm

ABLATIONS = ("normal", "zero", "shuffle")  # what hook_pos_embed outputs: itself, zeros, rows of a fixed permutation
DECILES = tuple(round(0.1 * i, 1) for i in range(1, 10))


# ---------------------------------------------------------------- hooks


def position_permutation(n_pos: int, seed: int = 0) -> Int[Tensor, "n_pos"]:
    """Return the fixed random permutation of positions 0..n_pos-1 drawn from `seed`."""
    return torch.randperm(n_pos, generator=torch.Generator().manual_seed(seed))


def pos_embed_ablation(ablation: str, seed: int = 0) -> Callable | None:
    """Return a hook for hook_pos_embed that zeroes or position-shuffles it (None for 'normal')."""
    if ablation not in ABLATIONS:
        raise ValueError(f"Unknown ablation {ablation!r}; choose one of {ABLATIONS}.")
    if ablation == "normal":
        return None
    if ablation == "zero":
        return lambda act, hook: torch.zeros_like(act)

    def shuffle(act: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        return act[:, position_permutation(act.shape[1], seed).to(act.device)]

    return shuffle


def splice_hook(sae) -> Callable:
    """Return a hook that replaces the activation it reads with the SAE's reconstruction of it."""

    def splice(act: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        return sae.decode(sae.encode(act.to(sae.dtype))).to(act.dtype)

    return splice


# ---------------------------------------------------------------- quantiles


def per_feature_quantiles(values: Float[Tensor, "n"], features: Int[Tensor, "n"], d_sae: int,
                          qs: Sequence[float] = DECILES) -> Float[Tensor, "d_sae n_q"]:
    """Return each feature's linear-interpolated quantiles of its values (NaN for features with none)."""
    values = values.double()
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(features[order], stable=True).indices]
    v = values[order]
    counts = torch.bincount(features, minlength=d_sae)
    offsets = torch.cumsum(counts, 0) - counts
    out = torch.full((d_sae, len(qs)), float("nan"), dtype=torch.float64)
    has = counts > 0
    c, off = counts[has].double(), offsets[has]
    for j, q in enumerate(qs):
        pos = q * (c - 1)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, counts[has] - 1)
        frac = pos - lo.double()
        out[has, j] = v[off + lo] + frac * (v[off + hi] - v[off + lo])
    return out


# ---------------------------------------------------------------- streamed pass


class PositionPass(NamedTuple):
    """One pass of the model over held-out windows under one W_pos condition."""

    positions: pd.DataFrame  # per (SAE, position): mean_act, mean_nonzero, l0, rel_err
    loss: pd.DataFrame  # per position: the model's cross-entropy predicting the next token
    features: dict[str, pd.DataFrame]  # per SAE id asked for: per-feature mean, std, density, deciles


@torch.no_grad()
def position_pass(model, tokens: Int[Tensor, "n_windows pos"], saes: dict[str, object], ablation: str = "normal",
                  seed: int = 0, feature_ids: Sequence[str] = (), max_quantile_tokens: int = 32_768,
                  batch_size: int = 16) -> PositionPass:
    """Return per-position SAE statistics and cross-entropy, and per-feature stats, from one streamed pass."""
    n_win, n_pos = tokens.shape
    hooks = {sid: sae.cfg.metadata.hook_name for sid, sae in saes.items()}
    needed = set(hooks.values())
    acc = {sid: {k: torch.zeros(n_pos, dtype=torch.float64) for k in ("act", "nnz", "err", "x2")} for sid in saes}
    feat = {sid: {"sum": torch.zeros(saes[sid].cfg.d_sae, dtype=torch.float64), "sq": torch.zeros(
        saes[sid].cfg.d_sae, dtype=torch.float64), "nnz": torch.zeros(saes[sid].cfg.d_sae, dtype=torch.float64),
        "vals": [], "idx": [], "seen": 0} for sid in feature_ids}
    loss_sum = torch.zeros(n_pos - 1, dtype=torch.float64)
    hook = pos_embed_ablation(ablation, seed)
    fwd_hooks = [(POS_HOOK, hook)] if hook is not None else []
    for i in tqdm(range(0, n_win, batch_size), desc=f"pass ({ablation})", leave=False):
        batch = tokens[i : i + batch_size].to(model.cfg.device)
        with model.hooks(fwd_hooks=fwd_hooks):
            logits, cache = model.run_with_cache(batch, names_filter=lambda name: name in needed)
        loss_sum += model.loss_fn(logits, batch, per_token=True).double().sum(0).cpu()
        del logits
        for sid, sae in saes.items():
            x = cache[hooks[sid]].to(sae.device, sae.dtype)
            f = sae.encode(x)
            fired = f > 0
            a = acc[sid]
            a["act"] += f.sum(-1).double().sum(0).cpu()
            a["nnz"] += fired.sum(-1).double().sum(0).cpu()
            a["err"] += (sae.decode(f) - x).pow(2).sum(-1).double().sum(0).cpu()
            a["x2"] += x.pow(2).sum(-1).double().sum(0).cpu()
            if sid in feat:
                s, flat, flat_fired = feat[sid], f.flatten(0, 1), fired.flatten(0, 1)
                s["sum"] += flat.sum(0).double().cpu()
                s["sq"] += flat.pow(2).sum(0).double().cpu()
                s["nnz"] += flat_fired.sum(0).double().cpu()
                if s["seen"] < max_quantile_tokens:
                    n_keep = min(flat.shape[0], max_quantile_tokens - s["seen"])
                    tok_idx, f_idx = torch.nonzero(flat_fired[:n_keep], as_tuple=True)
                    s["vals"].append(flat[tok_idx, f_idx].float().cpu())
                    s["idx"].append(f_idx.cpu())
                    s["seen"] += n_keep
        del cache
    rows = []
    for sid, sae in saes.items():
        a = acc[sid]
        rows.append(pd.DataFrame({
            "ablation": ablation, "sae_id": sid, "layer": sae_layer(sae), "family": sae_family(sae),
            "context_size": sae.cfg.metadata.context_size or n_pos, "position": np.arange(n_pos),
            "mean_act": (a["act"] / (n_win * sae.cfg.d_sae)).numpy(),
            "mean_nonzero": (a["act"] / a["nnz"].clamp(min=1)).numpy(),
            "l0": (a["nnz"] / n_win).numpy(), "rel_err": (a["err"] / a["x2"].clamp(min=1e-30)).numpy()}))
    positions = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    loss = pd.DataFrame({"ablation": ablation, "position": np.arange(n_pos - 1), "ce": (loss_sum / n_win).numpy()})
    features = {sid: _feature_frame(feat[sid], n_win * n_pos, saes[sid].cfg.d_sae) for sid in feat}
    return PositionPass(positions, loss, features)


def _feature_frame(s: dict, n_tokens: int, d_sae: int) -> pd.DataFrame:
    """Return per-feature mean, std, firing density, mean of nonzero activations and deciles of nonzero activations."""
    mean = s["sum"] / n_tokens
    std = (s["sq"] / n_tokens - mean**2).clamp(min=0).sqrt()
    vals = torch.cat(s["vals"]) if s["vals"] else torch.zeros(0)
    idx = torch.cat(s["idx"]) if s["idx"] else torch.zeros(0, dtype=torch.long)
    q = per_feature_quantiles(vals, idx, d_sae)
    df = pd.DataFrame({"feature": np.arange(d_sae), "mean": mean.numpy(), "std": std.numpy(),
                       "density": (s["nnz"] / n_tokens).numpy(),
                       "mean_nonzero": (s["sum"] / s["nnz"].clamp(min=1)).numpy()})
    for j, qq in enumerate(DECILES):
        df[f"q{int(round(qq * 100))}"] = q[:, j].numpy()
    return df


@torch.no_grad()
def spliced_loss(model, tokens: Int[Tensor, "n_windows pos"], sae=None, batch_size: int = 16) -> pd.DataFrame:
    """Return cross-entropy per position with the SAE's reconstruction spliced in at its hook (clean if sae is None)."""
    n_win, n_pos = tokens.shape
    fwd_hooks = [] if sae is None else [(sae.cfg.metadata.hook_name, splice_hook(sae))]
    loss_sum = torch.zeros(n_pos - 1, dtype=torch.float64)
    for i in tqdm(range(0, n_win, batch_size), desc="spliced loss", leave=False):
        batch = tokens[i : i + batch_size].to(model.cfg.device)
        loss = model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks)
        loss_sum += loss.double().sum(0).cpu()
    return pd.DataFrame({"position": np.arange(n_pos - 1), "ce": (loss_sum / n_win).numpy()})


# ---------------------------------------------------------------- amplitude and frequency


def oscillation_amplitude(positions: pd.DataFrame, value: str = "mean_act", first: int = 1,
                          within_context: bool = False) -> pd.DataFrame:
    """Return per (ablation, SAE) the std over positions >= first (and < its training context) of the curve, its mean,
    and std / mean."""
    sub = positions[positions["position"] >= first]
    if within_context:
        sub = sub[sub["position"] < sub["context_size"]]
    keys = [k for k in ("ablation", "sae_id", "layer", "family") if k in sub]
    out = sub.groupby(keys, sort=False)[value].agg(amplitude="std", mean="mean").reset_index()
    out["relative_amplitude"] = out["amplitude"] / out["mean"].abs()
    return out


def detrended(curve: Float[Tensor, "n"], detrend: str = "mean") -> Float[Tensor, "n"]:
    """Return the curve minus its mean ('mean') or minus its least-squares straight line ('linear')."""
    c = curve.double() if isinstance(curve, Tensor) else torch.tensor(np.array(curve, dtype=np.float64))
    if detrend == "mean":
        return c - c.mean()
    if detrend == "linear":
        t = torch.arange(len(c), dtype=torch.float64)
        t = t - t.mean()
        return c - c.mean() - t * (t @ (c - c.mean())) / (t @ t)
    raise ValueError(f"Unknown detrend {detrend!r}; choose 'mean' or 'linear'.")


def amplitude_spectrum(curve: Float[Tensor, "n"], detrend: str = "mean") -> Float[Tensor, "n_freq"]:
    """Return |rfft| of the detrended curve; entry k is the amplitude at k cycles per len(curve) positions."""
    return torch.fft.rfft(detrended(curve, detrend)).abs()


def dominant_frequency(curve: Float[Tensor, "n"], detrend: str = "mean") -> float:
    """Return the curve's dominant frequency in cycles per position (spectral peak, parabolically refined)."""
    spec = amplitude_spectrum(curve, detrend)
    k = 1 + int(spec[1:].argmax())
    shift = 0.0
    if 1 < k < len(spec) - 1:  # parabola through the log-amplitudes of the peak bin and its two neighbours
        a, b, c = (float(torch.log(spec[j] + 1e-300)) for j in (k - 1, k, k + 1))
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return (k + shift) / len(curve)


def dominant_frequencies(curve: Float[Tensor, "n"], n_ctx: int, top: int = 3, detrend: str = "mean") -> pd.DataFrame:
    """Return the `top` spectral peaks: cycles per n_ctx, period in positions and share of the spectrum's power."""
    spec = amplitude_spectrum(curve, detrend)
    n = len(curve)
    power = spec.pow(2)
    is_peak = torch.ones(len(spec), dtype=torch.bool)
    is_peak[1:] &= spec[1:] >= spec[:-1]
    is_peak[:-1] &= spec[:-1] >= spec[1:]
    is_peak[0] = False
    cand = torch.arange(len(spec))[is_peak]
    cand = cand[torch.argsort(spec[cand], descending=True)][:top]
    return pd.DataFrame({"rank": np.arange(1, len(cand) + 1), "cycles_per_n_ctx": (cand.double() * n_ctx / n).numpy(),
                         "period": (n / cand.double()).numpy(), "power_share": (power[cand] / power[1:].sum()).numpy()})


MIN_RESOLVED_CYCLES = 1.5  # a dominant peak under 1.5 cycles per window is the lowest bin: a trend, not an oscillation


def _layers(index) -> str:
    """Return 'Layer 3' or 'Layers 1, 2'."""
    return ("Layer " if len(index) == 1 else "Layers ") + ", ".join(str(i) for i in index)


def frequency_sentence(freq: pd.DataFrame, family: str, base_layer: int = 0) -> str:
    """Return what frequency_table supports for one SAE family: the base layer's resolved period and the later
    layers' frequency ratios, or that no oscillation is resolved (a lowest-bin peak is a trend, not a period)."""
    g = freq[freq["family"] == family].set_index("layer").sort_index()
    base = g.loc[base_layer]
    later = g[g.index != base_layer]
    resolved = later[later["resolved"]]
    if not base["resolved"]:
        text = (f"Within its training context (positions {base['positions']}), the layer-{base_layer} {family} SAE's "
                f"curve has no resolved oscillation: its spectral peak, {base['cycles_in_window']:.2f} cycles over the "
                "window, sits in the lowest bin, which a trend or a bend produces as well as a period would. ")
        if len(resolved):
            text += ("Layers with a resolved peak: " + ", ".join(
                f"{layer} (period {row['dominant_period']:.1f} positions)" for layer, row in resolved.iterrows()) +
                "; without a layer-0 period, the frequency doubling reported for GPT-2 small cannot be tested here.")
        else:
            text += "No later layer resolves one either, so the frequency doubling reported for GPT-2 small cannot be tested here."
        return text
    text = (f"Within its training context (positions {base['positions']}), the layer-{base_layer} {family} SAE's curve "
            f"peaks at {base['dominant_cycles_per_n_ctx']:.1f} cycles per n_ctx positions (a period of "
            f"{base['dominant_period']:.1f} positions, {base['cycles_in_window']:.1f} cycles over the window). ")
    if len(resolved):
        text += (f"{_layers(resolved.index)} peak{'s' if len(resolved) == 1 else ''} at {resolved['ratio_to_base'].min():.2f} to "
                 f"{resolved['ratio_to_base'].max():.2f} times that frequency (GPT-2 small: about 2).")
    else:
        text += "No later layer resolves a peak inside its window, so there is no frequency ratio to compare with GPT-2 small's 2."
    unresolved = later[~later["resolved"]]
    if len(resolved) and len(unresolved):
        text += f" {_layers(unresolved.index)} {'has' if len(unresolved) == 1 else 'have'} no resolved peak (lowest bin)."
    return text


def frequency_table(positions: pd.DataFrame, n_ctx: int, value: str = "mean_act", first: int = 1,
                    within_context: bool = False, detrend: str = "mean", base_layer: int = 0, top: int = 3) -> pd.DataFrame:
    """Return per SAE the top spectral peaks of its curve over positions first.. (n_ctx or its training context) and the
    dominant frequency's ratio to the base layer's in the same family."""
    rows = []
    for (family, sid, layer), g in positions.groupby(["family", "sae_id", "layer"], sort=False):
        last = min(int(g["context_size"].iloc[0]), n_ctx) if within_context else n_ctx
        g = g[(g["position"] >= first) & (g["position"] < last)].sort_values("position")
        curve = torch.tensor(g[value].to_numpy())
        f = dominant_frequency(curve, detrend)
        row = {"family": family, "sae_id": sid, "layer": layer, "positions": f"{first}..{last - 1}",
               "dominant_cycles_per_n_ctx": f * n_ctx, "cycles_in_window": f * len(curve),
               "resolved": f * len(curve) >= MIN_RESOLVED_CYCLES}
        row["dominant_period"] = n_ctx / row["dominant_cycles_per_n_ctx"]
        for r in dominant_frequencies(curve, n_ctx, top=top, detrend=detrend).itertuples():
            row[f"peak{r.rank}_cycles"] = r.cycles_per_n_ctx
            row[f"peak{r.rank}_share"] = r.power_share
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["ratio_to_base"] = np.nan
    for family, g in df.groupby("family"):
        base = g.loc[g["layer"] == base_layer, "dominant_cycles_per_n_ctx"]
        if len(base):
            df.loc[g.index, "ratio_to_base"] = g["dominant_cycles_per_n_ctx"] / float(base.iloc[0])
    return df
