"""Average SAE activation vs token position across layers: streamed per-position statistics, a detrended spectrum
tested against a trend-keeping red-noise null, W_pos ablations (zeroed, shuffled), spliced-SAE cross-entropy and
per-feature activation statistics inside and past each SAE's training context.

The chapter calls :func:`analyze` once; everything it shows is in the returned :class:`OscillationResult`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from scipy.signal import lfilter
from torch import Tensor

from possae.hooks import (POS_EMBED, hook_layer, in_context_positions, resid_pre, sae_context_size, sae_family,
                          sae_hook, sae_layer)
from possae.intervals import (N_BLOCKS, block_of, check, check_display, check_sentence, check_table,
                              count_rule_sentence, filled_blocks)
from possae.metrics import (PositionSums, mse_by_position, next_token_ce_of, reconstruction_sums, total_variance,
                            windows_per_batch)
from possae.params import ChapterParams, ParameterError
from possae.progress import tqdm
from possae.thresholds import AMPLITUDE_DROP, MOST

ABLATIONS = ("normal", "zero", "shuffle")  # hook_pos_embed's output: itself, zeros, rows of a fixed permutation that
# keeps each SAE's context (position_permutation)
DECILES = tuple(round(0.1 * i, 1) for i in range(1, 10))
IN, PAST = "in context", "past context"  # the two regions of positions of an SAE: 1..C-1 and C..n_ctx-1
DETREND_DEGREE = 3  # the least-squares polynomial removed from a curve before its spectrum (trend, bend, S-shape)
# A smooth trend that is no polynomial (a log-like rise, a decay) leaves a residual after the cubic that swings through
# about two cycles, where a real period of two cycles also lies. So a peak is a *period* only when a sinusoid (three
# parameters: cycles, amplitude, phase) fits the curve better, beside the cubic, than a trend with three parameters
# more does (trend_rss: the polynomial terms of the next degrees, or a logistic step): a trend is fitted better by
# the trend, an oscillation by the sinusoid.
SINE_PARAMETERS = 3
MIN_CYCLES = 1.5  # an oscillation rises, falls and rises again inside the window: at least three half-cycles
SINE_SEARCH = 1.0  # the sinusoid's cycles are searched within this many cycles of the spectral peak...
SINE_STEP = 0.01  # ...in steps of this many cycles
STEP_CENTRES, STEP_WIDTHS = 64, 10  # the trend's logistic step: positions over the window, widths 1..n/16 (log-spaced: sharp rises; a wider one is a polynomial)
N_NULL = 1000  # red-noise surrogates of a curve in the spectral test's null
MAX_AR1 = 0.99  # the largest lag-1 autocorrelation the null's AR(1) surrogates take
NULL_QUANTILE = 0.95  # a peak is significant when its power exceeds this quantile of the null's maximum power
# study 2: in GPT-2 small, layer 0's average activation swings through two periods over the 1,024 positions, and layers
# 1-3 at twice that frequency
STUDY_CYCLES, STUDY_N_CTX, STUDY_DOUBLING = 2.0, 1024, 2.0
FLOOR_PHASES = 4  # the detection floor: a sine added at this many phases (evenly spaced) must be found at each
FLOOR_NULL = 200  # red-noise surrogates per test in the floor's search
FLOOR_RANGE = (1e-2, 1.0)  # the floor is searched over these amplitudes relative to the curve's mean (log bisection)
FLOOR_STEPS = 5  # bisection steps: the floor is known to within a factor 100 ** (1 / 2 ** 5), about 15 %
FLOOR_PRECISION = (FLOOR_RANGE[1] / FLOOR_RANGE[0]) ** (1 / 2**FLOOR_STEPS) - 1  # relative width of the last bracket
FLOOR_TOLERANCE = 0.3  # cycles: a test finds the added sine when it calls an oscillation this close to its cycles
QUANTILE_TOKENS = 32_768  # tokens per SAE and region whose nonzero activations give the per-feature deciles
QUANTILE_VALUES = 1 << 22  # at most this many nonzero values kept per SAE and region (32 MiB): whole tokens, in order
DASH = "—"  # a table cell with nothing to show


@dataclass(frozen=True)
class OscillationParams(ChapterParams):
    """The oscillation chapter's parameters."""

    model_name: str = "organism-gpt2pos"
    sae_release: str = "organism-gpt2pos"
    device: str | None = None
    relu_sae_ids: tuple[str, ...] = ("relu-full", "relu-full-L1", "relu-full-L2", "relu-full-L3")
    topk_sae_ids: tuple[str, ...] = ("topk-L0", "topk-L1", "topk-L2", "topk-L3")
    n_heldout_tokens: int = 2048
    seed: int = 0
    comparison_model: str | None = "organism"  # a shipped organism whose curves are tested beside (None: none)

    def validate(self) -> None:
        """Raise ParameterError without SAEs, with a repeated SAE id, or without held-out tokens."""
        if not self.sae_ids:
            raise ParameterError("give at least one SAE in relu_sae_ids or topk_sae_ids.")
        if len(set(self.sae_ids)) != len(self.sae_ids):
            raise ParameterError(f"an SAE id is given twice: {list(self.sae_ids)}.")
        if self.n_heldout_tokens < 1:
            raise ParameterError(f"n_heldout_tokens must be >= 1; got {self.n_heldout_tokens}.")

    @property
    def sae_ids(self) -> tuple[str, ...]:
        """Return every SAE id, ReLU ones first."""
        return (*self.relu_sae_ids, *self.topk_sae_ids)


# ---------------------------------------------------------------- hooks


def position_permutation(n_pos: int, seed: int = 0, bounds: Sequence[int] = ()) -> Int[Tensor, "n_pos"]:
    """Return the fixed random permutation of positions 0..n_pos-1 drawn from `seed` that keeps every segment between
    consecutive bounds (and 0, n_pos) in place: positions below a bound C are permuted among themselves."""
    g = torch.Generator().manual_seed(seed)
    edges = sorted({0, n_pos, *(int(b) for b in bounds if 0 < int(b) < n_pos)})
    return torch.cat([lo + torch.randperm(hi - lo, generator=g) for lo, hi in zip(edges, edges[1:])])


def pos_embed_ablation(ablation: str, seed: int = 0, bounds: Sequence[int] = ()) -> Callable | None:
    """Return a hook for hook_pos_embed that zeroes or position-shuffles it (None for 'normal'); the shuffle keeps
    positions below each bound (an SAE's training context) below it (position_permutation)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"Unknown ablation {ablation!r}; choose one of {ABLATIONS}.")
    if ablation == "normal":
        return None
    if ablation == "zero":
        return lambda act, hook: torch.zeros_like(act)

    def shuffle(act: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        return act[:, position_permutation(act.shape[1], seed, bounds).to(act.device)]

    return shuffle


def shuffle_sentence(info: pd.DataFrame, n_ctx: int) -> str:
    """Return how the shuffle keeps the SAEs' training contexts (positions below each context permuted among
    themselves)."""
    short = info[info["context_size"] < n_ctx]
    if not len(short):
        return f"Every SAE here reads all {n_ctx} positions, so the permutation runs over all of them."
    bounds = sorted(set(short["context_size"].astype(int)))
    return (f"The permutation keeps each SAE's training context: positions 0..{bounds[0] - 1} are permuted among "
            "themselves" + "".join(f", {lo}..{hi - 1} among themselves" for lo, hi in zip(bounds, bounds[1:] + [n_ctx]))
            + f", so that {'' if len(short) == 1 else 'each of '}{', '.join(short['sae_id'])} sees only rows from inside "
            "its context, and its in-context curve measures the shuffle rather than rows it was never trained on.")


def splice_hook(sae) -> Callable:
    """Return a hook that replaces the activation it reads with the SAE's reconstruction of it."""

    def splice(act: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        return sae.decode(sae.encode(act.to(sae.dtype))).to(act.dtype)

    return splice


# ---------------------------------------------------------------- regions of positions


def regions(context_size: int, n_ctx: int) -> dict[str, range]:
    """Return the SAE's in-context positions (1..C-1) and, when C < n_ctx, the positions past its context."""
    out = {IN: in_context_positions(context_size, n_ctx)}
    if context_size < n_ctx:
        out[PAST] = range(context_size, n_ctx)
    return out


def region_mask(positions: range, n_pos: int) -> Bool[Tensor, "n_pos"]:
    """Return the mask of a range of positions among 0..n_pos-1."""
    m = torch.zeros(n_pos, dtype=torch.bool)
    m[positions.start : positions.stop] = True
    return m


# ---------------------------------------------------------------- per-feature statistics


def per_feature_quantiles(values: Float[Tensor, "n"], features: Int[Tensor, "n"], d_sae: int,
                          qs: Sequence[float] = DECILES) -> Float[Tensor, "d_sae n_q"]:
    """Return each feature's linear-interpolated quantiles of its values (NaN for features with none)."""
    if values.dtype == torch.float32:  # one sort of (feature, value): a float32's bits, sign-folded, sort as its value
        bits = values.view(torch.int32).long()
        key = torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF)) + 2**31
        order = torch.sort(features.long() * 2**32 + key).indices
    else:
        order = torch.sort(values, stable=True).indices
        order = order[torch.sort(features[order], stable=True).indices]
    v = values.double()[order]
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


@dataclass
class FeatureSums:
    """Per-feature sums of activations over the tokens of one region, and a sample of nonzero values for deciles."""

    d_sae: int
    n: int = 0
    total: Tensor | None = None
    sq: Tensor | None = None
    nnz: Tensor | None = None
    vals: list = field(default_factory=list)
    idx: list = field(default_factory=list)
    kept: int = 0
    n_vals: int = 0

    def add(self, f: Float[Tensor, "n_tok d_sae"], fired: Bool[Tensor, "n_tok d_sae"] | None = None,
            max_kept: int = QUANTILE_TOKENS, max_values: int = QUANTILE_VALUES) -> FeatureSums:
        """Return self after adding the activations of n_tok tokens (fired: f > 0, when already computed).

        The nonzero values of the first max_kept tokens are kept for the deciles, whole tokens only and at most
        max_values of them (a dense SAE fires thousands of features a token: 32,768 tokens would hold gigabytes).
        """
        fired = f > 0 if fired is None else fired
        parts = (f.sum(0).double().cpu(), f.pow(2).sum(0).double().cpu(),
                 fired.sum(0, dtype=torch.int32).double().cpu())  # an int32 count: int64's is 2x slower
        if self.total is None:
            self.total, self.sq, self.nnz = parts
        else:
            self.total, self.sq, self.nnz = self.total + parts[0], self.sq + parts[1], self.nnz + parts[2]
        self.n += f.shape[0]
        if self.kept < max_kept and self.n_vals < max_values:
            n_keep = min(f.shape[0], max_kept - self.kept)
            tok, feat = torch.nonzero(fired[:n_keep], as_tuple=True)
            full = len(tok) > max_values - self.n_vals
            if full:  # stop before the first token whose values do not all fit; no later token is kept
                n_keep = int(tok[max_values - self.n_vals])
                fits = tok < n_keep
                tok, feat = tok[fits], feat[fits]
            self.vals.append(f[tok, feat].float().cpu())
            self.idx.append(feat.cpu())
            self.kept += n_keep
            self.n_vals = max_values if full else self.n_vals + len(tok)
        return self

    def frame(self) -> pd.DataFrame:
        """Return per feature: mean, std, firing density, mean of nonzero activations, deciles of nonzero ones."""
        mean = self.total / self.n
        std = (self.sq / self.n - mean**2).clamp(min=0).sqrt()
        vals = torch.cat(self.vals) if self.vals else torch.zeros(0)
        idx = torch.cat(self.idx) if self.idx else torch.zeros(0, dtype=torch.long)
        q = per_feature_quantiles(vals, idx, self.d_sae)
        df = pd.DataFrame({"feature": np.arange(self.d_sae), "mean": mean.numpy(), "std": std.numpy(),
                           "density": (self.nnz / self.n).numpy(),
                           "mean_nonzero": (self.total / self.nnz.clamp(min=1)).numpy()})
        for j, qq in enumerate(DECILES):
            df[f"q{int(round(qq * 100))}"] = q[:, j].numpy()
        return df


# ---------------------------------------------------------------- streamed pass


class PositionPass(NamedTuple):
    """One pass of the model over held-out windows under one W_pos condition."""

    sums: dict[str, PositionSums]  # per SAE: act, nnz (summed over features), x, x2, sse:sae per position
    loss: PositionSums  # ce per position 0..n_pos-2 (predicting the next token)
    features: dict[str, dict[str, FeatureSums]]  # per SAE and region (when asked for): per-feature sums
    spliced: dict[str, PositionSums]  # per SAE (when asked for): ce with its reconstruction spliced in


def resumable_layer(model, hook: str) -> int | None:
    """Return L when `hook` is blocks.L.hook_resid_pre (a forward pass can start there from a given residual
    stream), else None."""
    try:
        layer = hook_layer(hook)
    except ValueError:  # a hook outside the blocks (hook_embed, ln_final...)
        return None
    return layer if 0 <= layer < model.cfg.n_layers and hook == resid_pre(layer) else None


@torch.no_grad()
def position_pass(model, tokens: Int[Tensor, "n_windows pos"], saes: dict[str, object], ablation: str = "normal",
                  seed: int = 0, feature_stats: bool = False, splice: bool = False,
                  batch_size: int | None = None) -> PositionPass:
    """Return per-position SAE sums and cross-entropy (and per-feature sums per region, and each SAE's spliced
    cross-entropy) from one streamed pass.

    splice: also run the model on from each SAE's layer with its reconstruction in place of its input, reusing the
    pass's own encoding (the same numbers as spliced_loss, without re-running the layers below or the SAE); SAEs at
    hooks other than resid_pre are spliced by spliced_loss instead. batch_size: windows per forward pass; None:
    windows_per_batch.
    """
    n_win, n_pos = tokens.shape
    batch_size = batch_size or windows_per_batch(model, n_pos)
    needed = {sae_hook(sae) for sae in saes.values()}
    sums = {sid: PositionSums.empty(n_pos, N_BLOCKS) for sid in saes}
    loss = PositionSums.empty(n_pos - 1, N_BLOCKS)
    feats = {sid: {r: FeatureSums(sae.cfg.d_sae) for r in regions(sae_context_size(sae, n_pos), n_pos)}
             for sid, sae in saes.items()} if feature_stats else {}
    starts = {sid: resumable_layer(model, sae_hook(sae)) for sid, sae in saes.items()} if splice else {}
    spliced = {sid: PositionSums.empty(n_pos - 1, N_BLOCKS) for sid, layer in starts.items() if layer is not None}
    # a short-context SAE's positions are shuffled within its context, so that no row from past it comes inside
    hook = pos_embed_ablation(ablation, seed, [sae_context_size(sae, n_pos) for sae in saes.values()])
    fwd_hooks = [(POS_EMBED, hook)] if hook is not None else []
    for i in tqdm(range(0, n_win, batch_size), desc=f"pass ({ablation})", leave=False):
        batch, part = tokens[i : i + batch_size].to(model.cfg.device), block_of(i // batch_size)
        with model.hooks(fwd_hooks=fwd_hooks):
            logits, cache = model.run_with_cache(batch, names_filter=lambda name: name in needed)
        loss.add_windows(part, ce=next_token_ce_of(logits, batch))
        del logits
        for sid, sae in saes.items():
            act = cache[sae_hook(sae)]
            x = act.to(sae.device, sae.dtype)
            f = sae.encode(x)
            x_hat = sae.decode(f)
            fired = f > 0
            sums[sid].add_windows(part, act=f.sum(-1), nnz=fired.sum(-1, dtype=torch.int32), **reconstruction_sums(x, {"sae": x_hat}))
            for r, acc in feats.get(sid, {}).items():
                pos = regions(sae_context_size(sae, n_pos), n_pos)[r]
                acc.add(f[:, pos.start : pos.stop].flatten(0, 1), fired[:, pos.start : pos.stop].flatten(0, 1))
            del f, fired
            if sid in spliced:
                resid = x_hat.to(act.device, act.dtype)
                spliced_logits = model(resid, start_at_layer=starts[sid], tokens=batch, return_type="logits")
                spliced[sid].add_windows(part, ce=next_token_ce_of(spliced_logits, batch))
        del cache
    return PositionPass(sums, loss, feats, spliced)


@torch.no_grad()
def spliced_loss(model, tokens: Int[Tensor, "n_windows pos"], sae=None,
                 batch_size: int | None = None) -> PositionSums:
    """Return the sums of cross-entropy (ce) per position, in blocks, with the SAE's reconstruction spliced in at its
    hook (clean if sae is None).

    batch_size: windows per forward pass; None: windows_per_batch.
    """
    batch_size = batch_size or windows_per_batch(model, tokens.shape[1])
    fwd_hooks = [] if sae is None else [(sae_hook(sae), splice_hook(sae))]
    ce = PositionSums.empty(tokens.shape[1] - 1, N_BLOCKS)
    for i in tqdm(range(0, len(tokens), batch_size), desc="spliced loss", leave=False):
        batch = tokens[i : i + batch_size].to(model.cfg.device)
        logits = model.run_with_hooks(batch, return_type="logits", fwd_hooks=fwd_hooks)
        ce.add_windows(block_of(i // batch_size), ce=next_token_ce_of(logits, batch))
    return ce


# ---------------------------------------------------------------- per-position curves


def sae_info(saes: dict[str, object], n_ctx: int) -> pd.DataFrame:
    """Return per SAE (in the order given): sae_id, family, layer, context_size (clamped to n_ctx)."""
    return pd.DataFrame([{"sae_id": sid, "family": sae_family(sae), "layer": sae_layer(sae),
                          "context_size": sae_context_size(sae, n_ctx)} for sid, sae in saes.items()])


def position_frame(passes: dict[str, PositionPass], info: pd.DataFrame, d_sae: dict[str, int]) -> pd.DataFrame:
    """Return per (ablation, SAE, position): mean_act (over features and windows), mean_nonzero, l0 and nmse.

    nmse is the MSE at the position over the total variance of the SAE's in-context inputs in the normal pass, so
    that every condition's curve is divided by the same number.
    """
    rows = []
    for row in info.itertuples():
        normal = passes["normal"].sums[row.sae_id]
        inside = region_mask(in_context_positions(row.context_size, normal.n_pos), normal.n_pos)
        variance = total_variance(normal, inside)
        for ablation, p in passes.items():
            s = p.sums[row.sae_id]
            rows.append(pd.DataFrame({
                "ablation": ablation, "sae_id": row.sae_id, "family": row.family, "layer": row.layer,
                "context_size": row.context_size, "position": np.arange(s.n_pos),
                "mean_act": (s.mean("act") / d_sae[row.sae_id]).numpy(),
                "mean_nonzero": (s.totals["act"] / s.totals["nnz"].clamp(min=1)).numpy(),
                "l0": s.mean("nnz").numpy(), "nmse": (mse_by_position(s, "sae") / variance).numpy()}))
    return pd.concat(rows, ignore_index=True)


def curve(positions: pd.DataFrame, sae_id: str, ablation: str = "normal", value: str = "mean_act") -> pd.Series:
    """Return one SAE's curve over positions under one condition, indexed by position."""
    g = positions[(positions["sae_id"] == sae_id) & (positions["ablation"] == ablation)]
    return g.set_index("position")[value]


def region_means(positions: pd.DataFrame, info: pd.DataFrame, value: str, ablation: str = "normal") -> pd.DataFrame:
    """Return per SAE the curve's value at position 0, its mean over 1..C-1 and over C..n_ctx-1 (NaN without)."""
    rows = []
    for row in info.itertuples():
        c = curve(positions, row.sae_id, ablation, value)
        r = regions(row.context_size, len(c))
        rows.append({"sae_id": row.sae_id, "position_0": float(c.loc[0]),
                     IN: float(c.loc[r[IN].start : r[IN].stop - 1].mean()),
                     PAST: float(c.loc[r[PAST].start :].mean()) if PAST in r else np.nan})
    return info.merge(pd.DataFrame(rows), on="sae_id")


# ---------------------------------------------------------------- spectrum and its null


def detrended(curves: Float[Tensor, "... n"], degree: int = DETREND_DEGREE) -> Float[Tensor, "... n"]:
    """Return the curves minus their least-squares polynomial of the given degree in the position."""
    c = torch.tensor(np.asarray(curves, dtype=np.float64)) if not isinstance(curves, Tensor) else curves.double()
    q = polynomial_basis(c.shape[-1], degree)
    return c - (c @ q) @ q.T


def power_spectrum(curves: Float[Tensor, "... n"], degree: int = DETREND_DEGREE) -> Float[Tensor, "... n_freq"]:
    """Return |rfft|^2 of the detrended curves; entry k is the power at k cycles per window (k = 0 is zero)."""
    return torch.fft.rfft(detrended(curves, degree)).abs().pow(2)


def lag1_autocorrelation(x: Float[Tensor, "n"]) -> float:
    """Return the lag-1 autocorrelation of a (detrended) series, bias-corrected and clamped to [0, MAX_AR1]."""
    x = x - x.mean()
    den = float((x * x).sum())
    rho = float((x[1:] * x[:-1]).sum()) / den if den > 0 else 0.0
    rho += (1 + 4 * rho) / len(x)  # Kendall's correction of the estimate's downward bias in a short series
    return min(max(rho, 0.0), MAX_AR1)


@functools.lru_cache(maxsize=8)
def _null_draws(n_null: int, n: int, seed: int) -> Float[Tensor, "n_null n"]:
    """Return the seeded standard normal draws of null_max_power's surrogates (the same for every curve of n points:
    drawn once; callers copy before changing them)."""
    return torch.randn(n_null, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def null_max_power(curve: Float[Tensor, "n"], n_null: int = N_NULL, seed: int = 0,
                   degree: int = DETREND_DEGREE) -> Float[Tensor, "n_null"]:
    """Return the largest detrended power (bins 1..) of trend-keeping red-noise surrogates of the curve, per draw.

    Each surrogate is the curve's own polynomial trend plus an AR(1) series with the lag-1 autocorrelation of the
    curve's detrended residual; after the same detrending its power is scaled to the residual's total power. So the
    null keeps the trend and the residual's smoothness and size, and asks only whether one frequency stands out more
    than smooth noise makes one stand out. (The detrending removes the trend exactly, so only the AR(1) series is
    drawn and detrended.) An oscillation in the residual raises its autocorrelation too, which makes the test
    conservative.
    """
    c = torch.tensor(np.asarray(curve, dtype=np.float64))
    rho, n = lag1_autocorrelation(detrended(c, degree)), len(c)
    eps = _null_draws(n_null, n, seed).clone()
    eps[:, 0] /= math.sqrt(1 - rho**2)  # the stationary start
    x = torch.from_numpy(lfilter([1.0], [1.0, -rho], eps.numpy(), axis=1))  # x_t = rho x_{t-1} + eps_t
    power = power_spectrum(x, degree)[:, 1:]
    total = float(power_spectrum(c, degree)[1:].sum())
    return power.max(1).values * (total / power.sum(1).clamp_min(1e-300))


def refined_peak(power: Float[Tensor, "n_freq"]) -> tuple[int, float]:
    """Return the peak bin k >= 1 and its position refined by a parabola through log-powers of k and its neighbours."""
    k = 1 + int(power[1:].argmax())
    if not 1 < k < len(power) - 1:
        return k, float(k)
    a, b, c = (float(torch.log(power[j] + 1e-300)) for j in (k - 1, k, k + 1))
    denom = a - 2 * b + c
    return k, k + (0.5 * (a - c) / denom if denom < 0 else 0.0)


@functools.lru_cache(maxsize=16)
def polynomial_basis(n: int, degree: int) -> Float[Tensor, "n degree_plus_1"]:
    """Return an orthonormal basis (float64) of the polynomials of the given degree in the position, over n points."""
    t = torch.linspace(-1, 1, n, dtype=torch.float64)
    return torch.linalg.qr(torch.stack([t**j for j in range(min(degree, n - 1) + 1)], 1))[0]


def sinusoid_fit(curve: Float[Tensor, "n"], cycles: float, degree: int = DETREND_DEGREE, span: float = SINE_SEARCH,
                 step: float = SINE_STEP) -> tuple[float, float]:
    """Return (cycles, residual sum of squares) of the least-squares fit of a polynomial of the given degree plus one
    sinusoid, its cycles over the window searched within `span` of `cycles`."""
    c = torch.tensor(np.asarray(curve, dtype=np.float64))
    n = len(c)
    q = polynomial_basis(n, degree)
    r = c - q @ (q.T @ c)
    grid = torch.arange(max(step, cycles - span), max(step, cycles + span) + step / 2, step, dtype=torch.float64)
    phase = 2 * math.pi * grid[:, None] * torch.arange(n, dtype=torch.float64) / n
    waves = torch.stack([phase.cos(), phase.sin()], 1)  # (grid, 2, n)
    waves = waves - (waves @ q) @ q.T  # the part of each sinusoid the polynomial cannot fit
    gram = waves @ waves.transpose(1, 2) + 1e-9 * torch.eye(2, dtype=torch.float64)  # (grid, 2, 2); a sine at n / 2 cycles is 0
    proj = waves @ r  # (grid, 2)
    explained = (proj[:, None, :] @ torch.linalg.solve(gram, proj[:, :, None])).reshape(-1)
    best = int(explained.argmax())
    return float(grid[best]), float(r @ r - explained[best])


def trend_rss(curve: Float[Tensor, "n"], degree: int = DETREND_DEGREE, extra: int = SINE_PARAMETERS) -> float:
    """Return the smallest residual sum of squares of two trends with `extra` parameters beyond the polynomial of the
    given degree: the polynomial of degree + extra, and the polynomial plus a logistic step (its position, width and
    height searched; a sharp rise somewhere in the window)."""
    c = torch.tensor(np.asarray(curve, dtype=np.float64))
    n = len(c)
    q = polynomial_basis(n, degree)
    r = c - q @ (q.T @ c)
    wider = c - (q6 := polynomial_basis(n, degree + extra)) @ (q6.T @ c)
    steps, norms = _logistic_steps(n, degree)
    explained = (steps @ r) ** 2 / norms
    return float(min(wider @ wider, r @ r - explained.max()))


@functools.lru_cache(maxsize=8)
def _logistic_steps(n: int, degree: int) -> tuple[Float[Tensor, "n_steps n"], Float[Tensor, "n_steps"]]:
    """Return trend_rss's logistic steps over n points (every centre and width), less their polynomial part of the
    given degree, and their squared norms (the same for every curve of n points: built once)."""
    q = polynomial_basis(n, degree)
    t = torch.arange(n, dtype=torch.float64)
    centres = torch.linspace(0, n - 1, STEP_CENTRES, dtype=torch.float64)
    widths = torch.logspace(0, math.log10(max(n / 16, 1.0)), STEP_WIDTHS, dtype=torch.float64)
    steps = torch.sigmoid((t - centres[:, None, None]) / widths[None, :, None]).reshape(-1, n)
    steps = steps - (steps @ q) @ q.T
    return steps, (steps * steps).sum(1).clamp_min(1e-300)


def spectral_peak(curve: Float[Tensor, "n"], n_null: int = N_NULL, seed: int = 0, degree: int = DETREND_DEGREE,
                  quantile: float = NULL_QUANTILE) -> dict:
    """Return the detrended curve's spectral peak, tested against the trend-keeping red-noise null (null_max_power),
    and whether a sinusoid there fits better than a trend with as many parameters (sinusoid_fit, trend_rss).

    Keys: cycles (per window, of the fitted sinusoid), period (positions), power_share (of the detrended power at the
    peak bin), null_threshold (the quantile of the null's maximum power), peak_over_null, p_value, sine_over_trend
    (the residual sum of squares of the best trend over that of the polynomial plus the sinusoid), resolved
    (sine_over_trend > 1 and at least MIN_CYCLES), significant (power above the threshold), oscillation (both).
    """
    c = torch.tensor(np.asarray(curve, dtype=np.float64))
    power = power_spectrum(c, degree)
    k, peak_cycles = refined_peak(power)
    cycles, rss_sine = sinusoid_fit(c, peak_cycles, degree)
    sine_over_trend = trend_rss(c, degree) / max(rss_sine, 1e-300)
    null = null_max_power(c, n_null, seed, degree)
    threshold = float(torch.quantile(null, quantile))
    peak = float(power[k])
    resolved, significant = bool(sine_over_trend > 1 and cycles >= MIN_CYCLES), peak > threshold
    return {"cycles": cycles, "period": len(c) / cycles, "power_share": peak / max(float(power[1:].sum()), 1e-300),
            "null_threshold": threshold, "peak_over_null": peak / threshold if threshold > 0 else 0.0,
            "p_value": (1 + int((null >= peak).sum())) / (1 + n_null), "sine_over_trend": sine_over_trend,
            "resolved": resolved, "significant": significant, "oscillation": resolved and significant}


def detection_floor(curve: Float[Tensor, "n"], cycles: float, seed: int = 0, n_null: int = FLOOR_NULL,
                    phases: int = FLOOR_PHASES, steps: int = FLOOR_STEPS) -> float:
    """Return the smallest amplitude, relative to the curve's mean, of a sine of `cycles` over the window that the
    test finds (an oscillation within FLOOR_TOLERANCE cycles of it) when added to the curve at each of `phases`
    phases; NaN when the cycles cannot be resolved (under MIN_CYCLES, or above half the window), inf when even the
    top of FLOOR_RANGE is missed, its bottom when that is found already."""
    c = np.asarray(curve, dtype=np.float64)
    n = len(c)
    if not MIN_CYCLES <= cycles <= n / 2:
        return float("nan")
    t, scale = np.arange(n) / n, abs(float(c.mean())) or 1.0

    def found(relative: float) -> bool:
        for j in range(phases):
            p = spectral_peak(c + relative * scale * np.sin(2 * np.pi * (cycles * t + j / phases)), n_null, seed)
            if not (p["oscillation"] and abs(p["cycles"] - cycles) < FLOOR_TOLERANCE):
                return False
        return True

    lo, hi = (math.log(a) for a in FLOOR_RANGE)
    if not found(math.exp(hi)):
        return float("inf")
    if found(math.exp(lo)):
        return math.exp(lo)  # at most the bottom of the range
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if found(math.exp(mid)) else (mid, hi)
    return math.exp(hi)


def frequency_table(positions: pd.DataFrame, info: pd.DataFrame, n_null: int = N_NULL, seed: int = 0,
                    value: str = "mean_act", floors: bool = True) -> pd.DataFrame:
    """Return per SAE the spectral peak of its normal curve over its in-context positions, tested against the null;
    its frequency as a multiple of the lowest layer's in the same family and of the study's layer-0 frequency (NaN
    unless both oscillate); and, with `floors`, the smallest swing the test finds at the cycles the study's claim
    puts there (tested_cycles, detection_floor)."""
    rows = []
    for row in info.itertuples():
        c = curve(positions, row.sae_id, "normal", value)
        pos = in_context_positions(row.context_size, len(c))
        peak = spectral_peak(c.loc[pos.start : pos.stop - 1].to_numpy(), n_null, seed)
        rows.append({"sae_id": row.sae_id, "family": row.family, "layer": row.layer, "first": pos.start,
                     "last": pos.stop - 1, "window": len(pos), **peak})
    df = pd.DataFrame(rows)
    df["frequency"] = df["cycles"] / df["window"]  # cycles per position
    df["base_layer"] = df.groupby("family")["layer"].transform("min")
    base = df[df["layer"] == df["base_layer"]].drop_duplicates("family").set_index("family")
    base_f = df["family"].map(base["frequency"].where(base["oscillation"]))
    df["ratio_to_base"] = (df["frequency"] / base_f).where(df["oscillation"])
    df["ratio_to_study"] = (df["frequency"] / (STUDY_CYCLES / STUDY_N_CTX)).where(df["oscillation"])
    # the cycles at which the study's claim would put each curve's period: layer 0 at the study's two per 1,024
    # positions; later layers at twice their lowest layer's frequency (the study's when that one does not oscillate)
    lowest = df["layer"] == df["base_layer"]
    doubled = STUDY_DOUBLING * base_f.fillna(STUDY_CYCLES / STUDY_N_CTX)
    df["tested_cycles"] = np.where(lowest, STUDY_CYCLES / STUDY_N_CTX, doubled) * df["window"]
    df["floor"] = [detection_floor(curve(positions, r.sae_id, "normal", value).loc[r.first : r.last].to_numpy(),
                                   r.tested_cycles, seed) for r in df.itertuples()] if floors else np.nan
    return df


def spectrum_frame(positions: pd.DataFrame, frequencies: pd.DataFrame, n_ctx: int,
                   value: str = "mean_act") -> pd.DataFrame:
    """Return per SAE and frequency bin (1..) of its in-context curve: cycles per n_ctx, period (positions) and
    power / null threshold."""
    rows = []
    for row in frequencies.itertuples():
        c = curve(positions, row.sae_id, "normal", value).loc[row.first : row.last].to_numpy()
        power = power_spectrum(c)[1:].numpy()
        k = np.arange(1, len(power) + 1)
        rows.append(pd.DataFrame({"sae_id": row.sae_id, "family": row.family, "layer": row.layer,
                                  "cycles_per_n_ctx": k * n_ctx / row.window, "period": row.window / k,
                                  "power_over_null": power / row.null_threshold if row.null_threshold > 0 else 0.0}))
    return pd.concat(rows, ignore_index=True)


def _layers(layers: Sequence[int]) -> str:
    """Return 'layer 3' or 'layers 1, 2'."""
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(str(int(i)) for i in layers)


def _no_oscillation_reason(row) -> str:
    """Return why a spectral peak is not called an oscillation: not significant first (a peak of noise is no trend)."""
    if row["significant"] and not row["resolved"]:
        if row["sine_over_trend"] > 1:
            return (f"the sinusoid that fits it best has {row['cycles']:.2f} cycles over the window, under the "
                    f"{MIN_CYCLES:g} an oscillation needs: what remains is trend, not a period")
        return (f"a sinusoid (best at {row['cycles']:.2f} cycles over the window) fits it no better than a trend with as "
                f"many parameters (the trend's residual is {row['sine_over_trend']:.2f} times the sinusoid's): "
                "what remains is trend, not a period")
    return (f"its detrended spectrum peaks at a period of {row['period']:.1f} positions, but with only "
            f"{row['peak_over_null']:.2f} times the power that smooth noise of the same size reaches in "
            f"{NULL_QUANTILE:.0%} of {N_NULL} draws (p = {row['p_value']:.2f})")


def frequency_sentence(freq: pd.DataFrame, family: str) -> str:
    """Return what the frequency table supports for one SAE family: the lowest layer's oscillation (or why there is
    none), the later layers' frequency ratios, and whether GPT-2 small's frequency doubling can be tested."""
    g = freq[freq["family"] == family].sort_values("layer")
    base = g.iloc[0]
    later = g.iloc[1:]
    osc = later[later["oscillation"]]
    head = (f"Within its training context (positions {base['first']}..{base['last']}), the layer-{base['layer']} "
            f"{family} SAE's curve ")
    if not base["oscillation"]:
        text = head + f"shows no oscillation: {_no_oscillation_reason(base)}."
        if len(osc):
            text += (" Later layers that do oscillate: " + ", ".join(
                f"layer {r['layer']} (period {r['period']:.1f} positions)" for _, r in osc.iterrows()) + ".")
        elif len(later):
            text += f" Nor does any later {family} SAE ({_layers(later['layer'])})."
        floors = later["floor"] if "floor" in later else pd.Series(dtype=float)
        if len(later) and not len(osc) and len(floors) and np.isfinite(floors.astype(float)).all():
            return text + (f" Nor is GPT-2 small's doubling there: no later layer oscillates at twice the study's "
                           f"layer-0 frequency ({later['tested_cycles'].iloc[0]:.1f} cycles in the window), where the "
                           f"test finds a swing from {floors.max():.0%} of the curve's mean.")
        return text + (f" Without a layer-{base['layer']} period, the frequency doubling reported for GPT-2 small "
                       "(layers 1-3 at twice layer 0's frequency) cannot be tested here.")
    text = head + (f"oscillates with a period of {base['period']:.1f} positions ({base['cycles']:.1f} cycles over the "
                   f"window, {base['peak_over_null']:.1f} times the red-noise threshold, "
                   f"p = {base['p_value']:.3f}).")
    if len(osc):
        text += (f" {_layers(osc['layer']).capitalize()} oscillate{'s' if len(osc) == 1 else ''} at "
                 f"{osc['ratio_to_base'].min():.2f} to {osc['ratio_to_base'].max():.2f} times that frequency "
                 "(GPT-2 small: about 2 in layers 1-3).")
    rest = later[~later["oscillation"]]
    if len(rest):
        text += f" {_layers(rest['layer']).capitalize()} show{'s' if len(rest) == 1 else ''} no oscillation."
    if not len(later):
        text += f" No later-layer {family} SAE is given, so there is no frequency ratio to compare with GPT-2 small's."
    elif not len(osc):
        text += " So there is no frequency ratio to compare with GPT-2 small's doubling."
    return text


def floor_sentence(freq: pd.DataFrame) -> str:
    """Return how large a swing the test finds at the cycles the study's claim puts in each window (detection_floor),
    or why that cannot be asked (the windows too short to resolve them)."""
    done = freq[freq["floor"].notna()]
    if done.empty:
        short = freq["tested_cycles"].max()
        return (f"The study's periods cannot be resolved in these windows: at two periods per {STUDY_N_CTX:,} positions "
                f"(and twice that above layer 0) the longest window holds only {short:.2f} cycles, under the "
                f"{MIN_CYCLES:g} an oscillation needs.")
    def part(rows: pd.DataFrame, where: str) -> str:
        fin = rows["floor"][np.isfinite(rows["floor"])]
        missed = int((~np.isfinite(rows["floor"])).sum())
        text = (f"{where}: {fin.min():.0%} to {fin.max():.0%} of the curve's mean" if len(fin) > 1 else
                f"{where}: {fin.iloc[0]:.0%} of the curve's mean" if len(fin) else where + ": none")
        return text + (f" ({missed} curve{'s' if missed > 1 else ''} not even at {FLOOR_RANGE[1]:.0%})" if missed else "")
    base = done["layer"] == done["base_layer"]
    parts = [part(done[base], f"at {done.loc[base, 'tested_cycles'].iloc[0]:.1f} cycles in the lowest layers")
             if base.any() else "", part(done[~base], "at twice that frequency above them") if (~base).any() else ""]
    return ("How large a swing would the test have found where the study puts one? A sine of the study's frequency is "
            f"added to each curve at {FLOOR_PHASES} phases, and its amplitude is raised until the test calls an "
            f"oscillation within {FLOOR_TOLERANCE:g} cycles of it at every phase (the last column of the table; known "
            f"to within {FLOOR_PRECISION:.0%}). The smallest such swings are, " + "; ".join(filter(None, parts)) + ".")


def comparison_sentence(comparison: pd.DataFrame) -> str:
    """Return how many of the comparison organism's curves oscillate, or that there is no comparison."""
    if comparison.empty:
        return "No second organism is tested beside this one (comparison_model is None or this model)."
    from possae.wpos import winding_word

    n, k, first = len(comparison), int(comparison["oscillation"].sum()), comparison.iloc[0]
    return (f"Beside it, the first organism ({first['model']}: n_ctx {int(first['n_ctx'])}, W_pos "
            f"{winding_word(float(first['wpos_turns']))}): {k} of its {n} curves oscillate by the same test.")


# ---------------------------------------------------------------- amplitude


def oscillation_amplitude(positions: pd.DataFrame, value: str = "mean_act") -> pd.DataFrame:
    """Return per (ablation, SAE) the std of the curve over its in-context positions 1..C-1, its mean, std/mean, and
    `pattern_kept`: its correlation with the normal curve there (pattern_kept)."""
    sub = positions[(positions["position"] >= 1) & (positions["position"] < positions["context_size"])]
    out = sub.groupby(["ablation", "sae_id", "family", "layer"], sort=False)[value].agg(amplitude="std", mean="mean")
    out = out.reset_index()
    out["relative_amplitude"] = out["amplitude"] / out["mean"].abs()
    normal = {sid: g.set_index("position")[value] for sid, g in sub[sub["ablation"] == "normal"].groupby("sae_id")}
    kept = {key: pattern_kept(g.set_index("position")[value], normal[key[1]])
            for key, g in sub.groupby(["ablation", "sae_id"], sort=False)}
    out["pattern_kept"] = [kept[(a, sid)] for a, sid in zip(out["ablation"], out["sae_id"])]
    return out


PATTERNED = 0.01  # a curve has a pattern to remove when it varies by at least 1 % of its mean over positions 1..C-1


def patterned_kept(amplitude: pd.DataFrame, ablation: str) -> pd.Series:
    """Return pattern_kept under one ablation, per SAE whose normal curve has a pattern (relative amplitude at least
    PATTERNED)."""
    normal = amplitude[amplitude["ablation"] == "normal"].set_index("sae_id")["relative_amplitude"]
    kept = amplitude[amplitude["ablation"] == ablation].set_index("sae_id")["pattern_kept"]
    return kept[normal.reindex(kept.index) >= PATTERNED].dropna()


def pattern_values(amplitude: pd.DataFrame) -> dict[str, float]:
    """Return the glued summary of pattern_kept under zeroed W_pos: how many SAEs' normal curves have a pattern
    (relative amplitude at least PATTERNED), and of those the least and most kept."""
    kept = patterned_kept(amplitude, "zero")
    out = {"osc_n_patterned": len(kept), "osc_patterned_threshold": PATTERNED}
    if len(kept):
        out |= {"osc_kept_zero_min": float(kept.min()), "osc_kept_zero_max": float(kept.max()),
                "osc_kept_zero_values": [float(v) for v in kept]}
    return out


def pattern_kept(curve: pd.Series, normal: pd.Series) -> float:
    """Return how much of the normal curve's pattern over positions a curve keeps: their correlation (1: the same
    shape, at any level or scale; 0 or below: the pattern gone). A flat curve keeps none (0); NaN when the normal
    curve is flat."""
    a, b = curve.to_numpy(float), normal.loc[curve.index].to_numpy(float)
    a, b = a - a.mean(), b - b.mean()
    if not float(b @ b) > 0:
        return float("nan")
    if not float(a @ a) > 0:
        return 0.0
    return float(a @ b) / float(np.sqrt((a @ a) * (b @ b)))


# ---------------------------------------------------------------- per-feature summary


def _log_corr(a: pd.Series, b: pd.Series) -> float:
    """Return the correlation of log a and log b over entries where both are positive (NaN under 3 of them)."""
    ok = (a > 0) & (b > 0)
    return float(np.corrcoef(np.log(a[ok]), np.log(b[ok]))[0, 1]) if ok.sum() >= 3 else np.nan


def feature_summary(features: dict[str, dict[str, pd.DataFrame]], info: pd.DataFrame, n_ctx: int) -> pd.DataFrame:
    """Return per SAE and region: positions, live and dead features, medians over live features of density, mean,
    std and the deciles' shape (q10/q50, q90/q50), and log-log correlations of mean with std and with density."""
    rows = []
    for row in info.itertuples():
        for region, df in features[row.sae_id].items():
            pos = regions(row.context_size, n_ctx)[region]
            live = df[df["density"] > 0]
            rows.append({"sae_id": row.sae_id, "family": row.family, "layer": row.layer, "region": region,
                         "positions": f"{pos.start}..{pos.stop - 1}", "live": len(live), "dead": len(df) - len(live),
                         "density": live["density"].median(), "mean": live["mean"].median(),
                         "std": live["std"].median(), "q10_over_q50": (live["q10"] / live["q50"]).median(),
                         "q90_over_q50": (live["q90"] / live["q50"]).median(),
                         "corr_mean_std": _log_corr(live["mean"], live["std"]),
                         "corr_mean_density": _log_corr(live["mean"], live["density"])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- sentences


def past_context_sentence(activation: pd.DataFrame, n_ctx: int) -> str:
    """Return how the average activation past a short-context SAE's training context compares with inside it."""
    short = activation[activation["context_size"] < n_ctx]
    if short.empty:
        return (f"Every SAE given was trained on the full context of {n_ctx} positions, so no position lies past a "
                "training context.")
    ratio = short[PAST] / short[IN]
    r = short.assign(ratio=ratio).sort_values("layer").iloc[0]
    return (f"Past its training context of {r['context_size']} positions, the average activation of {r['sae_id']} "
            f"(layer {r['layer']}) is {r['ratio']:.1f} times its in-context level; over the {len(short)} "
            f"short-context SAEs the ratio runs from {ratio.min():.1f} to {ratio.max():.1f}.")


def ablation_loss_sentence(ce: pd.Series) -> str:
    """Return what zeroing and shuffling W_pos cost the model's loss, and which costs more."""
    zero, shuffle = ce["zero"] - ce["normal"], ce["shuffle"] - ce["normal"]
    text = f"Zeroing W_pos adds {zero:.3f} nats to the loss and shuffling it {shuffle:.3f} nats"
    if shuffle > zero:
        return text + (": wrong positions cost the model more than none at all. A conjecture, not tested here: a zeroed "
                       "W_pos still leaves causal attention some sense of position, through how many tokens each "
                       "position attends to.")
    return text + ": here no positions cost the model at least as much as wrong ones."


def splice_sentence(splice: pd.DataFrame, ref: str, n_ctx: int) -> str:
    """Return the reference SAE's nMSE and added cross-entropy inside and (if it has one) past its training context."""
    r = splice.set_index("sae_id").loc[ref]
    text = (f"Inside its training context {ref} reconstructs its inputs with an nMSE of {r['nmse_' + IN]:.3f} and "
            f"splicing it in adds {r['dce_' + IN]:.3f} nats")
    if r["context_size"] >= n_ctx:
        return text + f"; it was trained on the full context of {n_ctx} positions, so there is no past-context part."
    return (text + f"; past it, the nMSE is {r['nmse_' + PAST]:.3g} and the added loss {r['dce_' + PAST]:.3f} nats: "
            "the length-generalisation failure, seen in the model's loss.")


def density_sentence(summary: pd.DataFrame) -> str:
    """Return how a short-context SAE's median firing density past its context compares with inside it."""
    wide = summary.pivot_table(index=["sae_id", "layer"], columns="region", values="density").reset_index()
    if PAST not in wide:
        return "Every SAE given covers the full context, so all its statistics are in-context ones."
    wide = wide.dropna(subset=[PAST]).sort_values("layer")
    ratio = wide[PAST] / wide[IN]
    r = wide.assign(ratio=ratio).iloc[0]
    return (f"Past its training context, the median live feature of {r['sae_id']} fires on {r[PAST]:.3g} of tokens, "
            f"{r['ratio']:.1f} times its in-context rate of {r[IN]:.3g} (over the {len(wide)} short-context SAEs: "
            f"{ratio.min():.1f} to {ratio.max():.1f} times); those past-context statistics are kept apart.")


def correlation_sentence(summary: pd.DataFrame) -> str:
    """Return how strongly per-feature mean goes with std and with density (log scales, in context)."""
    s = summary[summary["region"] == IN]
    ms, md = s["corr_mean_std"].dropna(), s["corr_mean_density"].dropna()
    if ms.empty or md.empty:
        return "Too few live features fire to correlate their means, standard deviations and densities."

    def strength(c: pd.Series) -> str:
        if c.min() >= 0.5:
            return "go together"
        return "are at most weakly related" if c.max() < 0.5 else "vary in how they relate"

    text = (f"Inside the training context, on log scales, a feature's mean and standard deviation {strength(ms)} "
            f"(correlation {ms.min():.2f} to {ms.max():.2f} across the SAEs), and its mean and firing density "
            f"{strength(md)} ({md.min():.2f} to {md.max():.2f})")
    if md.min() >= 0.5:
        return text + ": features that fire often also fire strongly, so the per-position average mixes how many " \
                      "features fire with how strongly."
    return text + "."


# ---------------------------------------------------------------- display tables


def _num(x: float, fmt: str) -> str:
    """Return x formatted, or a dash for a missing value."""
    return DASH if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def activation_table(activation: pd.DataFrame) -> pd.DataFrame:
    """Return the average activation at position 0, in context and past it, per SAE (for display)."""
    return pd.DataFrame({"SAE": activation["sae_id"], "layer": activation["layer"],
                         "training context": activation["context_size"],
                         "position 0": [_num(v, ".4g") for v in activation["position_0"]],
                         "in context (1..C-1)": [_num(v, ".4g") for v in activation[IN]],
                         "past context (C..)": [_num(v, ".4g") for v in activation[PAST]]})


def frequency_display(freq: pd.DataFrame) -> pd.DataFrame:
    """Return the spectral peak of each SAE's curve, the verdict, and the smallest swing the test finds at the cycles
    the study's claim puts there (for display)."""
    def verdict(r) -> str:
        if r["oscillation"]:
            return "yes" if r["layer"] == r["base_layer"] else f"yes, {_num(r['ratio_to_base'], '.2f')}× base freq."
        return "no (not significant)" if not r["significant"] else "no (trend)"

    def floor(r) -> str:
        if not np.isfinite(r["tested_cycles"]) or np.isnan(r["floor"]):
            return DASH
        return f"{r['floor']:.0%} at {r['tested_cycles']:.1f}" if np.isfinite(r["floor"]) else \
            f"over {FLOOR_RANGE[1]:.0%} at {r['tested_cycles']:.1f}"

    return pd.DataFrame({"SAE (positions)": [f"{r.sae_id} ({r.first}..{r.last})" for r in freq.itertuples()],
                         "layer": freq["layer"],
                         "cycles in window (period)": [f"{c:.2f} ({p:.0f})" for c, p in zip(freq["cycles"],
                                                                                           freq["period"])],
                         "trend / sinusoid residual": [f"{v:.3f}" for v in freq["sine_over_trend"]],
                         "power / null 95% (p)": [f"{v:.2f} ({p:.3f})" for v, p in zip(freq["peak_over_null"],
                                                                                      freq["p_value"])],
                         "oscillation": [verdict(r) for _, r in freq.iterrows()],
                         "smallest swing found (of mean, at cycles)": [floor(r) for _, r in freq.iterrows()]})


def comparison_display(freq: pd.DataFrame) -> pd.DataFrame:
    """Return, per model, family and layer, the cycles found over the SAE's window (or none, and why) and the ratio of
    the frequency to the lowest layer's (for display)."""
    return pd.DataFrame({"model": freq["model"], "SAE": freq["sae_id"], "family": freq["family"],
                         "layer": freq["layer"], "positions": [f"{r.first}..{r.last}" for r in freq.itertuples()],
                         "cycles found": [f"{r.cycles:.2f}" if r.oscillation else
                                          ("none (not significant)" if not r.significant else "none (trend)")
                                          for r in freq.itertuples()],
                         "ratio to lowest layer": [_num(v, ".2f") for v in freq["ratio_to_base"]]})


def amplitude_display(amplitude: pd.DataFrame) -> pd.DataFrame:
    """Return per SAE the relative amplitude (std / mean over positions 1..C-1) under each W_pos condition and each
    ablated curve's correlation with the normal one there (for display)."""
    wide = amplitude.pivot_table(index=["sae_id", "layer"], columns="ablation", values="relative_amplitude",
                                 sort=False).reset_index()
    kept = amplitude.pivot_table(index="sae_id", columns="ablation", values="pattern_kept", sort=False,
                                 dropna=False).reindex(wide["sae_id"])
    return pd.DataFrame({"SAE": wide["sae_id"], "layer": wide["layer"],
                         **{f"rel. amplitude, W_pos {a}": [f"{v:.3f}" for v in wide[a]] for a in ABLATIONS},
                         **{f"correlation with normal, W_pos {a}": [_num(v, ".2f") for v in kept[a]] for a in ABLATIONS
                            if a != "normal"}})


def pattern_sentence(amplitude: pd.DataFrame) -> str:
    """Return how much of the normal curves' pattern survives zeroed and shuffled W_pos, over the SAEs whose normal
    curve varies with position."""
    v = pattern_values(amplitude)
    if not v["osc_n_patterned"]:
        return (f"No SAE's curve varies with position by {PATTERNED:.0%} of its mean or more, so there is no pattern for "
                "an ablation to remove.")
    shuffle = patterned_kept(amplitude, "shuffle")
    return (f"Over the {v['osc_n_patterned']} SAEs whose curve varies with position, the curve with W_pos zeroed "
            f"correlates {v['osc_kept_zero_min']:.2f} to {v['osc_kept_zero_max']:.2f} with the normal one, and with "
            f"it shuffled {shuffle.min():.2f} to {shuffle.max():.2f}.")


def splice_display(splice: pd.DataFrame) -> pd.DataFrame:
    """Return each SAE's nMSE and added cross-entropy in context and past it (for display)."""
    return pd.DataFrame({"SAE": splice["sae_id"], "layer": splice["layer"],
                         "nMSE in context": [_num(v, ".3f") for v in splice["nmse_" + IN]],
                         "nMSE past context": [_num(v, ".3g") for v in splice["nmse_" + PAST]],
                         "ΔCE in context (nats)": [_num(v, ".3f") for v in splice["dce_" + IN]],
                         "ΔCE past context (nats)": [_num(v, ".3f") for v in splice["dce_" + PAST]]})


def feature_display(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per SAE and region the live features and their median density, mean and std (for display)."""
    return pd.DataFrame({"SAE": summary["sae_id"], "positions": summary["region"] + " (" + summary["positions"] + ")",
                         "live features": summary["live"], "silent here": summary["dead"],
                         "median density": [_num(v, ".3g") for v in summary["density"]],
                         "median mean": [_num(v, ".3g") for v in summary["mean"]],
                         "median std": [_num(v, ".3g") for v in summary["std"]]})


def shape_display(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per SAE (in context) the deciles' shape and the log-log correlations (for display)."""
    s = summary[summary["region"] == IN]
    return pd.DataFrame({"SAE": s["sae_id"], "layer": s["layer"],
                         "median q10 / q50": [_num(v, ".3f") for v in s["q10_over_q50"]],
                         "median q90 / q50": [_num(v, ".3f") for v in s["q90_over_q50"]],
                         "corr(log mean, log std)": [_num(v, ".2f") for v in s["corr_mean_std"]],
                         "corr(log mean, log density)": [_num(v, ".2f") for v in s["corr_mean_density"]]})


# ---------------------------------------------------------------- the chapter's one call


@dataclass(frozen=True)
class OscillationResult:
    """Everything the oscillation chapter shows: prose values, display tables and the frames its figures draw."""

    values: dict[str, float | str]  # the prose's numbers and sentences, glue names prefixed osc_
    tables: dict[str, pd.DataFrame]  # display tables: activation, frequency, cycles, amplitude, splice, features, shape
    positions: pd.DataFrame  # per (ablation, SAE, position): mean_act, mean_nonzero, l0, nmse
    spectra: pd.DataFrame  # per (SAE, bin): cycles_per_n_ctx, power_over_null
    amplitude: pd.DataFrame  # per (ablation, SAE): amplitude, mean, relative_amplitude
    loss: pd.DataFrame  # per (ablation, position): ce
    spliced: pd.DataFrame  # per (model, position): ce, model 'clean' or '<sae_id> (layer L)'
    features: dict[str, pd.DataFrame]  # per SAE: per-feature stats over its in-context positions
    layers: dict[str, int]  # per SAE: its layer
    frequencies: pd.DataFrame  # per SAE: the spectral peak and its test against the null

    def glued(self) -> dict[str, float | str]:
        """Return the prose values (names prefixed osc_)."""
        f = self.frequencies
        base = f["layer"] == f["base_layer"]  # each family's lowest layer
        return {**self.values,
                "osc_n_osc_base": int(f.loc[base, "oscillation"].sum()), "osc_n_base": int(base.sum()),
                "osc_n_osc_later": int(f.loc[~base, "oscillation"].sum()), "osc_n_later": int((~base).sum()),
                # frequency / its family's lowest layer's, for later layers where both oscillate (empty: none)
                "osc_ratios_to_base": [float(r) for r in f.loc[~base, "ratio_to_base"].dropna()],
                # frequency / the study's layer-0 frequency (two per 1,024 positions), for later layers that oscillate
                "osc_ratios_to_study": [float(r) for r in f.loc[~base, "ratio_to_study"].dropna()],
                # the later layers' detection floors at their tested cycles, and how many have none (not resolvable,
                # or not found within FLOOR_RANGE)
                "osc_floors_later": [float(x) for x in f.loc[~base, "floor"] if np.isfinite(x)],
                "osc_n_floor_missing": int((~np.isfinite(f.loc[~base, "floor"].astype(float))).sum())}


# the first organism's SAEs at every layer, whose curves the chapter tests beside the GPT-2-geometry organism's
COMPARISON_SAES = {"organism": (("relu-short", "relu-L1", "relu-L2", "relu-L3"), ("topk-L0", "topk-L1", "topk-L2", "topk-L3"))}


COMPARISON_FILE = "oscillation_comparison.json"  # beside the comparison organism's card: its recorded frequency table
COMPARISON_COMMAND = "possae organism oscillation-comparison"


def comparison_fingerprint(name: str) -> str:
    """Return the SHA-256 of the comparison organism's model and SAE weights (what its frequency table depends on)."""
    from possae.sae_files import ORGANISMS, files_sha256

    folder, (relu, topk) = ORGANISMS[name], COMPARISON_SAES[name]
    return files_sha256([folder / "model" / "model.safetensors",
                         *(folder / "saes" / sid / "sae_weights.safetensors" for sid in (*relu, *topk))])


def compute_comparison(name: str, n_heldout_tokens: int, seed: int = 0, device: str | None = None) -> pd.DataFrame:
    """Return the frequency table (without detection floors) of a comparison organism's curves: one normal pass of
    its SAEs at every layer over its own held-out windows, model column set."""
    from possae.heldout import heldout_windows
    from possae.loaders import load_model_and_sae, load_sae_for
    from possae.wpos import pc_winding

    relu, topk = COMPARISON_SAES[name]
    model, first = load_model_and_sae(name, relu[0], device=device)
    saes = {relu[0]: first} | {sid: load_sae_for(model, name, sid, device) for sid in (*relu[1:], *topk)}
    tokens = heldout_windows(model.tokenizer, model.cfg.n_ctx, n_heldout_tokens)
    info = sae_info(saes, tokens.shape[1])
    p = position_pass(model, tokens, saes, "normal", seed=seed, feature_stats=False, splice=False)
    positions = position_frame({"normal": p}, info, {sid: sae.cfg.d_sae for sid, sae in saes.items()})
    turns = pc_winding(model.W_pos.detach()[1:].cpu(), 2)["turns"]
    return frequency_table(positions, info, seed=seed, floors=False).assign(model=name, n_ctx=model.cfg.n_ctx,
                                                                            wpos_turns=turns)


def _comparison_key(name: str, n_heldout_tokens: int, seed: int) -> dict:
    """Return what a recorded comparison must match to stand for a live one."""
    return {"model": name, "n_heldout_tokens": int(n_heldout_tokens), "seed": int(seed), "n_null": N_NULL,
            "weights_sha256": comparison_fingerprint(name)}


def write_comparison(name: str = "organism", n_heldout_tokens: int | None = None, seed: int = 0,
                     folder=None, device: str | None = None):
    """Compute the comparison organism's frequency table at the chapter's defaults and record it (folder: the
    organism's own, where comparison_frequencies reads it); return the record's path. A failed run leaves the last
    record in place."""
    from possae.sae_files import ORGANISMS, write_record

    n = n_heldout_tokens or OscillationParams.n_heldout_tokens
    table = compute_comparison(name, n, seed, device)
    return write_record(folder or ORGANISMS[name], COMPARISON_FILE,
                        {**_comparison_key(name, n, seed), "command": COMPARISON_COMMAND,
                         "rows": table.to_dict(orient="records")})


def recorded_comparison(name: str, n_heldout_tokens: int, seed: int, folder=None) -> pd.DataFrame | None:
    """Return the recorded frequency table of a comparison organism when it was computed on these parameters and these
    weights (write_comparison), else None."""
    from possae.sae_files import ORGANISMS, read_record

    record = read_record(folder or ORGANISMS[name], COMPARISON_FILE, COMPARISON_COMMAND)
    if record is None or any(record.get(k) != v for k, v in _comparison_key(name, n_heldout_tokens, seed).items()):
        return None
    return pd.DataFrame(record["rows"])


def comparison_frequencies(params: OscillationParams) -> pd.DataFrame:
    """Return the frequency table (without detection floors) of the comparison organism's curves: its record when one
    matches the parameters and weights (the work does not depend on this chapter's model or SAEs), else computed;
    empty when there is none to run."""
    name = params.comparison_model
    if name is None or name == params.model_name:
        return pd.DataFrame()
    if name not in COMPARISON_SAES:
        raise ParameterError(f"comparison_model {name!r}: one of {', '.join(COMPARISON_SAES)} or None.")
    recorded = recorded_comparison(name, params.n_heldout_tokens, params.seed)
    return recorded if recorded is not None else compute_comparison(name, params.n_heldout_tokens, params.seed,
                                                                    params.device)


def load_subjects(params: OscillationParams) -> tuple[object, dict[str, object]]:
    """Return (model, {sae_id: SAE}): the model loaded with the weight processing the first SAE's release names (its
    model_from_pretrained_kwargs), and the SAEs the params name (ReLU ones first), each checked to fit it."""
    from possae.loaders import load_model_and_sae, load_sae_for

    first, *rest = params.sae_ids
    model, sae = load_model_and_sae(params.sae_release, first, device=params.device, model_name=params.model_name)
    return model, {first: sae} | {sid: load_sae_for(model, params.sae_release, sid, params.device) for sid in rest}


def _mean_over(values: Float[np.ndarray, "n"], positions: range | None) -> float:
    """Return the mean of values over the positions that exist among them (NaN without any)."""
    if positions is None or min(positions.stop, len(values)) <= positions.start:
        return np.nan
    return float(values[positions.start : positions.stop].mean())


def _splice_frame(info: pd.DataFrame, normal: PositionPass) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return per-position CE of the clean and every spliced model, and per SAE its mean ΔCE in and past context."""
    clean = normal.loss.mean("ce")
    n_pos = len(clean) + 1
    curves = [pd.DataFrame({"model": "clean", "position": np.arange(n_pos - 1), "ce": clean.numpy()})]
    rows = []
    for row in info.itertuples():
        ce = normal.spliced[row.sae_id].mean("ce")
        curves.append(pd.DataFrame({"model": f"{row.sae_id} (layer {row.layer})", "position": np.arange(n_pos - 1),
                                    "ce": ce.numpy()}))
        delta = (ce - clean).numpy()
        r = regions(row.context_size, n_pos)
        rows.append({"sae_id": row.sae_id, **{f"dce_{k}": _mean_over(delta, r.get(k)) for k in (IN, PAST)}})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)


def leave_out(passes: dict[str, PositionPass], block: int | None) -> dict[str, PositionPass]:
    """Return the passes with one block of windows left out (all of them when block is None); features stay whole."""
    return {a: p._replace(sums={k: v.leave_out(block) for k, v in p.sums.items()}, loss=p.loss.leave_out(block),
                          spliced={k: v.leave_out(block) for k, v in p.spliced.items()}) for a, p in passes.items()}


def verdict_figures(passes: dict[str, PositionPass], info: pd.DataFrame, d_sae: dict[str, int],
                    patterned: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Return {name: (figure, threshold)} for the figures the ledger's oscillation verdicts compare with a threshold:
    zeroing's loss minus shuffling's (above 0: shuffling costs less), each SAE's position-0 activation over its
    in-context mean (above 1: higher), and each patterned SAE's zeroed pattern_kept (at most AMPLITUDE_DROP: removed)."""
    positions = position_frame(passes, info, d_sae)
    ce = {a: float(p.loss.mean("ce")[1:].mean()) for a, p in passes.items()}  # position 0 sees BOS alone
    act = region_means(positions, info, "mean_act")
    amplitude = oscillation_amplitude(positions).set_index(["ablation", "sae_id"])["pattern_kept"]
    return {"loss zeroed − loss shuffled": (ce["zero"] - ce["shuffle"], 0.0),
            **{f"{sid}: position 0 / in context": (p0 / inside, 1.0)
               for sid, p0, inside in zip(act["sae_id"], act["position_0"], act[IN])},
            **{f"{sid}: zeroed pattern kept": (float(amplitude[("zero", sid)]), AMPLITUDE_DROP) for sid in patterned}}


def verdict_checks(passes: dict[str, PositionPass], info: pd.DataFrame, d_sae: dict[str, int],
                   amplitude: pd.DataFrame) -> pd.DataFrame:
    """Return intervals.check of verdict_figures: each with its jackknife interval over blocks of windows and the
    threshold its verdict compares it with (none without the zeroed and shuffled passes)."""
    if not {"zero", "shuffle"} <= set(passes):
        return check_table([])
    patterned = list(patterned_kept(amplitude, "zero").index)
    return check(lambda block: verdict_figures(leave_out(passes, block), info, d_sae, patterned),
                 filled_blocks(passes["normal"].loss))


def wpos_turns(model) -> dict[str, float | str]:
    """Return how many turns the model's W_pos rows 1.. sweep (wpos.pc_winding) beside GPT-2 small's, and the sentence
    on what that means for an oscillation with position; without a learned W_pos (rotary), the sentence alone."""
    from possae.wpos import MIN_TURNS, load_gpt2_wpos, pc_winding, winding_word

    gpt2 = pc_winding(load_gpt2_wpos()[1:], 2)["turns"]
    try:
        W_pos = model.W_pos.detach()
    except AttributeError:
        return {"osc_premise_sentence": "This model has no learned W_pos, so nothing in its embedding winds with position."}
    turns = pc_winding(W_pos[1:].cpu(), 2)["turns"]
    shape = winding_word(turns)
    verdict = ("so it can impose a period on the curves" if turns >= MIN_TURNS else
               "with under one turn it has no period to impose on the curves: the test below runs and reports what it "
               "finds, but the ledger counts the study's oscillation claims as not testable on this model")
    return {"osc_wpos_turns": turns, "osc_gpt2_turns": gpt2,
            "osc_premise_sentence": (f"The study ties the oscillation to W_pos, whose rows 1..1023 wind {gpt2:.1f} turns "
                                     f"in GPT-2 small. This model's W_pos is {shape} over rows 1..{len(W_pos) - 1}, "
                                     f"{verdict}.")}


def analyze(model, saes: dict[str, object], params: OscillationParams,
            tokens: Int[Tensor, "n_windows n_ctx"] | None = None, n_null: int = N_NULL) -> OscillationResult:
    """Return the chapter's result: streamed passes under each W_pos condition, spectra, splices and feature stats."""
    if not saes:
        raise ValueError("analyze needs at least one SAE.")
    if tokens is None:
        from possae.heldout import heldout_windows

        tokens = heldout_windows(model.tokenizer, model.cfg.n_ctx, params.n_heldout_tokens)
    n_win, n_ctx = tokens.shape
    info = sae_info(saes, n_ctx)
    passes = {a: position_pass(model, tokens, saes, a, seed=params.seed, feature_stats=a == "normal",
                               splice=a == "normal") for a in ABLATIONS}
    for sid, sae in saes.items():  # SAEs the normal pass could not splice (not at a resid_pre hook)
        if sid not in passes["normal"].spliced:
            passes["normal"].spliced[sid] = spliced_loss(model, tokens, sae)
    d_sae = {sid: sae.cfg.d_sae for sid, sae in saes.items()}
    positions = position_frame(passes, info, d_sae)
    loss = pd.concat([pd.DataFrame({"ablation": a, "position": np.arange(n_ctx - 1), "ce": p.loss.mean("ce").numpy()})
                      for a, p in passes.items()], ignore_index=True)
    ce = loss[loss["position"] >= 1].groupby("ablation", sort=False)["ce"].mean()  # position 0 sees BOS alone
    activation = region_means(positions, info, "mean_act")
    nmse = region_means(positions, info, "nmse").rename(columns={IN: "nmse_" + IN, PAST: "nmse_" + PAST})
    freq = frequency_table(positions, info, n_null=n_null, seed=params.seed).assign(model=params.model_name)
    comparison = comparison_frequencies(params)
    amplitude = oscillation_amplitude(positions)
    spliced, dce = _splice_frame(info, passes["normal"])
    checks = verdict_checks(passes, info, d_sae, amplitude)
    splice = nmse.merge(dce, on="sae_id")
    feats = {sid: {r: s.frame() for r, s in by_region.items()} for sid, by_region in passes["normal"].features.items()}
    summary = feature_summary(feats, info, n_ctx)

    ref = freq[freq["family"] == info["family"].iloc[0]].sort_values("layer", kind="stable").iloc[0]
    ref_act = activation.set_index("sae_id").loc[ref["sae_id"]]
    ref_amp = amplitude[amplitude["sae_id"] == ref["sae_id"]].set_index("ablation")["relative_amplitude"]
    pos0_ratio = activation["position_0"] / activation[IN]  # per SAE: position 0's mean activation over the context's
    values: dict[str, float | str] = {
        "osc_n_tokens": int(tokens.numel()), "osc_n_heldout_tokens": int(params.n_heldout_tokens), "osc_n_windows": int(n_win), "osc_n_ctx": int(n_ctx),
        **wpos_turns(model),
        "osc_shuffle_sentence": shuffle_sentence(info, n_ctx),
        "osc_seed": int(params.seed), "osc_ref0": str(ref["sae_id"]), "osc_ref_family": str(ref["family"]),
        "osc_ref_layer": int(ref["layer"]), "osc_pos0_ratio": float(ref_act["position_0"] / ref_act[IN]),
        "osc_n_pos0_higher": int((pos0_ratio > 1).sum()),
        "osc_pos0_ratio_min": float(pos0_ratio.min()), "osc_pos0_ratio_max": float(pos0_ratio.max()),
        "osc_past_sentence": past_context_sentence(activation, n_ctx),
        "osc_detrend_degree": DETREND_DEGREE, "osc_poly_degree": DETREND_DEGREE + SINE_PARAMETERS,
        "osc_min_cycles": MIN_CYCLES, "osc_n_null": n_null,
        "osc_null_quantile": NULL_QUANTILE,
        "osc_n_oscillating": int(freq["oscillation"].sum()), "osc_n_saes": len(freq),
        "osc_freq_sentence": " ".join(frequency_sentence(freq, fam) for fam in freq["family"].unique()),
        "osc_floor_sentence": floor_sentence(freq), "osc_comparison_sentence": comparison_sentence(comparison),
        **{f"osc_amp0_{a}": float(ref_amp[a]) for a in ABLATIONS},
        **pattern_values(amplitude), "osc_pattern_sentence": pattern_sentence(amplitude),
        **{f"osc_ce_{a}": float(ce[a]) for a in ABLATIONS}, "osc_ce_sentence": ablation_loss_sentence(ce),
        "osc_quantile_tokens": QUANTILE_TOKENS, "osc_quantile_values": QUANTILE_VALUES,
        "osc_splice_sentence": splice_sentence(splice, str(ref["sae_id"]), n_ctx),
        "osc_density_sentence": density_sentence(summary),
        "osc_corr_sentence": correlation_sentence(summary),
        "osc_check_sentence": " ".join(filter(None, [
            check_sentence(checks, f"this sample ({int(tokens.numel()):,} tokens in {n_win} windows)"),
            count_rule_sentence(checks, "position 0 / in context", "position-0 ratios", "above", MOST),
            count_rule_sentence(checks, "zeroed pattern kept", "zeroed pattern-kept correlations", "below", MOST)])),
    }
    tables = {"activation": activation_table(activation), "frequency": frequency_display(freq),
              "cycles": comparison_display(pd.concat([freq, comparison], ignore_index=True)),
              "amplitude": amplitude_display(amplitude), "splice": splice_display(splice),
              "features": feature_display(summary), "shape": shape_display(summary),
              "checks": check_display(checks)}
    return OscillationResult(values=values, tables=tables, positions=positions,
                             spectra=spectrum_frame(positions, freq, n_ctx), amplitude=amplitude, loss=loss,
                             spliced=spliced, features={sid: f[IN] for sid, f in feats.items()},
                             layers=dict(zip(info["sae_id"], info["layer"].astype(int))), frequencies=freq)
