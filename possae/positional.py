"""Positional features of layer-0 SAEs: which features are positional, where they peak, their profiles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from possae.devices import default_device
from possae.metrics import ZERO_VAR_RTOL, r2_pos
from possae.layer0_stats import Layer0Stats, encoder_parts, layer0_stats_from_model
from possae.progress import tqdm
from possae.wpos import pca

POSITIONAL_R2 = 0.5


def _inside(stats: Layer0Stats, context_size: int | None) -> Bool[Tensor, " n_pos"]:
    """Return the mask of the stats' positions < context_size (all of them when None), checked non-empty."""
    if context_size is None:
        return torch.ones_like(stats.positions, dtype=torch.bool)
    inside = stats.positions < context_size
    if not bool(inside.any()):
        raise ValueError(f"stats hold no position < context_size={context_size}.")
    return inside


def r2_pos_inside(stats: Layer0Stats, context_size: int | None = None) -> Float[Tensor, " d_sae"]:
    """Return each feature's R2_pos over the positions < context_size only (None: the stats' own), exactly.

    ``Var_p(E_t f) / (Var_p(E_t f) + E_p Var_t f)`` over those positions; 0 where the variance is (numerically) 0.
    """
    if context_size is None:
        return stats.r2_pos
    inside = _inside(stats, context_size)
    return r2_pos(stats.mean[inside], stats.std[inside] ** 2)


def fires_inside(stats: Layer0Stats, context_size: int | None = None) -> Bool[Tensor, " d_sae"]:
    """Return, per feature, whether it fires on any (token, position) input with position < context_size."""
    return stats.firing_rate[_inside(stats, context_size)].amax(0) > 0


def positional_features(stats: Layer0Stats, context_size: int | None = None,
                        threshold: float = POSITIONAL_R2) -> Bool[Tensor, " d_sae"]:
    """Return the mask of positional features: R2_pos >= threshold and firing somewhere, positions < context_size."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a share of variance and must lie in [0, 1]; got {threshold}.")
    return (r2_pos_inside(stats, context_size) >= threshold) & fires_inside(stats, context_size)


def peak_positions(stats: Layer0Stats, context_size: int | None = None) -> Int[Tensor, " d_sae"]:
    """Return, per feature, the position < context_size (None: any) of its largest mean activation over all tokens."""
    inside = _inside(stats, context_size)
    return stats.positions[inside][stats.mean[inside].argmax(0)]


def top_positional_features(stats: Layer0Stats, context_size: int | None = None, k: int = 8,
                            threshold: float = POSITIONAL_R2, per_peak: int | None = None) -> Int[Tensor, " k"]:
    """Return up to k positional features by decreasing R2_pos (over positions < context_size; None: all).

    With per_peak, at most that many per peak position (so that features tiling different positions all show).
    """
    r2 = r2_pos_inside(stats, context_size)
    idx = positional_features(stats, context_size, threshold).nonzero().squeeze(1)
    idx = idx[r2[idx].argsort(descending=True)]
    if per_peak is not None:
        peaks = peak_positions(stats, context_size)[idx]
        taken: dict[int, int] = {}
        keep = []
        for j, q in enumerate(peaks.tolist()):
            if taken.get(q, 0) < per_peak:
                taken[q] = taken.get(q, 0) + 1
                keep.append(j)
        idx = idx[torch.tensor(keep, dtype=torch.long)]
    return idx[:k]


def positional_profile_frame(stats: Layer0Stats, features: Int[Tensor, " k"]) -> pd.DataFrame:
    """Return one row per (feature, position): mean activation and firing rate over all tokens."""
    return pd.concat([stats.position_frame(int(i)).reset_index().assign(feature=int(i)) for i in features],
                     ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Scores of every feature (exact, from Layer0Stats)
# ----------------------------------------------------------------------------------------------












def peak_width(stats: Layer0Stats, context_size: int | None = None, level: float = 0.5) -> Int[Tensor, " d_sae"]:
    """Return, per feature, the number of positions < context_size whose mean activation is >= level x its maximum.

    0 for a feature whose mean activation is 0 at every such position (it never fires there).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must lie in (0, 1]; got {level}.")
    m = stats.mean[_inside(stats, context_size)]
    top = m.amax(0)
    return ((m >= level * top) & (top > 0)).sum(0)


def feature_scores(stats: Layer0Stats, context_size: int | None = None) -> pd.DataFrame:
    """Return one row per feature: r2_pos, r2_tok, their interaction remainder, peak position and width, firing rates.

    ``r2_tok`` (and so ``interaction = 1 - r2_pos - r2_tok``) is the stats' own, over the positions they were computed
    on: pass stats computed on ``positions=range(context_size)`` for numbers that all refer to the context.
    """
    r2_pos = r2_pos_inside(stats, context_size)
    inside = _inside(stats, context_size)
    return pd.DataFrame(
        {
            "r2_pos": r2_pos.numpy(),
            "r2_tok": stats.r2_tok.numpy(),
            "interaction": (1.0 - r2_pos - stats.r2_tok).clamp(min=0.0).numpy(),
            "peak_position": peak_positions(stats, context_size).numpy(),
            "peak_width": peak_width(stats, context_size).numpy(),
            "max_mean": stats.mean[inside].amax(0).numpy(),
            "firing_rate": stats.firing_rate[inside].mean(0).numpy(),
            "max_firing_rate": stats.firing_rate[inside].amax(0).numpy(),
        },
        index=pd.RangeIndex(stats.d_sae, name="feature"),
    )


def threshold_counts(r2_pos: Float[Tensor, " d_sae"], fires: Bool[Tensor, " d_sae"],
                     thresholds: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)) -> pd.DataFrame:
    """Return, per threshold, how many (and what share of the) firing features have R2_pos >= threshold."""
    n_live = int(fires.sum())
    rows = [{"threshold": t, "features": int(((r2_pos >= t) & fires).sum()),
             "share of live features": int(((r2_pos >= t) & fires).sum()) / max(n_live, 1)} for t in thresholds]
    return pd.DataFrame(rows).set_index("threshold")


def r2_extremes(r2: Float[Tensor, " d_sae"], fires: Bool[Tensor, " d_sae"], low: float = 0.05,
                high: float = 0.95) -> dict[str, float]:
    """Return the shares of firing features with r2 < low ('near_0') and r2 > high ('near_1'), and their count."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1; got low={low}, high={high}.")
    live = r2[fires]
    n = max(int(live.numel()), 1)
    return {"near_0": int((live < low).sum()) / n, "near_1": int((live > high).sum()) / n,
            "n_live": int(live.numel())}


def scatter_sample(n: int, max_points: int = 5000, keep: Bool[Tensor, " n"] | None = None,
                   seed: int = 0) -> Int[Tensor, " m"]:
    """Return sorted indices of at most max_points of n items: all of `keep`, then a random sample of the rest."""
    keep = torch.zeros(n, dtype=torch.bool) if keep is None else keep.cpu().bool()
    if n <= max_points:
        return torch.arange(n)
    kept = keep.nonzero().squeeze(1)
    rest = (~keep).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    take = rest[torch.randperm(len(rest), generator=g)[: max(0, max_points - len(kept))]]
    return torch.cat([kept, take]).sort().values


# ----------------------------------------------------------------------------------------------
# Which positions the positional features serve
# ----------------------------------------------------------------------------------------------


def peak_histogram(peaks: Int[Tensor, " k"], n_pos: int) -> Int[Tensor, " n_pos"]:
    """Return the number of features whose peak lies at each position 0..n_pos-1."""
    peaks = peaks.long().cpu()
    if peaks.numel() and (int(peaks.min()) < 0 or int(peaks.max()) >= n_pos):
        raise ValueError(f"peaks must lie in 0..{n_pos - 1}; got {int(peaks.min())}..{int(peaks.max())}.")
    return torch.bincount(peaks, minlength=n_pos)


def peak_range_frame(peaks: Int[Tensor, " k"], context_size: int, edges: tuple[int, ...] = (1, 8)) -> pd.DataFrame:
    """Return, per range of positions [0, e1), [e1, e2), ..., [e_last, context_size): positions, features, per position."""
    bounds = [0, *sorted({e for e in edges if 0 < e < context_size}), context_size]
    hist = peak_histogram(peaks, context_size)
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = int(hist[lo:hi].sum())
        rows.append({"positions": f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}", "first": lo, "last": hi - 1,
                     "n_positions": hi - lo, "features": n, "features_per_position": n / (hi - lo),
                     "positions_with_a_feature": int((hist[lo:hi] > 0).sum())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Decoder directions and the W_pos helix
# ----------------------------------------------------------------------------------------------


def wpos_frame_pca(W_pos: Float[Tensor, "n_ctx d_model"], first: int, last: int,
                   k: int = 3) -> tuple[Float[Tensor, " d_model"], Float[Tensor, "k d_model"], Float[Tensor, " k"]]:
    """Return (mean, top-k principal axes, their variance shares) of W_pos's rows first..last-1 (float64)."""
    rows = W_pos.detach().double().cpu()[first:last]
    if rows.shape[0] < 2:
        raise ValueError(f"need at least 2 rows of W_pos between {first} and {last}; got {rows.shape[0]}.")
    _, shares, axes = pca(rows)
    return rows.mean(0), axes[:k], shares[:k]


def helix_projection(W_pos: Float[Tensor, "n_ctx d_model"], W_dec: Float[Tensor, "k d_model"], first: int = 1,
                     last: int | None = None, k: int = 3) -> tuple[Float[Tensor, "n_rows 3"], Float[Tensor, "k 3"]]:
    """Return (W_pos rows first..last-1 centred and projected on their top-k PCs, unit decoder rows on the same PCs)."""
    last = W_pos.shape[0] if last is None else last
    mu, axes, _ = wpos_frame_pca(W_pos, first, last, k)
    rows = (W_pos.detach().double().cpu()[first:last] - mu) @ axes.T
    dirs = torch.nn.functional.normalize(W_dec.detach().double().cpu(), dim=-1) @ axes.T
    return rows, dirs


def decoder_alignment(W_pos: Float[Tensor, "n_ctx d_model"], W_dec: Float[Tensor, "k d_model"],
                      peaks: Int[Tensor, " k"], last: int, first: int = 1) -> pd.DataFrame:
    """Return per decoder row: its cosine with the centred W_pos row at its peak, and the position (< last) it is closest to.

    Rows are centred on the mean of W_pos[first:last]; ``best_position`` is the argmax of the cosine over all
    positions 0..last-1 and ``rank`` is the peak's rank in that ordering (0 = the peak is the closest row).
    """
    mu, _, _ = wpos_frame_pca(W_pos, first, last)
    rows = torch.nn.functional.normalize(W_pos.detach().double().cpu()[:last] - mu, dim=-1)
    dirs = torch.nn.functional.normalize(W_dec.detach().double().cpu(), dim=-1)
    cos = dirs @ rows.T  # (k, last)
    peaks = peaks.long().cpu()
    at_peak = cos.gather(1, peaks[:, None]).squeeze(1)
    rank = (cos > at_peak[:, None]).sum(1)
    return pd.DataFrame({"peak_position": peaks.numpy(), "cos_at_peak": at_peak.numpy(),
                         "best_position": cos.argmax(1).numpy(), "best_cos": cos.amax(1).numpy(),
                         "rank_of_peak": rank.numpy()})


def decoder_input_cosine(W_dec: Float[Tensor, "k d_model"], x: Float[Tensor, " d_model"],
                         b_dec: Float[Tensor, " d_model"] | None = None) -> Float[Tensor, " k"]:
    """Return each decoder row's cosine with the part x - b_dec of one input that the features must write."""
    target = x.detach().double().cpu() - (0.0 if b_dec is None else b_dec.detach().double().cpu())
    return torch.nn.functional.cosine_similarity(W_dec.detach().double().cpu(), target[None], dim=-1)


# ----------------------------------------------------------------------------------------------
# Positional neurons of an MLP on real text
# ----------------------------------------------------------------------------------------------


@dataclass
class PositionMoments:
    """Per-position count, sum and sum of squares (float64, CPU) of a set of units' activations."""

    n: Float[Tensor, " n_pos"]
    s1: Float[Tensor, "n_pos d"]
    s2: Float[Tensor, "n_pos d"]

    @classmethod
    def empty(cls, n_pos: int, d: int) -> PositionMoments:
        """Return zeroed accumulators for n_pos positions and d units."""
        z = dict(dtype=torch.float64)
        return cls(torch.zeros(n_pos, **z), torch.zeros(n_pos, d, **z), torch.zeros(n_pos, d, **z))

    def add(self, acts: Float[Tensor, "batch pos d"]) -> PositionMoments:
        """Return self after adding a batch of activations whose second axis is the position 0..pos-1."""
        if acts.ndim != 3 or acts.shape[2] != self.s1.shape[1] or acts.shape[1] > self.n.shape[0]:
            raise ValueError(f"acts must be (batch, pos <= {self.n.shape[0]}, {self.s1.shape[1]}); got {tuple(acts.shape)}.")
        a = acts.detach().double()
        P = a.shape[1]
        self.n[:P] += a.shape[0]
        self.s1[:P] += a.sum(0).cpu()
        self.s2[:P] += a.pow(2).sum(0).cpu()
        return self

    def mean(self) -> Float[Tensor, "n_pos d"]:
        """Return the mean activation at each position (NaN where no sample was seen)."""
        return self.s1 / self.n[:, None]

    def std(self) -> Float[Tensor, "n_pos d"]:
        """Return the (population) standard deviation at each position (NaN where no sample was seen)."""
        return (self.s2 / self.n[:, None] - self.mean() ** 2).clamp(min=0.0).sqrt()


def positional_share(m: PositionMoments, first: int = 1, last: int | None = None) -> Float[Tensor, " d"]:
    """Return per unit the between-position sum of squares over the total one (eta^2), positions first..last-1.

    0 where the unit's total variance is (numerically) 0.
    """
    n, s1, s2 = m.n[first:last], m.s1[first:last], m.s2[first:last]
    if float(n.sum()) == 0 or bool((n == 0).any()):
        raise ValueError("every position in the range needs at least one sample.")
    N = n.sum()
    grand = s1.sum(0) / N
    ss_total = s2.sum(0) - N * grand**2
    ss_between = (s1**2 / n[:, None]).sum(0) - N * grand**2
    ok = ss_total > ZERO_VAR_RTOL * s2.sum(0).clamp(min=1e-300)
    share = torch.where(ok, ss_between / torch.where(ok, ss_total, torch.ones_like(ss_total)), torch.zeros_like(ss_total))
    return share.clamp(0.0, 1.0)


def chance_share(n_positions: int, n_samples: int) -> float:
    """Return the expected between/total share of a unit with no positional dependence: (P - 1) / (N - 1)."""
    if n_positions < 1 or n_samples <= n_positions:
        raise ValueError(f"need n_samples > n_positions >= 1; got {n_samples}, {n_positions}.")
    return (n_positions - 1) / (n_samples - 1)


@torch.no_grad()
def mlp_position_moments(model, tokens: Int[Tensor, "n_windows pos"], layer: int = 0, batch_size: int = 16,
                         hook: str = "mlp.hook_post", progress: bool | None = None) -> PositionMoments:
    """Return the per-position moments of every neuron at blocks.{layer}.{hook} over the token windows."""
    name = f"blocks.{layer}.{hook}"
    if name not in model.hook_dict:
        raise ValueError(f"{name!r} is not a hook of this model.")
    moments: PositionMoments | None = None
    dev = model.cfg.device
    for i in tqdm(range(0, len(tokens), batch_size), desc=f"{name} moments", disable=progress is False, leave=False):
        _, cache = model.run_with_cache(tokens[i:i + batch_size].to(dev), names_filter=name, stop_at_layer=layer + 1)
        acts = cache[name]
        if moments is None:
            moments = PositionMoments.empty(tokens.shape[1], acts.shape[-1])
        moments.add(acts)
    if moments is None:
        raise ValueError("tokens is empty: pass at least one window.")
    return moments


def neuron_profile_frame(m: PositionMoments, neurons: Int[Tensor, " k"], first: int = 0) -> pd.DataFrame:
    """Return one row per (neuron, position >= first): mean and std of its activation there."""
    mean, std = m.mean(), m.std()
    pos = torch.arange(first, m.n.shape[0])
    return pd.concat([pd.DataFrame({"neuron": int(i), "position": pos.numpy(), "mean": mean[first:, i].numpy(),
                                    "std": std[first:, i].numpy()}) for i in neurons.tolist()], ignore_index=True)


# ----------------------------------------------------------------------------------------------
# The width sweep
# ----------------------------------------------------------------------------------------------


def sweep_row(stats: Layer0Stats, context_size: int | None = None, threshold: float = POSITIONAL_R2) -> dict:
    """Return one SAE's positional summary: d_sae, positional features, distinct peaks, mean/median peak width."""
    mask = positional_features(stats, context_size, threshold)
    width = peak_width(stats, context_size)[mask].double()
    peaks = peak_positions(stats, context_size)[mask]
    n = int(mask.sum())
    return {"d_sae": stats.d_sae, "positional": n, "share": n / stats.d_sae,
            "distinct_peaks": int(peaks.unique().numel()),
            "mean_peak_width": float(width.mean()) if n else float("nan"),
            "median_peak_width": float(width.median()) if n else float("nan")}


def width_sweep_frame(model, saes: dict, threshold: float = POSITIONAL_R2, progress: bool | None = None) -> pd.DataFrame:
    """Return sweep_row for each named layer-0 SAE (exact stats over its own context), sorted by d_sae."""
    rows = []
    for sid, sae in tqdm(saes.items(), desc="width sweep", disable=progress is False, leave=False):
        C = min(sae.cfg.metadata.context_size or model.cfg.n_ctx, model.cfg.n_ctx)
        stats = layer0_stats_from_model(model, sae, positions=range(C), progress=False)
        rows.append({"sae_id": sid, "context_size": C, **sweep_row(stats, None, threshold)})
    return pd.DataFrame(rows).sort_values("d_sae").set_index("sae_id")


def loglog_fit(x, y) -> dict[str, float]:
    """Return {'slope', 'intercept', 'r2', 'n'} of the least-squares line log y = intercept + slope log x.

    Only points where both are > 0 and finite count; slope, intercept and r2 are NaN with fewer than 2 distinct x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    nan = float("nan")
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return {"slope": nan, "intercept": nan, "r2": nan, "n": int(ok.sum())}
    lx, ly = np.log(x[ok]), np.log(y[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    ss_res = float(((ly - intercept - slope * lx) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "n": int(ok.sum())}


# ----------------------------------------------------------------------------------------------
# The positional part of the pre-activation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def preact_profile_frame(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae,
                         features: Int[Tensor, " k"], device: str | torch.device | None = None) -> pd.DataFrame:
    """Return one row per (feature, position): the positional part c_i(p) and the token part's range.

    With ``h_i(t, p) = a_i(t) + c_i(p)`` (:func:`possae.layer0_stats.encoder_parts`), feature i fires at p on the
    tokens with ``a_i(t) > thr_i - c_i(p)``: on some token iff ``c_i(p) > fire_some = thr_i - max_t a_i(t)``, on every
    token iff ``c_i(p) > fire_all = thr_i - min_t a_i(t)``.
    """
    dev = default_device(device)
    idx = features.long().cpu()
    s, W_enc, c, thr = encoder_parts(W_pos.detach(), sae, dev)
    a = (W_E.detach().to(dev, W_enc.dtype) * s) @ W_enc[:, idx.to(dev)]
    a = a.double().cpu()
    c, thr = c[:, idx.to(dev)].cpu(), thr[idx.to(dev)].cpu()
    pos = torch.arange(W_pos.shape[0])
    return pd.concat([pd.DataFrame({"feature": int(f), "position": pos.numpy(), "preact_pos": c[:, j].numpy(),
                                    "fire_some": float(thr[j] - a[:, j].max()), "fire_all": float(thr[j] - a[:, j].min())})
                      for j, f in enumerate(idx.tolist())], ignore_index=True)


def bos_slot_sentence(cos_to_wpos0: Float[Tensor, " k"], cos_to_bos_input: Float[Tensor, " k"]) -> str:
    """Return the sentence comparing position-0 features' decoders with W_pos[0] and with the BOS input (or saying there are none)."""
    if len(cos_to_wpos0) == 0:
        return ("No positional feature peaks at position 0 here, so none of them specialises in the BOS slot, the one "
                "input the SAE saw there in training.")
    return (f"Features peaking at position 0 are different: their mean cosine with the centred `W_pos[0]` is only "
            f"{float(cos_to_wpos0.mean()):.3f}, but with the one input they saw there in training, the BOS token's "
            f"`W_E[BOS] + W_pos[0] - b_dec`, it is {float(cos_to_bos_input.mean()):.3f}. They reconstruct the BOS input "
            "as a whole; that they also fire on other tokens at position 0 (which training never showed them) is what "
            "makes them look positional over the all-token distribution.")
