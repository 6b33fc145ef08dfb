"""Positional features of layer-0 SAEs: which features are positional, where they peak, their profiles.

Everything the positional-features chapter shows comes from :func:`analyze`. The one count of positional features
(cited by this chapter and by the semantic one) is :func:`count_positional` over :func:`context_stats`: exact
layer-0 statistics over the positions inside the SAE's context, :func:`possae.hooks.in_context_positions`
(1..C-1; position 0 is the BOS slot, discussed apart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from possae.devices import default_device
from possae.hooks import act_name, in_context_positions, require_layer0, sae_context_size
from possae.layer0_stats import Layer0Stats, encoder_parts, layer0_stats_from_model
from possae.metrics import PositionSums, r2_pos
from possae.neuronpedia import FeaturePages
from possae.params import Layer0Params, ParameterError
from possae.progress import tqdm
from possae.thresholds import NEAR_0, NEAR_1
from possae.wpos import norm_ratio, pc_winding, pca, winding_word

POSITIONAL_R2 = 0.5  # a feature is positional if position explains at least this share of its variance
PEAK_RANGE_EDGES = (8,)  # the in-context positions are grouped at these edges: 1..7 and 8..C-1
THRESHOLD_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)  # thresholds of the count table (the chapter's own is added)
SCATTER_POINTS = 5000  # at most this many features in the R²_tok vs R²_pos scatter
DASH = "—"  # a table cell with no value


@dataclass(frozen=True)
class PositionalParams(Layer0Params):
    """Parameters of the positional-features chapter."""

    threshold: float = POSITIONAL_R2  # a feature (or MLP neuron) is positional if position explains this share
    n_heldout_tokens: int = 16384  # held-out text tokens per corpus, for the MLP neurons
    width_sweep_release: str = "organism-gpt2pos"  # release of the width sweep's SAEs
    width_sweep_ids: tuple[str, ...] = ("relu-short-8x", "relu-short-16x", "relu-short", "relu-short-64x")
    top_k: int = 8  # positional features whose profiles are shown

    def validate(self) -> None:
        """Raise ParameterError on a threshold outside [0, 1] or non-positive sample sizes."""
        if not 0.0 <= self.threshold <= 1.0:
            raise ParameterError(f"threshold is a share of variance and must lie in [0, 1]; got {self.threshold}.")
        if self.n_heldout_tokens < 1:
            raise ParameterError(f"n_heldout_tokens must be >= 1; got {self.n_heldout_tokens}.")
        if self.top_k < 1:
            raise ParameterError(f"top_k must be >= 1; got {self.top_k}.")


# ----------------------------------------------------------------------------------------------
# The one definition: exact statistics over the positions inside the context, and the count
# ----------------------------------------------------------------------------------------------


def context_stats(model, sae, device: str | torch.device | None = None, progress: bool | None = False) -> Layer0Stats:
    """Return exact layer-0 statistics of the SAE over every token at the positions inside its context (1..C-1)."""
    n_ctx = model.cfg.n_ctx
    positions = in_context_positions(sae_context_size(sae, n_ctx), n_ctx)
    return layer0_stats_from_model(model, sae, positions=positions, device=device, progress=progress)


def slot_stats(model, sae, device: str | torch.device | None = None, progress: bool | None = False) -> Layer0Stats:
    """Return exact layer-0 statistics over every token at positions 0..C-1: the context with the BOS slot."""
    C = sae_context_size(sae, model.cfg.n_ctx)
    return layer0_stats_from_model(model, sae, positions=range(C), device=device, progress=progress)


def _inside(stats: Layer0Stats, context_size: int | None) -> Bool[Tensor, " n_pos"]:
    """Return the mask of the stats' positions inside a context of context_size (in_context_positions: 1..C-1; all of
    the stats' positions when None), checked non-empty."""
    if context_size is None:
        return torch.ones_like(stats.positions, dtype=torch.bool)
    span = in_context_positions(context_size, max(context_size, int(stats.positions.max()) + 1))
    inside = (stats.positions >= span.start) & (stats.positions < span.stop)
    if not bool(inside.any()):
        raise ValueError(f"stats hold no position inside the context (positions {span.start}..{span.stop - 1}).")
    return inside


def r2_pos_inside(stats: Layer0Stats, context_size: int | None = None) -> Float[Tensor, " d_sae"]:
    """Return each feature's R2_pos over the stats' positions inside the context (1..C-1; None: all of them), exactly."""
    if context_size is None:
        return stats.r2_pos
    inside = _inside(stats, context_size)
    return r2_pos(stats.mean[inside], stats.std[inside] ** 2)


def fires_inside(stats: Layer0Stats, context_size: int | None = None) -> Bool[Tensor, " d_sae"]:
    """Return, per feature, whether it fires on any (token, position) input with a position inside the context (1..C-1)."""
    return stats.firing_rate[_inside(stats, context_size)].amax(0) > 0


def positional_features(stats: Layer0Stats, context_size: int | None = None,
                        threshold: float = POSITIONAL_R2) -> Bool[Tensor, " d_sae"]:
    """Return the mask of positional features: R2_pos >= threshold and firing somewhere, positions < context_size.

    Pass :func:`context_stats` (positions 1..C-1) for the book's one count.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a share of variance and must lie in [0, 1]; got {threshold}.")
    return (r2_pos_inside(stats, context_size) >= threshold) & fires_inside(stats, context_size)


def count_positional(stats: Layer0Stats, threshold: float = POSITIONAL_R2) -> int:
    """Return the number of positional features over all the stats' positions (the book's count on context_stats)."""
    return int(positional_features(stats, None, threshold).sum())


def peak_positions(stats: Layer0Stats, context_size: int | None = None) -> Int[Tensor, " d_sae"]:
    """Return, per feature, the position < context_size (None: any) of its largest mean activation over all tokens."""
    inside = _inside(stats, context_size)
    return stats.positions[inside][stats.mean[inside].argmax(0)]


def peak_width(stats: Layer0Stats, context_size: int | None = None, level: float = 0.5) -> Int[Tensor, " d_sae"]:
    """Return, per feature, the number of positions < context_size whose mean activation is >= level x its maximum.

    0 for a feature whose mean activation is 0 at every such position (it never fires there).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must lie in (0, 1]; got {level}.")
    m = stats.mean[_inside(stats, context_size)]
    top = m.amax(0)
    return ((m >= level * top) & (top > 0)).sum(0)


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
    if len(features) == 0:
        return pd.DataFrame(columns=["position", "mean", "std", "firing_rate", "mean_preact", "feature"])
    return pd.concat([stats.position_frame(int(i)).reset_index().assign(feature=int(i)) for i in features],
                     ignore_index=True)


def profile_window(mean: Float[Tensor, " n_pos"], minimum: int = 16, level: float = 0.1) -> int:
    """Return the last position a profile panel shows: twice the last position with mean >= level x max, >= minimum.

    Clamped to the profile's last position, so that a peak at the first positions is not a sliver of the panel.
    """
    n = mean.shape[0]
    top = float(mean.max())
    active = (mean >= level * top).nonzero().squeeze(1) if top > 0 else torch.zeros(0, dtype=torch.long)
    last = int(active.max()) if len(active) else 0
    return min(n - 1, max(minimum - 1, 2 * last + 1))


# ----------------------------------------------------------------------------------------------
# Scores of every feature (exact, from Layer0Stats)
# ----------------------------------------------------------------------------------------------


def feature_scores(stats: Layer0Stats, context_size: int | None = None) -> pd.DataFrame:
    """Return one row per feature: r2_pos, r2_tok, their interaction remainder, peak position and width, firing rates.

    ``r2_tok`` (and so ``interaction = 1 - r2_pos - r2_tok``) is the stats' own, over the positions they were computed
    on: pass :func:`context_stats` for numbers that all refer to the context.
    """
    r2 = r2_pos_inside(stats, context_size)
    inside = _inside(stats, context_size)
    return pd.DataFrame(
        {
            "r2_pos": r2.numpy(),
            "r2_tok": stats.r2_tok.numpy(),
            "interaction": (1.0 - r2 - stats.r2_tok).clamp(min=0.0).numpy(),
            "peak_position": peak_positions(stats, context_size).numpy(),
            "peak_width": peak_width(stats, context_size).numpy(),
            "max_mean": stats.mean[inside].amax(0).numpy(),
            "firing_rate": stats.firing_rate[inside].mean(0).numpy(),
            "max_firing_rate": stats.firing_rate[inside].amax(0).numpy(),
        },
        index=pd.RangeIndex(stats.d_sae, name="feature"),
    )


def threshold_counts(r2: Float[Tensor, " d_sae"], fires: Bool[Tensor, " d_sae"],
                     thresholds: tuple[float, ...] = THRESHOLD_GRID) -> pd.DataFrame:
    """Return, per threshold, how many (and what share of the) firing features have R2_pos >= threshold."""
    n_live = int(fires.sum())
    rows = [{"threshold": t, "features": int(((r2 >= t) & fires).sum()),
             "share of live features": int(((r2 >= t) & fires).sum()) / max(n_live, 1)} for t in thresholds]
    return pd.DataFrame(rows).set_index("threshold")


def r2_extremes(r2: Float[Tensor, " d_sae"], fires: Bool[Tensor, " d_sae"], low: float = NEAR_0,
                high: float = NEAR_1) -> dict[str, float]:
    """Return the shares of firing features with r2 < low ('near_0') and r2 > high ('near_1'), and their count."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1; got low={low}, high={high}.")
    live = r2[fires]
    n = max(int(live.numel()), 1)
    return {"near_0": int((live < low).sum()) / n, "near_1": int((live > high).sum()) / n,
            "n_live": int(live.numel())}


def scatter_sample(n: int, max_points: int = SCATTER_POINTS, keep: Bool[Tensor, " n"] | None = None,
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


def range_label(lo: int, hi: int) -> str:
    """Return the label of the positions lo..hi (inclusive): '3' or '1-7'."""
    return f"{lo}" if hi == lo else f"{lo}-{hi}"


def peak_range_frame(peaks: Int[Tensor, " k"], positions: range, edges: tuple[int, ...] = PEAK_RANGE_EDGES) -> pd.DataFrame:
    """Return, per group of the positions split at the edges (those inside them), its label, features and coverage."""
    lo, stop = positions.start, positions.stop
    bounds = [lo, *sorted({e for e in edges if lo < e < stop}), stop]
    hist = peak_histogram(peaks, stop)
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = int(hist[a:b].sum())
        rows.append({"positions": range_label(a, b - 1), "first": a, "last": b - 1, "n_positions": b - a,
                     "features": n, "features_per_position": n / (b - a),
                     "positions_with_a_feature": int((hist[a:b] > 0).sum())})
    return pd.DataFrame(rows)


EARLY_SHARE = 1 / 8  # "early" positions: the first eighth of the context's positions 1..C-1 (1..16 at C = 128)


def coverage(scores: pd.DataFrame, positional: Bool[Tensor, " d_sae"], positions: range,
             early_share: float = EARLY_SHARE) -> dict[str, float]:
    """Return how the positional features cover the context: distinct peak positions (of the positions 1..C-1),
    single-position features (peak width 1) and those among them peaking early, and whether early features fire more
    strongly (mean activation at the peak, early against later; Spearman's rho of that against the peak position)."""
    from scipy.stats import spearmanr

    f = scores[positional.numpy()]
    early_last = positions.start + max(1, round(len(positions) * early_share)) - 1
    early = f["peak_position"] <= early_last
    rho, p = spearmanr(f["peak_position"], f["max_mean"]) if len(f) > 2 and f["peak_position"].nunique() > 1 and f["max_mean"].nunique() > 1 else (float("nan"),) * 2
    return {"n_features": len(f), "n_positions": len(positions), "peak_positions": int(f["peak_position"].nunique()),
            "early_first": positions.start, "early_last": early_last, "single": int((f["peak_width"] == 1).sum()),
            "single_early": int(((f["peak_width"] == 1) & early).sum()),
            "early_features": int(early.sum()), "early_max_mean": float(f.loc[early, "max_mean"].mean()) if early.any() else float("nan"),
            "later_max_mean": float(f.loc[~early, "max_mean"].mean()) if (~early).any() else float("nan"),
            "rho_peak_strength": float(rho), "p_peak_strength": float(p)}


def coverage_sentence(c: dict[str, float]) -> str:
    """Return the sentence on how many positions the positional features tile, their single-position features, and
    whether early ones fire more strongly."""
    if c["n_features"] == 0:
        return "No feature is positional, so no position has one."
    text = (f"The {c['n_features']} positional features peak at {c['peak_positions']} distinct positions of the "
            f"{c['n_positions']} in the context ({c['peak_positions'] / c['n_positions']:.0%}). {c['single']} of them are "
            f"single-position features (peak width 1), {c['single_early']} of those at the early positions "
            f"{c['early_first']}..{c['early_last']}.")
    if c["early_features"] and c["n_features"] > c["early_features"]:
        text += (f" Features peaking early fire {c['early_max_mean'] / c['later_max_mean']:.2f} times as strongly at their "
                 f"peak as later ones (mean activation {c['early_max_mean']:.3g} against {c['later_max_mean']:.3g}; "
                 f"Spearman's rho of peak strength against peak position {c['rho_peak_strength']:.2f}, p = "
                 f"{c['p_peak_strength']:.2g}).")
    else:
        text += " Early and later features cannot be compared: one of the two groups is empty."
    return text


COMPARISON_SAE = "relu-short"  # each organism's 32x ReLU SAE on a short context: the one set beside the chapter's


def coverage_row(model, context_size: int, cov: dict[str, float], sae_label: str) -> dict[str, object]:
    """Return one row of the geometry-and-coverage table: the model's W_pos over rows 1..C-1 (turns, loudness against
    W_E) and how many of those positions the SAE's positional features peak at."""
    W_pos = model.W_pos.detach()[:context_size]
    return {"model": model.cfg.model_name, "SAE": sae_label, "context C": context_size,
            "W_pos turns (rows 1..C-1)": pc_winding(W_pos[1:], 2)["turns"],
            "‖W_pos‖ / ‖W_E‖": norm_ratio(W_pos, model.W_E), "positional features": cov["n_features"],
            "positions 1..C-1": cov["n_positions"], "positions with a peak": cov["peak_positions"],
            "share of positions": cov["peak_positions"] / cov["n_positions"],
            "single-position features": cov["single"]}


def other_organism_row(model, threshold: float, device: str | torch.device | None = None) -> dict[str, object] | None:
    """Return the other organism's row of the geometry-and-coverage table (its COMPARISON_SAE), or None when the model
    is not one of possae's layer-0 organisms."""
    from possae.loaders import MODEL_NAMES, load_model, load_sae
    from possae.sae_files import OTHER_ORGANISM

    other = OTHER_ORGANISM.get(MODEL_NAMES.get(model.cfg.model_name))
    if other is None:
        return None
    m, sae = load_model(other, device="cpu"), load_sae(other, COMPARISON_SAE, device="cpu")
    stats = context_stats(m, sae, device=device)
    C = sae_context_size(sae, m.cfg.n_ctx)
    cov = coverage(feature_scores(stats), positional_features(stats, None, threshold), in_context_positions(C, m.cfg.n_ctx))
    return coverage_row(m, C, cov, f"{other}/{COMPARISON_SAE}")


def geometry_coverage_sentence(table: pd.DataFrame) -> str:
    """Return the sentence that sets the two organisms' W_pos winding and positional coverage side by side (or says
    there is no second organism), naming what else differs between them."""
    if len(table) < 2:
        return "This model is not one of possae's organisms, so there is no second organism to set beside it."
    a, b = table.iloc[0], table.iloc[1]

    def part(r) -> str:
        return (f"{r['model']}'s W_pos is {winding_word(r['W_pos turns (rows 1..C-1)'])} over rows 1..{r['context C'] - 1}, "
                f"and the {r['positional features']} positional features of {r['SAE']} peak at "
                f"{r['positions with a peak']} of those {r['positions 1..C-1']} positions ({r['share of positions']:.0%})")

    ta, tb = a["W_pos turns (rows 1..C-1)"], b["W_pos turns (rows 1..C-1)"]
    ra, rb = a["‖W_pos‖ / ‖W_E‖"], b["‖W_pos‖ / ‖W_E‖"]
    shape = ("Over the positions their SAEs see, both curves are arcs: a helix's turns, where a W_pos has them, lie "
             "beyond these contexts, so the turns cannot be what separates the two here."
             if max(ta, tb) < 1 else
             f"Over the positions their SAEs see, the curves wind {ta:.2f} and {tb:.2f} turns.")
    return (f"{part(a)}; {part(b)}. {shape} Position's loudness differs more: W_pos's rows are {ra:.2f} and {rb:.2f} "
            f"times as long as a token embedding. That loudness, rather than the curve, sets how many positions get "
            f"features is a conjecture: the two organisms also differ in context ({a['context C']} and "
            f"{b['context C']} positions) and in training, and this table cannot separate the causes.")


def range_sentence(ranges: pd.DataFrame) -> str:
    """Return the sentence saying how many positional features peak in each group of positions, and which gets more."""
    parts = [f"{r.features} at positions {r.positions} ({r.features_per_position:.2f} per position, covering "
             f"{r.positions_with_a_feature} of those {r.n_positions} positions)"
             if r.n_positions > 1 else f"{r.features} at position {r.positions}" for r in ranges.itertuples()]
    parts[0] = parts[0].replace(" at ", " peak at ", 1)
    text = "Of the positional features, " + (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1] + "."
    if len(ranges) < 2 or int(ranges["features"].sum()) == 0:
        return text
    dense = ranges["features_per_position"].to_numpy()
    if dense[0] > dense[1:].max():
        return text + f" The earliest positions, {ranges['positions'].iloc[0]}, get the most features per position."
    if dense[0] < dense[1:].max():
        return text + (f" The early positions {ranges['positions'].iloc[0]} get fewer features per position than the "
                       "later ones.")
    return text + " Every group gets as many features per position."


def norm_sentence(norm_first: float, norm_last: float, token_norm: float, first: int, last: int) -> str:
    """Return the sentence comparing the norm of W_pos at the first and last context positions with the token norm."""
    trend = ("falls" if norm_last < norm_first else "rises" if norm_last > norm_first else "stays")
    text = (f"The norm of W_pos[p] {trend} from {norm_first:.2f} at position {first} to {norm_last:.2f} at the last "
            f"context position, {last}, against a mean token-embedding norm of {token_norm:.2f}")
    if norm_last < token_norm and norm_last < norm_first:
        return text + (": late positions move the input less than the token does. A conjecture, not tested here: "
                       "that makes them cheaper to leave to the decoder bias and the token features.")
    return text + "."


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
    """Return per decoder row: its cosine with the centred W_pos row at its peak, and the row first..last-1 closest to it.

    Rows are centred on the mean of W_pos[first:last]; ``best_position`` is the argmax of the cosine over positions
    first..last-1 and ``rank_of_peak`` the peak's rank in that ordering (0 = the peak is the closest row).
    """
    mu, _, _ = wpos_frame_pca(W_pos, first, last)
    rows = torch.nn.functional.normalize(W_pos.detach().double().cpu()[:last] - mu, dim=-1)
    dirs = torch.nn.functional.normalize(W_dec.detach().double().cpu(), dim=-1)
    cos = dirs @ rows.T  # (k, last)
    peaks = peaks.long().cpu()
    at_peak = cos.gather(1, peaks[:, None]).squeeze(1)
    cand = cos[:, first:]
    rank = (cand > at_peak[:, None]).sum(1)
    return pd.DataFrame({"peak_position": peaks.numpy(), "cos_at_peak": at_peak.numpy(),
                         "best_position": (cand.argmax(1) + first).numpy(), "best_cos": cand.amax(1).numpy(),
                         "rank_of_peak": rank.numpy()})


def decoder_input_cosine(W_dec: Float[Tensor, "k d_model"], x: Float[Tensor, " d_model"],
                         b_dec: Float[Tensor, " d_model"] | None = None) -> Float[Tensor, " k"]:
    """Return each decoder row's cosine with the part x - b_dec of one input that the features must write."""
    target = x.detach().double().cpu() - (0.0 if b_dec is None else b_dec.detach().double().cpu())
    return torch.nn.functional.cosine_similarity(W_dec.detach().double().cpu(), target[None], dim=-1)


def alignment_sentence(align: pd.DataFrame) -> str:
    """Return the sentence on how well the positional features' decoders point along their peak's W_pos row."""
    if len(align) == 0:
        return "There is no positional feature, so no decoder direction to compare with W_pos."
    cos, closest = float(align["cos_at_peak"].mean()), float((align["rank_of_peak"] == 0).mean())
    return (f"For the {len(align)} positional features, the decoder direction has a mean cosine of {cos:.3f} with the "
            f"centred W_pos row at the feature's peak, and for {closest:.0%} of them that row is the closest of all "
            "the context's rows.")


def bos_slot_sentence(cos_to_wpos0: Float[Tensor, " k"], cos_to_bos_input: Float[Tensor, " k"],
                      threshold: float = POSITIONAL_R2, last: int | None = None) -> str:
    """Return the sentence on the BOS-slot features (positional over 0..C-1, peaking at 0): their decoders' cosines."""
    span = "positions 0 to the context's end" if last is None else f"positions 0-{last}"
    if len(cos_to_wpos0) == 0:
        return (f"No feature has R²_pos ≥ {threshold:g} over {span} with its peak at position 0, so none specialises "
                "in the BOS slot, the one input the SAE saw there in training.")
    n = len(cos_to_wpos0)
    return (f"{n} feature{'s' if n > 1 else ''} would look positional if position 0 counted too (R²_pos ≥ "
            f"{threshold:g} over {span}, peak at position 0): the BOS slot. Their decoders' mean cosine with the "
            f"centred W_pos[0] is only {float(cos_to_wpos0.mean()):.3f}, but with the one input they saw there in "
            f"training, the BOS token's W_E[BOS] + W_pos[0] - b_dec, it is {float(cos_to_bos_input.mean()):.3f}. They "
            "reconstruct the BOS input as a whole; that they also fire on other tokens at position 0 (which training "
            "never showed them) is what makes them look positional over the all-token distribution.")


# ----------------------------------------------------------------------------------------------
# Positional neurons of an MLP on real text
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def mlp_position_sums(model, tokens: Int[Tensor, "n_windows pos"], layer: int = 0, batch_size: int = 16,
                      hook: str = "mlp_post", progress: bool | None = None) -> PositionSums:
    """Return per-position sums of every neuron's activation ('act') and its square ('act2') at act_name(hook, layer)."""
    name = act_name(hook, layer)
    if name not in model.hook_dict:
        raise ValueError(f"{name!r} is not a hook of this model.")
    if len(tokens) == 0:
        raise ValueError("tokens is empty: pass at least one window.")
    sums = PositionSums.empty(tokens.shape[1])
    dev = model.cfg.device
    for i in tqdm(range(0, len(tokens), batch_size), desc=f"{name} sums", disable=progress is False, leave=False):
        _, cache = model.run_with_cache(tokens[i:i + batch_size].to(dev), names_filter=name, stop_at_layer=layer + 1)
        acts = cache[name].double()
        sums.add_windows(act=acts, act2=acts.pow(2))
    return sums


def _rows(sums: PositionSums, positions: range) -> list[int]:
    """Return the positions as a list, checked to lie in the sums and to hold at least one sample each."""
    idx = list(positions)
    if not idx or idx[0] < 0 or idx[-1] >= sums.n_pos or bool((sums.n[idx] == 0).any()):
        raise ValueError(f"every position of {positions} needs at least one sample (sums hold {sums.n_pos} positions).")
    return idx


def neuron_r2_pos(sums: PositionSums, positions: range) -> Float[Tensor, " d"]:
    """Return each neuron's R2_pos over the given positions (eta^2 = SS_between / SS_total, positions weighted by counts)."""
    idx = _rows(sums, positions)
    mean = sums.mean("act")[idx]
    var = (sums.mean("act2")[idx] - mean**2).clamp(min=0.0)
    return r2_pos(mean, var, weights=sums.n[idx])


def chance_share(n_positions: int, n_samples: int) -> float:
    """Return the expected R2_pos (eta^2) of a unit with no positional dependence: (P - 1) / (N - 1)."""
    if n_positions < 1 or n_samples <= n_positions:
        raise ValueError(f"need n_samples > n_positions >= 1; got {n_samples}, {n_positions}.")
    return (n_positions - 1) / (n_samples - 1)


def neuron_profile_frame(sums: PositionSums, neurons: Int[Tensor, " k"], positions: range) -> pd.DataFrame:
    """Return one row per (neuron, position): mean and std of its activation there."""
    idx = _rows(sums, positions)
    mean = sums.mean("act")[idx]
    std = (sums.mean("act2")[idx] - mean**2).clamp(min=0.0).sqrt()
    return pd.concat([pd.DataFrame({"neuron": int(i), "position": idx, "mean": mean[:, i].numpy(),
                                    "std": std[:, i].numpy()}) for i in neurons.tolist()], ignore_index=True)


# ----------------------------------------------------------------------------------------------
# The width sweep
# ----------------------------------------------------------------------------------------------


def sweep_row(stats: Layer0Stats, context_size: int | None = None, threshold: float = POSITIONAL_R2) -> dict:
    """Return one SAE's positional summary: d_sae, positional features, their share, distinct peaks, mean peak width."""
    mask = positional_features(stats, context_size, threshold)
    width = peak_width(stats, context_size)[mask].double()
    peaks = peak_positions(stats, context_size)[mask]
    n = int(mask.sum())
    return {"d_sae": stats.d_sae, "positional": n, "share": n / stats.d_sae,
            "distinct_peaks": int(peaks.unique().numel()),
            "mean_peak_width": float(width.mean()) if n else float("nan")}


def width_sweep_frame(model, saes: dict, threshold: float = POSITIONAL_R2, progress: bool | None = None,
                      device: str | torch.device | None = None, known: dict[str, Layer0Stats] | None = None) -> pd.DataFrame:
    """Return sweep_row for each named layer-0 SAE (exact stats inside its own context), sorted by d_sae; `known`:
    context_stats already computed, by sae_id (the chapter's own SAE)."""
    rows = []
    for sid, sae in tqdm(saes.items(), desc="width sweep", disable=progress is False, leave=False):
        stats = (known or {}).get(sid) or context_stats(model, sae, device=device)
        rows.append({"sae_id": sid, "context_size": sae_context_size(sae, model.cfg.n_ctx),
                     **sweep_row(stats, None, threshold)})
    columns = ["sae_id", "context_size", "d_sae", "positional", "share", "distinct_peaks", "mean_peak_width"]
    return pd.DataFrame(rows, columns=columns).sort_values("d_sae").set_index("sae_id")


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


def change_phrase(a: float, b: float, fmt: str = "{:g}", unit: str = "") -> str:
    """Return 'stays at a' when a == b (as printed), else 'goes from a to b' (with an optional unit after the last)."""
    sa, sb = fmt.format(a), fmt.format(b)
    return f"stays at {sa}{unit}" if sa == sb else f"goes from {sa} to {sb}{unit}"


def sweep_sentence(sweep: pd.DataFrame, fit: dict[str, float], peaks_fit: dict[str, float]) -> str:
    """Return the paragraph describing the width sweep: the power-law fit, the counts, peaks, widths and a verdict."""
    if len(sweep) == 0:
        return ("No width sweep on this profile: no family of SAEs that differ only in width was given "
                "(width_sweep_ids is empty), so this section has nothing to show.")
    first, last = sweep.iloc[0], sweep.iloc[-1]
    if len(sweep) == 1:
        return (f"The sweep holds one SAE only (d_sae = {int(first.d_sae)}, {int(first.positional)} positional "
                "features), so there is no trend across widths to describe.")
    counts = (f"Between d_sae = {int(first.d_sae)} and {int(last.d_sae)} ({len(sweep)} widths) the number of positional "
              f"features {change_phrase(first.positional, last.positional, '{:.0f}')}, and their share of the "
              f"dictionary {change_phrase(first.share, last.share, '{:.2%}')}")
    if not np.isfinite(fit["slope"]):
        return (f"{counts}. Fewer than two widths have positional features, so no power law is "
                "fitted and there is no trend to place.")
    quality = ("through its two points, so the fit itself tells nothing" if fit["n"] == 2
               else f"R² of the log-log fit {fit['r2']:.3f}, over {fit['n']} widths")
    text = (f"{counts}. A power law positional ∝ d_sae^k fits with k = {fit['slope']:.2f} "
            f"({quality}). The number of distinct peak positions "
            f"{change_phrase(first.distinct_peaks, last.distinct_peaks, '{:.0f}')}")
    if np.isfinite(first.mean_peak_width) and np.isfinite(last.mean_peak_width):
        text += f", and the mean peak width {change_phrase(first.mean_peak_width, last.mean_peak_width, '{:.2f}', ' positions')}"
    return text + ": " + sweep_verdict(fit["slope"], peaks_fit["slope"]) + "."


def sweep_verdict(slope: float, peaks_slope: float) -> str:
    """Return where the extra positional features of wider SAEs go, from the log-log slopes of counts and distinct peaks."""
    if not slope > 0:
        return "the count does not grow with the width, so there are no extra positional features to place"
    if np.isfinite(peaks_slope) and peaks_slope >= 0.5 * slope:
        return "the extra features spread to new positions"
    return "the extra features mostly pile onto positions that already have one rather than tiling new ones"


def sweep_summary(sweep: pd.DataFrame, fit: dict[str, float]) -> str:
    """Return the summary's one sentence on the width sweep."""
    if len(sweep) < 2:
        return "No sweep over SAE widths was run on this profile."
    if not np.isfinite(fit["slope"]):
        return "Across SAE widths, too few SAEs have positional features to fit a trend."
    return (f"Across {len(sweep)} SAE widths the number of positional features grows as d_sae^k, "
            f"k = {fit['slope']:.2f}." if fit["slope"] > 0 else
            f"Across {len(sweep)} SAE widths the number of positional features does not grow with d_sae "
            f"(log-log slope {fit['slope']:.2f}).")


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
    if len(features) == 0:
        return pd.DataFrame(columns=["feature", "position", "preact_pos", "fire_some", "fire_all"])
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


# ----------------------------------------------------------------------------------------------
# Sentences whose wording depends on the numbers
# ----------------------------------------------------------------------------------------------


def count_sentence(n_positional: int, n_half: int, d_sae: int, threshold: float) -> str:
    """Return the sentence on how the count of positional features moves when the threshold is halved."""
    head = (f"No feature reaches R²_pos ≥ {threshold:.2f} over the context"
            if n_positional == 0 else f"The count depends on the threshold (table)")
    text = f"{head}: halving it to {threshold / 2:.2f} admits {n_half} feature{'' if n_half == 1 else 's'}"
    if max(n_positional, n_half) / d_sae < 0.1:
        return text + ". Either way positional features are a small minority of the dictionary."
    return text + f", {n_half / d_sae:.1%} of the dictionary."


def top_lead(n_top: int) -> str:
    """Return the opening of the profile figure's caption, which says when there is no positional feature to show."""
    if n_top == 0:
        return "No feature is positional by the criterion above, so the figure has no panel. For a positional feature it shows"
    return (f"For the {n_top} most positional feature{'s' if n_top > 1 else ''} (at most two per peak position, so that "
            "different positions show), the figure shows")


def peak_width_sentence(widths: Int[Tensor, " k"]) -> str:
    """Return the sentence on the positional features' mean peak width and their share of single-position detectors."""
    if len(widths) == 0:
        return "With no positional feature there is no peak width to report."
    w = widths.double()
    return (f"The {len(w)} positional feature{'s have' if len(w) > 1 else ' has'} a mean peak width of "
            f"{float(w.mean()):.2f} positions, and {float((w == 1).double().mean()):.0%} of them are single-position "
            "detectors (width 1).")


def extremes_sentence(pos: dict[str, float], tok: dict[str, float], low: float = NEAR_0, high: float = NEAR_1) -> str:
    """Return the sentence comparing the shares of firing features with R²_pos and R²_tok near 0 and near 1."""
    lead = "Position explains almost nothing of most features: " if pos["near_0"] > 0.5 else ""
    text = (f"{lead}{pos['near_0']:.1%} of the firing features have R²_pos < {low:.2f} and {pos['near_1']:.1%} have "
            f"R²_pos > {high:.2f}, while {tok['near_1']:.1%} have R²_tok > {high:.2f} and {tok['near_0']:.1%} have "
            f"R²_tok < {low:.2f}.")
    if tok["near_1"] > pos["near_1"]:
        text += " Token identity alone explains nearly all the variance of more features than position does."
    return text


def interaction_sentence(mean_all: float, mean_positional: float | None) -> str:
    """Return the sentence on the mean interaction share, of all firing features and of the positional ones."""
    text = f"The interaction takes on average {mean_all:.1%} of a firing feature's variance"
    if mean_positional is None:
        return text + "; there is no positional feature to compare with."
    text += f", and {mean_positional:.1%} of a positional feature's"
    if mean_positional > 0.01:
        return text + (": even the most positional features fire on only part of the vocabulary away from their "
                       "peak, so which tokens carry them depends on both.")
    return text + "."


def neuron_context_sentence(context_size: int, n_ctx: int) -> str:
    """Return the sentence on the SAE's context as marked in the neuron profiles (or that it covers every position)."""
    if context_size < n_ctx:
        return (f"The dashed line in the profiles marks the end of the SAE's context ({context_size} positions), which "
                f"the model itself does not have: it was trained on all {n_ctx} positions.")
    return f"The SAE's context covers all {n_ctx} positions the model was trained on."


def slot_count_sentence(n_positional: int, n_with_slot: int) -> str:
    """Return the sentence on what counting position 0 (the BOS slot) too would do to the count."""
    if n_with_slot == n_positional:
        return "Counting position 0 as well would not change the count."
    return f"Counting position 0 as well would give {n_with_slot} instead."


def summary_peaks_sentence(ranges: pd.DataFrame, widths: Int[Tensor, " k"], align: pd.DataFrame) -> str:
    """Return the summary's sentence on where the positional features peak, how wide, and how their decoders align."""
    if len(widths) == 0:
        return "No feature is positional here, so there are no peaks to place."
    parts = [f"{r.features} at position{'s' if r.n_positions > 1 else ''} {r.positions}" for r in ranges.itertuples()]
    parts[0] = parts[0].replace(" at ", " peak at ", 1)
    where = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return (f"Of these, {where}. Their mean peak width is {float(widths.double().mean()):.2f} positions, and their "
            f"decoders have a mean cosine of {float(align['cos_at_peak'].mean()):.3f} with their peak's centred "
            "W_pos row.")


# ----------------------------------------------------------------------------------------------
# Tables for display
# ----------------------------------------------------------------------------------------------


def _pct(v: float) -> str:
    """Return a share as a percentage with two decimals."""
    return f"{v:.2%}"


def threshold_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Return the count table for display: features and share of live features per threshold."""
    return pd.DataFrame({"features": counts["features"].to_numpy(),
                         "share of live features": counts["share of live features"].map(_pct).to_numpy()},
                        index=pd.Index([f"{t:g}" for t in counts.index], name="R²_pos ≥"))


def top_table(scores: pd.DataFrame, features: Int[Tensor, " k"], pages: FeaturePages | None = None) -> pd.DataFrame:
    """Return the top positional features' scores for display (rounded, readable column names), indexed by feature id
    (an anchor to its Neuronpedia page when `pages` has one)."""
    d = scores.loc[features.tolist(), ["r2_pos", "r2_tok", "peak_position", "peak_width", "max_firing_rate"]]
    d = d.round(3).rename(columns={"r2_pos": "R²_pos", "r2_tok": "R²_tok", "peak_position": "peak position",
                                   "peak_width": "peak width", "max_firing_rate": "max firing rate"})
    return d if pages is None else pages.table(d)


def range_table(ranges: pd.DataFrame) -> pd.DataFrame:
    """Return the peak-range frame for display."""
    return pd.DataFrame({"features": ranges["features"].to_numpy(),
                         "features per position": ranges["features_per_position"].round(3).to_numpy(),
                         "positions with a feature": [f"{a} of {b}" for a, b in zip(ranges["positions_with_a_feature"],
                                                                                   ranges["n_positions"])]},
                        index=pd.Index(ranges["positions"], name="peak positions"))


def alignment_table(align: pd.DataFrame) -> pd.DataFrame:
    """Return, per peak position, the number of positional features, their mean cosine, and how often the peak is closest."""
    columns = ["features", "mean cosine at peak", "share with the peak's row closest"]
    if len(align) == 0:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="peak position"))
    g = align.groupby("peak_position")
    return pd.DataFrame({"features": g.size(), "mean cosine at peak": g["cos_at_peak"].mean().round(3),
                         "share with the peak's row closest": g["rank_of_peak"].apply(lambda r: _pct(float((r == 0).mean())))
                         }).rename_axis("peak position")


def extremes_table(pos: dict[str, float], tok: dict[str, float], low: float = NEAR_0, high: float = NEAR_1) -> pd.DataFrame:
    """Return the shares of firing features near 0 and near 1, for R²_pos and R²_tok."""
    return pd.DataFrame({f"share < {low:g}": [_pct(pos["near_0"]), _pct(tok["near_0"])],
                         f"share > {high:g}": [_pct(pos["near_1"]), _pct(tok["near_1"])],
                         "features that fire": [pos["n_live"], tok["n_live"]]}, index=["R²_pos", "R²_tok"])


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Return the width sweep for display (shares in percent, '—' where there is no peak width)."""
    return pd.DataFrame({"d_sae": sweep["d_sae"], "context": sweep["context_size"], "positional": sweep["positional"],
                         "share": sweep["share"].map(lambda v: f"{v:.2%}"),
                         "distinct peaks": sweep["distinct_peaks"],
                         "mean peak width": sweep["mean_peak_width"].map(lambda v: DASH if not np.isfinite(v) else f"{v:.2f}")},
                        index=sweep.index.rename("SAE"))


def gpu_bench_sentence(bench: pd.DataFrame) -> str:
    """Return what the recorded GPU run of the benchmark measured, or that none is recorded."""
    gpu = bench[bench["exact, statistics left on the GPU (s)"].notna()]
    if gpu.empty:
        return "No GPU run of the benchmark is recorded."
    g = gpu.iloc[0]
    left = g["exact, statistics left on the GPU (s)"]
    return (f"On the {g['device']}, brute force over {g['brute force timed on']} took {g['brute force (s)']:.1f} s. "
            f"The exact path took {left:.3f} s with its statistics left on the GPU, {left / g['matmul floor (s)']:.2f} "
            f"times its matmul ({g['matmul floor (s)']:.3f} s), and {g['exact (s)']:.2f} s when they were copied to "
            "newly allocated host memory, as the table's timing does: there the copy, not the computation, is the cost.")


def bench_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Return the recorded benchmark transposed (one column per device), numbers formatted."""
    fmt = lambda v: (DASH if isinstance(v, float) and not np.isfinite(v) else f"{v:,.3g}" if isinstance(v, float)  # noqa: E731
                     else f"{v:,}" if isinstance(v, int) else v)
    return bench.set_index("device").T.map(fmt)


# ----------------------------------------------------------------------------------------------
# The chapter's one call
# ----------------------------------------------------------------------------------------------


@dataclass
class Helix:
    """W_pos's in-context rows and the positional features' unit decoder rows on the rows' top-3 PCs."""

    rows: Float[Tensor, "n_rows 3"]
    row_positions: Int[Tensor, " n_rows"]
    dirs: Float[Tensor, "k 3"]
    features: Int[Tensor, " k"]
    peaks: Int[Tensor, " k"]
    shares: Float[Tensor, " 3"]


@dataclass
class Neurons:
    """The layer-0 MLP neurons' R²_pos on held-out text, the chance level, and the most positional neurons' profiles."""

    r2: Float[Tensor, " d_mlp"]
    chance: float
    n_tokens: int
    top: Int[Tensor, " k"]
    profiles: pd.DataFrame


@dataclass
class PositionalResult:
    """Everything the positional-features chapter shows."""

    params: PositionalParams
    context_size: int
    n_ctx: int
    d_vocab: int
    stats_seconds: float
    stats_path: str
    scores: pd.DataFrame  # one row per feature, over the positions inside the context
    positional: Bool[Tensor, " d_sae"]
    live: Bool[Tensor, " d_sae"]
    half: Bool[Tensor, " d_sae"]  # threshold/2 <= R²_pos < threshold, firing
    bos_slot: Bool[Tensor, " d_sae"]  # positional over 0..C-1 with the peak at position 0
    n_with_slot: int  # positional features if position 0 counted too
    counts: pd.DataFrame
    bench: pd.DataFrame
    top: Int[Tensor, " k"]
    profiles: pd.DataFrame  # positions 0..C-1
    preacts: pd.DataFrame
    windows: dict[int, int]  # per top feature, the last position its panel shows
    ranges: pd.DataFrame
    norms: dict[str, float]
    helix: Helix
    alignment: pd.DataFrame
    bos_cos_wpos0: Float[Tensor, " b"]
    bos_cos_input: Float[Tensor, " b"]
    ext_pos: dict[str, float]
    ext_tok: dict[str, float]
    scatter: pd.DataFrame  # sampled rows of scores, with a 'positional' column
    neurons: Neurons
    sweep: pd.DataFrame
    fit: dict[str, float]
    peaks_fit: dict[str, float]
    coverage: dict[str, float]  # how the positional features cover the context (see coverage)
    geometry_coverage: pd.DataFrame  # coverage_row of this SAE, and of the other organism's COMPARISON_SAE

    @property
    def d_sae(self) -> int:
        """Return the SAE's number of features."""
        return len(self.scores)

    @property
    def positions(self) -> range:
        """Return the positions inside the context: the ones every count covers."""
        return in_context_positions(self.context_size, self.n_ctx)

    @property
    def n_positional(self) -> int:
        """Return the number of positional features (the count the semantic chapter cites at the default threshold)."""
        return int(self.positional.sum())

    def sweep_values(self) -> dict[str, float]:
        """Return the width sweep's glued numbers: counts at the narrowest and widest SAE and the power law over the
        widths with positional features (none without a sweep; no fit values where none could be fitted)."""
        if len(self.sweep) < 2:
            return {}
        first, last = self.sweep.iloc[0], self.sweep.iloc[-1]
        fit = {"pos_sweep_k": self.fit["slope"], "pos_sweep_r2": self.fit["r2"], "pos_sweep_n": self.fit["n"]}
        return {"pos_sweep_first_count": int(first.positional), "pos_sweep_first_d_sae": int(first.d_sae),
                "pos_sweep_last_count": int(last.positional), "pos_sweep_last_d_sae": int(last.d_sae),
                **(fit if np.isfinite(self.fit["slope"]) else {})}

    def geometry_coverage_table(self) -> pd.DataFrame:
        """Return the geometry-and-coverage table for display: one column per SAE (this one, the other organism's),
        one row per measure."""
        fmt = {"W_pos turns (rows 1..C-1)": "{:.2f}", "‖W_pos‖ / ‖W_E‖": "{:.2f}", "share of positions": "{:.0%}"}
        g = self.geometry_coverage.set_index("SAE")
        return pd.DataFrame({col: [fmt.get(col, "{}").format(v) for v in g[col]] for col in g.columns},
                            index=g.index).T.rename_axis(None, axis=1)

    def widths(self) -> Int[Tensor, " k"]:
        """Return the positional features' peak widths."""
        return torch.tensor(self.scores["peak_width"].to_numpy(copy=True))[self.positional]

    def histograms(self) -> dict[str, Int[Tensor, " C"]]:
        """Return, per group of features, how many peak at each position 0..C-1."""
        peaks = torch.tensor(self.scores["peak_position"].to_numpy(copy=True))
        t = self.params.threshold
        return {f"R²_pos ≥ {t:g}": peak_histogram(peaks[self.positional], self.context_size),
                f"{t / 2:g} ≤ R²_pos < {t:g}": peak_histogram(peaks[self.half], self.context_size),
                "BOS slot (position 0, not counted)": peak_histogram(torch.zeros(int(self.bos_slot.sum()), dtype=torch.long),
                                                                      self.context_size)}

    def threshold_table(self) -> pd.DataFrame:
        """Return the count of positional features at several thresholds, for display."""
        return threshold_table(self.counts)

    def bench_table(self) -> pd.DataFrame:
        """Return the recorded benchmark, for display."""
        return bench_table(self.bench)

    @property
    def pages(self) -> FeaturePages:
        """Return the Neuronpedia pages of the SAE's features (none for the organism)."""
        return FeaturePages(self.params.sae_release, self.params.sae_id)

    def top_table(self) -> pd.DataFrame:
        """Return the shown features' scores, for display (feature ids linked to Neuronpedia where it hosts the SAE)."""
        return top_table(self.scores, self.top, self.pages)

    def range_table(self) -> pd.DataFrame:
        """Return the features per range of peak positions, for display."""
        return range_table(self.ranges)

    def alignment_table(self) -> pd.DataFrame:
        """Return the decoder alignment per peak position, for display."""
        return alignment_table(self.alignment)

    def extremes_table(self) -> pd.DataFrame:
        """Return the shares of features with R² near 0 and near 1, for display."""
        return extremes_table(self.ext_pos, self.ext_tok)

    def neuron_table(self) -> pd.DataFrame:
        """Return the most positional neurons' R²_pos, for display."""
        return pd.DataFrame({"R²_pos (η²)": self.neurons.r2[self.neurons.top].numpy().round(3)},
                            index=pd.Index(self.neurons.top.tolist(), name="neuron"))

    def sweep_table(self) -> pd.DataFrame:
        """Return the width sweep, for display."""
        return sweep_table(self.sweep)

    def glued(self) -> dict[str, object]:
        """Return every value the prose cites, under the chapter's 'pos_' names."""
        p, s = self.params, self.scores
        n_half = int(((torch.tensor(s["r2_pos"].to_numpy(copy=True)) >= p.threshold / 2) & self.live).sum())
        live = s.loc[self.live.numpy(), "interaction"]
        pos_inter = float(s.loc[self.positional.numpy(), "interaction"].mean()) if self.n_positional else None
        bench = self.bench.iloc[0]
        nr = self.neurons
        cov = self.coverage
        return {
            "pos_threshold": p.threshold, "pos_context": self.context_size, "pos_n_ctx": self.n_ctx,
            "pos_first": self.positions.start, "pos_last": self.positions.stop - 1,
            "pos_d_sae": self.d_sae, "pos_d_vocab": self.d_vocab,
            "pos_stats_seconds": self.stats_seconds, "pos_stats_method": self.stats_path,
            "pos_n_live": int(self.live.sum()), "pos_n_positional": self.n_positional,
            "pos_share_positional": self.n_positional / self.d_sae, "pos_max_r2": float(s["r2_pos"].max()),
            "pos_slot_count_sentence": slot_count_sentence(self.n_positional, self.n_with_slot),
            "pos_count_sentence": count_sentence(self.n_positional, n_half, self.d_sae, p.threshold),
            "pos_bench_exact": float(bench["exact (s)"]), "pos_bench_ratio": float(bench["exact / matmul"]),
            "pos_bench_ratio_blocked": float(bench["exact / matmul in token blocks"]),
            "pos_bench_speedup": float(bench["speed-up vs brute force"]),
            "pos_bench_gpu_sentence": gpu_bench_sentence(self.bench),
            "pos_top_lead": top_lead(len(self.top)), "pos_width_sentence": peak_width_sentence(self.widths()),
            "pos_range_sentence": range_sentence(self.ranges),
            "pos_norm_sentence": norm_sentence(**self.norms),
            "pos_top3": float(self.helix.shares.sum()), "pos_align_sentence": alignment_sentence(self.alignment),
            "pos_bos_slot": bos_slot_sentence(self.bos_cos_wpos0, self.bos_cos_input, p.threshold,
                                              self.context_size - 1),
            "pos_low": NEAR_0, "pos_high": NEAR_1, "pos_scatter_points": SCATTER_POINTS,
            "pos_pos_near0": self.ext_pos["near_0"], "pos_tok_near1": self.ext_tok["near_1"],
            "pos_extremes_sentence": extremes_sentence(self.ext_pos, self.ext_tok),
            "pos_interaction_sentence": interaction_sentence(float(live.mean()), pos_inter),
            "pos_neuron_tokens": nr.n_tokens, "pos_chance": nr.chance, "pos_d_mlp": int(nr.r2.numel()),
            "pos_n_neurons": int((nr.r2 >= p.threshold).sum()), "pos_n_neurons_10x": int((nr.r2 >= 10 * nr.chance).sum()),
            "pos_top_neuron_share": float(nr.r2.max()),
            "pos_neuron_context": neuron_context_sentence(self.context_size, self.n_ctx),
            "pos_sweep_sentence": sweep_sentence(self.sweep, self.fit, self.peaks_fit),
            "pos_sweep_summary": sweep_summary(self.sweep, self.fit),
            **self.sweep_values(),
            "pos_summary_peaks": summary_peaks_sentence(self.ranges, self.widths(), self.alignment),
            "pos_links_sentence": self.pages.sentence(),
            "pos_pos_near1": self.ext_pos["near_1"],
            **{f"pos_cov_{k}": v for k, v in cov.items() if v == v},  # NaN (no group to compare): left out
            "pos_coverage_sentence": coverage_sentence(cov),
            "pos_geometry_coverage_sentence": geometry_coverage_sentence(self.geometry_coverage),
            "pos_wpos_over_we": float(self.geometry_coverage["‖W_pos‖ / ‖W_E‖"].iloc[0]),
            **({"pos_early_positions": str(self.ranges["positions"].iloc[0]),  # first group of peak positions
                "pos_early_per_position": float(self.ranges["features_per_position"].iloc[0]),
                "pos_late_per_position": float(self.ranges["features"].iloc[1:].sum()
                                               / self.ranges["n_positions"].iloc[1:].sum())}
               if len(self.ranges) > 1 else {}),
        }


def load_sweep(model, sae, params: PositionalParams) -> dict:
    """Return {sae_id: SAE} of the width sweep (the chapter's own SAE reused), each checked to be a layer-0 SAE of the model."""
    from possae.loaders import load_sae_for

    saes = {}
    for sid in params.width_sweep_ids:
        own = sid == params.sae_id and params.width_sweep_release == params.sae_release
        s = sae if own else load_sae_for(model, params.width_sweep_release, sid, device=params.device)
        require_layer0(s, f"The width sweep ({sid})")
        saes[sid] = s
    return saes


def neuron_analysis(model, params: PositionalParams, context_size: int) -> Neurons:
    """Return the layer-0 MLP neurons' R²_pos over positions 1..n_ctx-1 of held-out text windows."""
    from possae.heldout import heldout_windows

    n_ctx = model.cfg.n_ctx
    windows = heldout_windows(model.tokenizer, n_ctx, params.n_heldout_tokens)
    sums = mlp_position_sums(model, windows, layer=0, progress=False)
    positions = in_context_positions(n_ctx, n_ctx)
    r2 = neuron_r2_pos(sums, positions)
    chance = chance_share(len(positions), int(sums.n[list(positions)].sum()))
    top = r2.argsort(descending=True)[: min(4, params.top_k)]
    return Neurons(r2, chance, int(windows.numel()), top, neuron_profile_frame(sums, top, positions))


def analyze(model, sae, params: PositionalParams) -> PositionalResult:
    """Return everything the positional-features chapter shows, for a layer-0 SAE of the model."""
    require_layer0(sae, "The positional-features chapter")
    n_ctx = model.cfg.n_ctx
    C = sae_context_size(sae, n_ctx)
    positions = in_context_positions(C, n_ctx)
    start = time.perf_counter()
    stats = context_stats(model, sae, device=params.device)
    seconds = time.perf_counter() - start
    slot = slot_stats(model, sae, device=params.device)
    t = params.threshold
    scores = feature_scores(stats)
    positional = positional_features(stats, None, t)
    live = fires_inside(stats)
    half = (stats.r2_pos >= t / 2) & live & ~positional
    bos_slot = positional_features(slot, None, t) & (peak_positions(slot) == 0)
    feats = positional.nonzero().squeeze(1)
    peaks = peak_positions(stats)[feats]
    top = top_positional_features(stats, None, k=params.top_k, threshold=t, per_peak=2)
    profiles = positional_profile_frame(slot, top)
    W_dec = sae.W_dec.detach()
    rows, dirs = helix_projection(model.W_pos, W_dec[feats.to(W_dec.device)], positions.start, C)
    bos = slot_decoders(model, sae, bos_slot)
    sweep_saes = load_sweep(model, sae, params)
    sweep = width_sweep_frame(model, sweep_saes, t, progress=False, device=params.device,
                              known={sid: stats for sid, s in sweep_saes.items() if s is sae})
    sample = scatter_sample(len(scores), SCATTER_POINTS, keep=positional)
    cov = coverage(scores, positional, positions)
    other = other_organism_row(model, t, device=params.device)
    wpos_norm = model.W_pos.detach()[:C].norm(dim=-1).double().cpu()
    return PositionalResult(
        params=params, context_size=C, n_ctx=n_ctx, d_vocab=model.cfg.d_vocab, stats_seconds=seconds,
        stats_path=stats.path, scores=scores, positional=positional, live=live, half=half, bos_slot=bos_slot,
        n_with_slot=count_positional(slot, t),
        counts=threshold_counts(stats.r2_pos, live, tuple(sorted({*THRESHOLD_GRID, t}))),
        bench=_benchmark(), top=top, profiles=profiles,
        preacts=preact_profile_frame(model.W_E, model.W_pos[:C], sae, top, device=params.device),
        windows={int(f): profile_window(torch.tensor(profiles.loc[profiles.feature == int(f), "mean"].to_numpy(copy=True)))
                 for f in top},
        ranges=peak_range_frame(peaks, positions),
        norms={"norm_first": float(wpos_norm[positions.start]), "norm_last": float(wpos_norm[-1]),
               "token_norm": float(model.W_E.detach().norm(dim=-1).double().mean()), "first": positions.start,
               "last": C - 1},
        helix=Helix(rows, torch.arange(positions.start, C), dirs, feats, peaks,
                    wpos_frame_pca(model.W_pos, positions.start, C)[2]),
        alignment=decoder_alignment(model.W_pos, W_dec[feats.to(W_dec.device)], peaks, C, positions.start),
        bos_cos_wpos0=bos[0], bos_cos_input=bos[1],
        ext_pos=r2_extremes(stats.r2_pos, live), ext_tok=r2_extremes(stats.r2_tok, live),
        scatter=scores.iloc[sample.numpy()].assign(positional=positional[sample].numpy()),
        neurons=neuron_analysis(model, params, C), sweep=sweep,
        fit=loglog_fit(sweep["d_sae"], sweep["positional"]), peaks_fit=loglog_fit(sweep["d_sae"], sweep["distinct_peaks"]),
        coverage=cov,
        geometry_coverage=pd.DataFrame([coverage_row(model, C, cov, f"{params.sae_release}/{params.sae_id}")]
                                       + ([other] if other else [])),
    )


def slot_decoders(model, sae, bos_slot: Bool[Tensor, " d_sae"]) -> tuple[Float[Tensor, " b"], Float[Tensor, " b"]]:
    """Return the BOS-slot features' decoder cosines with the centred W_pos[0] (rows 1..C-1's mean) and with the BOS input."""
    C = sae_context_size(sae, model.cfg.n_ctx)
    idx = bos_slot.nonzero().squeeze(1)
    W_dec = sae.W_dec.detach()[idx.to(sae.W_dec.device)]
    if C < 3:  # too few rows to centre on
        return torch.zeros(len(idx), dtype=torch.float64), torch.zeros(len(idx), dtype=torch.float64)
    cos0 = torch.tensor(decoder_alignment(model.W_pos, W_dec, torch.zeros(len(idx), dtype=torch.long), C, 1)
                        ["cos_at_peak"].to_numpy(copy=True))
    bos_input = model.W_E[model.tokenizer.bos_token_id] + model.W_pos[0]  # the one input seen at position 0 in training
    return cos0, decoder_input_cosine(W_dec, bos_input, sae.b_dec)


def _benchmark() -> pd.DataFrame:
    """Return the recorded layer-0 statistics benchmark."""
    from possae.benchmark_results import layer0_benchmark_frame

    return layer0_benchmark_frame()
