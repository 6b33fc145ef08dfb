"""Chapter "ledger": every checkable claim of the two studies, this book's number for it, and a verdict.

The ledger computes nothing about models or SAEs. It reads the values the other chapters glued into their executed
notebooks (``possae.glued.glued_values``) and applies one verdict rule per claim, each with named thresholds. The
studies' own numbers are citations, kept as the constants below with where each study gives them.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from possae.glued import MODEL_GLUE, glued_values, values_frame
from possae.numbers import fmt, pct
from possae.params import ChapterParams
from possae.quantities import quantities_sentence, quantity_table
from possae.thresholds import AMPLITUDE_DROP, LOSS_FACTOR, MOST, NEAR_1, RESTORE_FACTOR, SAME_BAND
from possae.wpos import MIN_TURNS, winding_word

# ---------------------------------------------------------------------------------------------------------------------
# The studies' numbers (citations, not results)
# ---------------------------------------------------------------------------------------------------------------------
STUDY_HELIX_TOP3 = 0.95  # study 1: GPT-2 small's W_pos rows 1..127 lie on a helix, top 3 PCs hold about 95 % of them
STUDY_N_POSITIONAL = 50  # study 1: about 50 positional features in the layer-0 SAE of gpt2-small-res-jb ...
STUDY_D_SAE = 24576  # ... out of its 24,576 features
STUDY_SEEDS = (0.55, 0.85)  # study 2: 55-85 % matched between SAEs that differ only in their seed
STUDY_K = (0.33, 0.555)  # study 2: 33-55.5 % matched between SAEs that differ only in k (TopK)
STUDY_ARCHITECTURES = (0.40, 0.60)  # study 2: 40-60 % matched between SAEs of different architectures
STUDY_CONTAINMENT = "72.8-89.3 % small in large, 22-47 % large in small"  # study 2: dictionaries of different widths

# ---------------------------------------------------------------------------------------------------------------------
# Verdicts and the thresholds of their rules
# ---------------------------------------------------------------------------------------------------------------------
CONFIRMED, REFUTED, UNTESTABLE, NOT_RUN = "confirmed", "refuted", "not testable here", "not run"
HELIX_TOLERANCE = 0.05  # "about 95 %": a top-3 share within 5 points of the study's
MINORITY_SHARE = 0.01  # positional features are "a small minority" below 1 % of the dictionary
EARLY_FACTOR = 2.0  # early positions get dedicated features: at least twice the later positions' features per position
BIMODAL_SHARE = 0.95  # "about 0 % or about 100 %": at least this share of firing features near 0 or near 1 ...
DOUBLING_BAND = (1.5, 2.5)  # a later layer's frequency "doubles" layer 0's within this band of ratios
CONTAINED_SHARE = 0.5  # the small dictionary is "contained" in the large when its features find a partner there at
# least half as often as in a second seed of the same recipe (the seed ceiling: the most two runs of one recipe share)
DISJOINT_CARRY = 0.1  # disjoint: features that mix token and position carry under a tenth of text firings and mass
MIN_SPURIOUS = 1.0  # spurious firing exists: at least one spurious feature per token past the context, on average
TILE_SHARE = 0.8  # features "tile every position": peaks at 4 in 5 positions or more (a peak's width covers a gap)
SINGLE_EARLY_MIN = 2  # early single-position features exist: at least two (one could be the BOS-adjacent slot alone)
SIGNIFICANCE = 0.05  # a rank correlation counts when its p-value is below this
POWER_LAW_R2 = 0.9  # the count grows "predictably" with width: a log-log line explains at least 90 % of its variance
MIN_WIDTHS = 3  # ... fitted to at least three widths (a line through two points always fits)
GPT2_NAMES = ("gpt2", "gpt2-small")  # cfg.model_name of GPT-2 small: the only model the studies' levels belong to


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim's verdict (confirmed, refuted, not testable here, not run) and its reason."""

    verdict: str
    reason: str


def helix_verdict(top3: float, study: float = STUDY_HELIX_TOP3, tolerance: float = HELIX_TOLERANCE) -> Verdict:
    """Return whether a top-3 PC share is within `tolerance` of the study's."""
    if abs(top3 - study) <= tolerance:
        return Verdict(CONFIRMED, f"within {tolerance * 100:.0f} points of the study's {study:.0%}")
    return Verdict(REFUTED, f"{abs(top3 - study) * 100:.1f} points from the study's {study:.0%}")


def minority_verdict(n_positional: int, d_sae: int, limit: float = MINORITY_SHARE) -> Verdict:
    """Return whether positional features are a small minority (share below `limit`) of a dictionary."""
    share = n_positional / d_sae
    form = (f"the count depends on the SAE; tested: positional features are below {limit:.0%} of the dictionary "
            f"(study: {STUDY_N_POSITIONAL / STUDY_D_SAE:.1%})")
    if n_positional == 0:
        return Verdict(UNTESTABLE, "no feature is positional here, so there is no minority to count")
    return Verdict(CONFIRMED if share < limit else REFUTED, f"{form}; here {pct(share)}")


def early_verdict(early_per_position: float, late_per_position: float, factor: float = EARLY_FACTOR) -> Verdict:
    """Return whether the earliest positions get at least `factor` times the later ones' features per position."""
    if early_per_position == 0 and late_per_position == 0:
        return Verdict(UNTESTABLE, "no positional feature peaks inside the context")
    if early_per_position >= factor * late_per_position:
        return Verdict(CONFIRMED, f"at least {factor:g} times the later positions' features per position")
    return Verdict(REFUTED, f"less than {factor:g} times the later positions' features per position")


def tiling_verdict(peak_positions: int, n_positions: int, share: float = TILE_SHARE) -> Verdict:
    """Return whether positional features peak at `share` or more of the context's positions."""
    got = peak_positions / n_positions
    if got >= share:
        return Verdict(CONFIRMED, f"peaks at {pct(got)} of the positions, at least {pct(share)}")
    return Verdict(REFUTED, f"peaks at only {peak_positions} of {n_positions} positions ({pct(got)}; the rule asks "
                            f"{pct(share)})")


def single_early_verdict(single_early: int, least: int = SINGLE_EARLY_MIN) -> Verdict:
    """Return whether at least `least` single-position features peak at the early positions."""
    if single_early >= least:
        return Verdict(CONFIRMED, f"{single_early} single-position features peak early (at least {least})")
    return Verdict(REFUTED, f"{single_early} single-position features peak early (the rule asks {least})")


def strength_verdict(early: float, later: float, rho: float, p: float, alpha: float = SIGNIFICANCE) -> Verdict:
    """Return whether early features fire more strongly: a higher mean peak activation and a significantly
    negative rank correlation between peak position and peak activation."""
    if not (early == early and later == later and rho == rho):
        return Verdict(UNTESTABLE, "there are no early or no later positional features to compare")
    if early > later and rho < 0 and p < alpha:
        return Verdict(CONFIRMED, f"early {early / later:.2f} times as strong; rho {rho:.2f}, p = {p:.2g}")
    return Verdict(REFUTED, f"early {early / later:.2f} times as strong; rho {rho:.2f}, p = {p:.2g} (the rule asks "
                            f"rho < 0 at p < {alpha})")


def width_verdict(slope: float, r2: float, n: int, least_r2: float = POWER_LAW_R2, least_n: int = MIN_WIDTHS) -> Verdict:
    """Return whether the count of positional features grows predictably with width: a positive log-log slope whose
    line explains at least `least_r2` of the log counts, over at least `least_n` widths with positional features."""
    if not (n >= least_n and slope == slope):
        return Verdict(UNTESTABLE, f"fewer than {least_n} widths have positional features, so no trend can be fitted")
    if slope > 0 and r2 >= least_r2:
        return Verdict(CONFIRMED, f"count ∝ d_sae^{slope:.2f}, R² {r2:.3f} over {n} widths")
    return Verdict(REFUTED, f"log-log slope {slope:.2f}, R² {r2:.3f} over {n} widths (the rule asks a positive slope "
                            f"at R² ≥ {least_r2:g})")


def first_token_verdict(n_higher: int, n_saes: int, most: float = MOST) -> Verdict:
    """Return whether the average activation at position 0 exceeds the in-context average for more than `most` of the
    SAEs."""
    if n_saes == 0:
        return Verdict(UNTESTABLE, "no SAE was run")
    if n_higher > most * n_saes:
        return Verdict(CONFIRMED, f"higher at position 0 for {n_higher} of {n_saes} SAEs")
    return Verdict(REFUTED, f"higher at position 0 for only {n_higher} of {n_saes} SAEs (the rule asks more than "
                            f"{most:.0%})")


def as_if_verdict(earlier: float, last: float, cosine: float, threshold: float) -> Verdict:
    """Return whether past the context the SAE's positional features act as at earlier positions (most past positions'
    nearest in-context pattern is an earlier one, at a cosine of at least `threshold`)."""
    if cosine < threshold:
        return Verdict(REFUTED, f"no in-context position's pattern is close (median cosine {cosine:.2f} < {threshold:g})")
    if earlier > 0.5:
        return Verdict(CONFIRMED, f"{pct(earlier)} of past positions act as an earlier position")
    return Verdict(REFUTED, f"{pct(last)} of past positions act as the last position, not an earlier one")


def disjoint_verdict(firing_share: float, mass_share: float, limit: float = DISJOINT_CARRY) -> Verdict:
    """Return whether positional and semantic features are disjoint on text: the position-modulated features (token x
    position interaction share >= semantic.INTERACTION_SHARE) carry under `limit` of the firings and of the mass."""
    carried = f"position-modulated features carry {pct(firing_share)} of firings and {pct(mass_share)} of activation mass"
    if firing_share < limit and mass_share < limit:
        return Verdict(CONFIRMED, f"{carried} on text (under {limit:.0%})")
    return Verdict(REFUTED, f"{carried} on text (the rule asks under {limit:.0%} of both)")


def bimodal_verdict(near_0: float, near_1: float, max_r2: float, share: float = BIMODAL_SHARE,
                    high: float = NEAR_1) -> Verdict:
    """Return whether R²_pos is bimodal at 0 and 1: `share` of firing features near either end, and some near 1."""
    if max_r2 <= high:
        return Verdict(REFUTED, f"no feature has R²_pos above {high:.2f}: the largest is {max_r2:.2f}, so the "
                                "positional features sit between the modes, not near 100 %")
    if near_0 + near_1 < share:
        return Verdict(REFUTED, f"only {pct(near_0 + near_1)} of firing features are near 0 or near 1 "
                                f"(criterion: {share:.0%})")
    return Verdict(CONFIRMED, f"{pct(near_0 + near_1)} of firing features are near 0 or near 1")


def random_verdict(sae_past: float, random_past: float, band: float = SAME_BAND) -> Verdict:
    """Return whether the SAE's error past the context exceeds a random vector's of equal norm by more than `band`."""
    r = sae_past / random_past
    if r > band:
        return Verdict(CONFIRMED, f"{fmt(r)} times the random vector's error")
    if r >= 1 / band:
        return Verdict(REFUTED, f"within {band - 1:.0%} of the random vector's error: as bad as random, not worse")
    return Verdict(REFUTED, f"below the random vector's error ({fmt(1 / r)} times smaller)")


def spurious_verdict(mean_spurious: float, non_positional: float, least: float = MIN_SPURIOUS) -> Verdict:
    """Return whether tokens fire spurious features past the context (`least` per token) and these are semantic."""
    if mean_spurious < least:
        return Verdict(REFUTED, f"fewer than {least:g} spurious feature per token past the context")
    if non_positional < 0.5:
        return Verdict(REFUTED, "most spurious features are positional, not semantic")
    return Verdict(CONFIRMED, f"{pct(non_positional)} of the spurious (token, feature) pairs are non-positional")


def turns_premise(turns: float, last: int, least: float = MIN_TURNS) -> Verdict | None:
    """Return 'not testable here' when the model's W_pos (rows 1..last) winds less than `least` turns, else None."""
    if turns >= least:
        return None
    return Verdict(UNTESTABLE, f"the model's W_pos is {winding_word(turns)} over rows 1..{last}, not a helix: with "
                               f"under {least:g} turn it has no period to impose on the curves")


def oscillation_verdict(n_oscillating: int, n_curves: int) -> Verdict:
    """Return whether any of the lowest layers' curves passes the spectral test (resolved and significant peak)."""
    if n_curves == 0:
        return Verdict(UNTESTABLE, "no curve was measured")
    if n_oscillating == 0:
        return Verdict(REFUTED, f"none of the {n_curves} lowest-layer curves has a resolved, significant spectral "
                                "peak: the curves trend or bend, they do not oscillate")
    return Verdict(CONFIRMED, f"{n_oscillating} of the {n_curves} lowest-layer curves oscillate")


def doubling_verdict(ratios: Sequence[float], n_base_oscillating: int, n_later_oscillating: int = 0,
                     n_later: int = 0, ratios_to_study: Sequence[float] = (), floor: float = float("nan"),
                     band: tuple[float, float] = DOUBLING_BAND) -> Verdict:
    """Return whether later layers oscillate at about twice their lowest layer's frequency (median ratio within
    `band`), or, when the lowest layer does not oscillate, at twice the study's layer-0 frequency (ratios_to_study).
    No later curve oscillating refutes the claim only where the test could have found the doubled swing (`floor`, its
    largest detection floor there, finite); otherwise the claim is not testable here."""
    if n_later == 0:
        return Verdict(UNTESTABLE, "no later-layer curve was measured")
    if n_later_oscillating == 0:
        if not np.isfinite(floor):
            return Verdict(UNTESTABLE, "no later-layer curve oscillates, but these windows cannot resolve the doubled "
                                       "frequency (or the test would not find it at any swing tried)")
        return Verdict(REFUTED, f"none of the {n_later} later-layer curves oscillates, where the test finds a swing of "
                                f"{floor:.0%} of the curve's mean at the doubled frequency")
    use = list(ratios) if n_base_oscillating and ratios else list(ratios_to_study)
    if not use:
        return Verdict(UNTESTABLE, "the lowest layer's curve does not oscillate here, so there is no frequency to double")
    median = float(pd.Series(use).median())
    inside = band[0] <= median <= band[1]
    of = "their lowest layer's" if n_base_oscillating and ratios else "the study's layer-0 frequency (two per 1,024)"
    return Verdict(CONFIRMED if inside else REFUTED, f"median frequency ratio to {of} {median:.2f} "
                                                     f"({'inside' if inside else 'outside'} {band[0]:g}-{band[1]:g})")


def ablation_verdict(kept: Sequence[float], drop: float = AMPLITUDE_DROP, most: float = MOST) -> Verdict:
    """Return whether zeroing W_pos removes the curves' pattern over positions: the zeroed curve correlates at most
    `drop` with the normal one (oscillation.pattern_kept), for more than `most` of the SAEs whose curve varies."""
    if not kept:
        return Verdict(UNTESTABLE, "no SAE's curve varies with position, so there is no pattern to remove")
    removed = sum(k <= drop for k in kept)
    share = f"for {removed} of {len(kept)} SAEs (correlations {min(kept):.2f} to {max(kept):.2f})"
    if removed > most * len(kept):
        return Verdict(CONFIRMED, f"the zeroed curve correlates at most {drop:g} with the normal one {share}")
    return Verdict(REFUTED, f"the zeroed curve correlates at most {drop:g} with the normal one only {share}; the rule "
                            f"asks more than {most:.0%} of them")


def shuffle_verdict(ce_normal: float, ce_zero: float, ce_shuffle: float) -> Verdict:
    """Return whether shuffling W_pos costs the model less next-token loss than zeroing it."""
    zero, shuffle = ce_zero - ce_normal, ce_shuffle - ce_normal
    if shuffle < zero:
        return Verdict(CONFIRMED, f"shuffling adds {shuffle:.2f} nats, zeroing {zero:.2f}")
    return Verdict(REFUTED, f"shuffling adds {shuffle:.2f} nats, more than zeroing's {zero:.2f}: wrong positions "
                            "cost more than none")


def more_than_verdict(seeds: float, datasets: float) -> Verdict:
    """Return whether SAEs differing in their seed share more features than SAEs trained on different datasets."""
    if seeds > datasets:
        return Verdict(CONFIRMED, f"seed pairs share {pct(seeds)} on average, dataset pairs {pct(datasets)}")
    return Verdict(REFUTED, f"seed pairs share {pct(seeds)} on average, not more than dataset pairs' {pct(datasets)}")


def range_verdict(low: float, high: float, study: tuple[float, float]) -> Verdict:
    """Return whether the book's range of shares [low, high] overlaps the study's."""
    if high < study[0]:
        return Verdict(REFUTED, f"every pair below the study's {study[0]:.0%}-{study[1]:.0%}")
    if low > study[1]:
        return Verdict(REFUTED, f"every pair above the study's {study[0]:.0%}-{study[1]:.0%}")
    return Verdict(CONFIRMED, f"overlaps the study's {study[0]:.0%}-{study[1]:.0%}")


def containment_verdict(small_in_large: float, large_in_small: float, seed_ceiling: float,
                        share: float = CONTAINED_SHARE) -> Verdict:
    """Return whether the small dictionary is contained in the large one, in the form that carries over between
    models: its features find a partner there at least `share` times as often as between two seeds of one recipe, and
    more often than the large one's features find one in it (the asymmetry containment implies)."""
    ratio = small_in_large / seed_ceiling
    if ratio >= share and small_in_large > large_in_small:
        return Verdict(CONFIRMED, f"small in large is {ratio:.2f} times the seed ceiling of {pct(seed_ceiling)}, and "
                                  f"more than large in small")
    why = (f"only {ratio:.2f} times the seed ceiling of {pct(seed_ceiling)} (the rule asks {share:g})"
           if ratio < share else "no more than large in small: no asymmetry")
    return Verdict(REFUTED, f"small in large is {why}")


def ordering_verdict(means: Mapping[str, float]) -> Verdict:
    """Return whether the mean matching shares follow the study's ordering of what changes a dictionary most:
    datasets < architectures ≈ k < seeds < widths (a lower share: a larger change; architectures and k not ordered
    against each other)."""
    d, a, k, s, w = (means[n] for n in ("datasets", "architectures", "k", "seeds", "widths"))
    order = f"datasets {pct(d)}, architectures {pct(a)}, k {pct(k)}, seeds {pct(s)}, widths {pct(w)}"
    if d < min(a, k) and max(a, k) < s < w:
        return Verdict(CONFIRMED, f"in the study's order: {order}")
    return Verdict(REFUTED, f"not in the study's order: {order}")


def level_premise(v: Mapping[str, object]) -> Verdict | None:
    """Return 'not testable here' for a level claim of GPT-2 small's SAEs on any other model, else None."""
    model = str(v.get(MODEL_GLUE, "-"))
    if model.lower() in GPT2_NAMES:
        return None
    return Verdict(UNTESTABLE, f"a level of matching belongs to the model, the SAEs' width and their training tokens: "
                               f"the study's levels are GPT-2 small's, and do not carry over to {model}")


def early_layers_verdict(first_share: float, later_share: float) -> Verdict:
    """Return whether matching between adjacent layers is lower from the first layer than between later layers."""
    if first_share < later_share:
        return Verdict(CONFIRMED, "the first layer pair matches less than the later ones on average")
    return Verdict(REFUTED, "the first layer pair matches at least as much as the later ones on average")


def rotary_verdict(rotary_max: float, absolute_max: float, factor: float = RESTORE_FACTOR) -> Verdict:
    """Return whether every rotary SAE (layers >= 1) keeps its error past the context within `factor` of its error
    inside, while some learned-absolute SAE at those layers exceeds it (else the comparison shows nothing)."""
    if rotary_max > factor:
        return Verdict(REFUTED, f"a rotary SAE's error past the context reaches {fmt(rotary_max)} times its error "
                                f"inside (limit {factor:g})")
    if absolute_max <= factor:
        return Verdict(UNTESTABLE, "the learned-absolute SAEs do not blow up either, so the control shows nothing")
    return Verdict(CONFIRMED, f"rotary: at most {fmt(rotary_max)} times the error inside; learned-absolute: up to "
                              f"{fmt(absolute_max)} times (layers 1 and up)")


def later_error_verdict(absolute_max: float, factor: float = RESTORE_FACTOR) -> Verdict:
    """Return whether the learned-absolute model's SAEs at layers >= 1 keep their error past the context within
    `factor` of their error inside: position is then not most of their error there."""
    if absolute_max > factor:
        return Verdict(REFUTED, f"a later-layer SAE's error past the context reaches {fmt(absolute_max)} times its "
                                f"error inside (limit {factor:g}): most of it comes with the unseen positions")
    return Verdict(CONFIRMED, f"at most {fmt(absolute_max)} times the error inside (limit {factor:g}) at layers 1 and up")


def restore_verdict(past: float, sae_inside: float, factor: float = RESTORE_FACTOR) -> Verdict:
    """Return whether an nMSE past the context is within `factor` of the raw SAE's nMSE inside it."""
    if past <= factor * sae_inside:
        return Verdict(CONFIRMED, f"within {factor:g} times the SAE's own error inside the context")
    return Verdict(REFUTED, f"{fmt(past / sae_inside)} times the SAE's own error inside the context (limit {factor:g})")


def fidelity_verdict(after: float, before: float, band: float = SAME_BAND) -> Verdict:
    """Return whether an SAE's nMSE inside its context after a change stays within `band` of its nMSE before."""
    if after <= band * before:
        return Verdict(CONFIRMED, f"inside the context the error stays within {band:g} times the SAE's own")
    return Verdict(REFUTED, f"inside the context the error grows {fmt(after / before)} times (limit {band:g})")


def loss_verdict(loss_inside: float, loss_past: float, factor: float = LOSS_FACTOR) -> Verdict:
    """Return whether splicing the SAE in adds at least `factor` times more next-token loss past the context."""
    if loss_past >= factor * loss_inside and loss_past > 0:
        return Verdict(CONFIRMED, f"at least {factor:g} times the loss it adds inside")
    return Verdict(REFUTED, f"less than {factor:g} times the loss it adds inside")


# ---------------------------------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------------------------------
CHAPTERS = ("setup", "positional", "semantic", "length_generalization", "oscillation", "matching", "past_context")
SECTIONS = {  # (page, anchor or None for the page's top): the heading's text, as the link reads
    ("setup", "the-geometry-of-w-pos"): "Setup: the geometry of W_pos",
    ("positional", "which-features-are-positional"): "Positional: which features are positional",
    ("positional", "which-positions-get-their-own-features"): "Positional: which positions get their own features",
    ("positional", "position-vs-token-for-every-feature"): "Positional: position vs token",
    ("positional", "positional-features-vs-sae-width"): "Positional: positional features vs SAE width",
    ("semantic", "how-much-of-each-feature-is-token-identity"): "Semantic: token identity",
    ("length_generalization", "reconstruction-error-at-every-position"): "Length: reconstruction error",
    ("length_generalization", "semantic-features-past-the-context-spurious-firing"): "Length: spurious firing",
    ("length_generalization", "fixes"): "Length: fixes",
    ("length_generalization", "positional-features-past-the-context"): "Length: positional features past the context",
    ("oscillation", "is-there-an-oscillation"): "Oscillation: is there an oscillation?",
    ("oscillation", "average-activation-vs-position-layer-by-layer"): "Oscillation: activation vs position",
    ("oscillation", "ablating-the-positional-embedding"): "Oscillation: ablating W_pos",
    ("oscillation", "what-the-model-loses"): "Oscillation: what the model loses",
    ("matching", "different-seeds"): "Matching: different seeds",
    ("matching", "width"): "Matching: width",
    ("matching", "sparsity-k"): "Matching: sparsity (k)",
    ("matching", "architecture"): "Matching: architecture",
    ("matching", "against-the-study-and-best-match-against-one-to-one"): "Matching: against the study",
    ("matching", "layer-against-layer"): "Matching: layer against layer",
    ("past_context", "the-next-token-loss-past-the-context"): "Past the context: the next-token loss",
    ("past_context", "the-fine-tuning-fix"): "Past the context: the fine-tuning fix",
    ("past_context", "a-rotary-control"): "Past the context: a rotary control",
}


STUDY_1, STUDY_2, COMMENT, THIS_BOOK = "study 1", "study 2", "comment", "this book"
SOURCES = (STUDY_1, STUDY_2, COMMENT, THIS_BOOK)  # study 1: layer-0 positional features and the length failure;
# study 2: oscillation, ablation and feature matching; comment: the discussion of a study; this book: its own remedies


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim: its text, the study's number, where the book shows it, the glued names it reads and its rule."""

    key: str
    claim: str
    study: str  # the study's number or wording ('-' where it gives none)
    chapter: str  # the chapter whose glued values it reads (a file name of chapters/)
    section: tuple[str, str | None]  # a key of SECTIONS
    names: tuple[str, ...]  # the glued names it needs
    judge: Callable[[Mapping[str, object]], tuple[str, Verdict]]  # values -> (this book's number, verdict)
    missing: str = "the chapter skipped this measurement on this build"  # the reason when a name is absent
    source: str = STUDY_1  # who made the claim: one of SOURCES

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"claim {self.key!r}: source {self.source!r} is not one of {', '.join(SOURCES)}")


def _helix(v):
    """Return (GPT-2's and the book's model's top-3 PC shares, verdict)."""
    return (f"GPT-2 small rows 1..{v['gpt2_context_last']}: {pct(v['gpt2_top3_ctx'])} ({v['setup_model']}, all rows: "
            f"{pct(v['top3'])})"), helix_verdict(v["gpt2_top3_ctx"])


def _minority(v):
    """Return (the count of positional features, verdict)."""
    return (f"{v['pos_n_positional']:,} of {v['pos_d_sae']:,} ({pct(v['pos_share_positional'])}), with W_pos's rows "
            f"{v['pos_wpos_over_we']:.2f} times a token embedding's length", minority_verdict(v["pos_n_positional"], v["pos_d_sae"]))


def _early(v):
    """Return (features per position, early and later, verdict)."""
    return (f"{v['pos_early_per_position']:.2f} features per position at {v['pos_early_positions']}, "
            f"{v['pos_late_per_position']:.2f} later"), early_verdict(v["pos_early_per_position"],
                                                                         v["pos_late_per_position"])


def _tiling(v):
    """Return (the distinct peak positions of the positional features, verdict)."""
    return (f"{v['pos_cov_n_features']} features peak at {v['pos_cov_peak_positions']} of {v['pos_cov_n_positions']} "
            f"positions", tiling_verdict(v["pos_cov_peak_positions"], v["pos_cov_n_positions"]))


def _single_early(v):
    """Return (single-position features, early ones, verdict)."""
    return (f"{v['pos_cov_single']} single-position features, {v['pos_cov_single_early']} at positions "
            f"{v['pos_cov_early_first']}..{v['pos_cov_early_last']}", single_early_verdict(v["pos_cov_single_early"]))


def _strength(v):
    """Return (mean peak activation early and later, verdict)."""
    return (f"mean peak activation {v['pos_cov_early_max_mean']:.3g} early, {v['pos_cov_later_max_mean']:.3g} later",
            strength_verdict(v["pos_cov_early_max_mean"], v["pos_cov_later_max_mean"], v["pos_cov_rho_peak_strength"],
                             v["pos_cov_p_peak_strength"]))


def _width(v):
    """Return (the sweep's counts at its narrowest and widest SAE and the power law, verdict)."""
    return (f"{v['pos_sweep_first_count']} positional features at d_sae {v['pos_sweep_first_d_sae']:,}, "
            f"{v['pos_sweep_last_count']} at {v['pos_sweep_last_d_sae']:,}",
            width_verdict(v["pos_sweep_k"], v["pos_sweep_r2"], v["pos_sweep_n"]))


def _first_token(v):
    """Return (position 0's average activation over the in-context average, across the SAEs; verdict)."""
    return (f"position 0 / in context: {v['osc_pos0_ratio_min']:.2f} to {v['osc_pos0_ratio_max']:.2f} over "
            f"{v['osc_n_saes']} SAEs", first_token_verdict(v["osc_n_pos0_higher"], v["osc_n_saes"]))


def _as_if(v):
    """Return (the share of past positions acting as earlier / last in-context positions, verdict)."""
    return (f"earlier: {pct(v['len_asif_earlier_share'])}, last: {pct(v['len_asif_last_share'])}; median cosine "
            f"{v['len_asif_median_cosine']:.2f}", as_if_verdict(v["len_asif_earlier_share"], v["len_asif_last_share"],
                                                              v["len_asif_median_cosine"], v["len_asif_threshold"]))


def _disjoint(v):
    """Return (the position-modulated features and the share of text they carry, verdict)."""
    return (f"{v['sem_n_entangled']:,} of {v['sem_n_features']:,} features at least {v['sem_interaction_threshold']:.0%} "
            f"interaction; they carry {pct(v['sem_entangled_firing_share'])} of text firings"), \
        disjoint_verdict(v["sem_entangled_firing_share"], v["sem_entangled_mass_share"])


def _bimodal(v):
    """Return (the shares of R²_pos near 0 and near 1, verdict)."""
    return (f"R²_pos < {v['pos_low']:.2f}: {pct(v['pos_pos_near0'])}; > {v['pos_high']:.2f}: "
            f"{pct(v['pos_pos_near1'])}; largest {v['pos_max_r2']:.3f}"), \
        bimodal_verdict(v["pos_pos_near0"], v["pos_pos_near1"], v["pos_max_r2"], high=v["pos_high"])


def _random(v):
    """Return (the SAE's and a random vector's nMSE past the context, verdict)."""
    return (f"nMSE past the context {fmt(v['len_heldout_past'])}, random vector {fmt(v['len_heldout_rand_past'])}",
            random_verdict(v["len_heldout_past"], v["len_heldout_rand_past"]))


def _spurious(v):
    """Return (spurious features per token past the context, verdict)."""
    return (f"{fmt(v['len_spur_mean'])} spurious features per token ({pct(v['len_spur_share'])} of its active ones)",
            spurious_verdict(v["len_spur_mean"], v["len_spur_nonpos"]))


def _oscillation(v):
    """Return (how many curves oscillate, verdict)."""
    return (f"{v['osc_n_osc_base']} of {v['osc_n_base']} lowest-layer curves oscillate ({v['osc_n_oscillating']} of "
            f"{v['osc_n_saes']} in all)"), (turns_premise(v["osc_wpos_turns"], v["osc_n_ctx"] - 1)
                                           or oscillation_verdict(v["osc_n_osc_base"], v["osc_n_base"]))


def _doubling(v):
    """Return (the later layers' frequency ratios, verdict)."""
    ratios = v["osc_ratios_to_base"]
    shown = ", ".join(f"{r:.2f}" for r in ratios) if ratios else "none measurable"
    return (f"{v['osc_n_osc_later']} of {v['osc_n_later']} later-layer curves oscillate; ratios: {shown}",
            turns_premise(v["osc_wpos_turns"], v["osc_n_ctx"] - 1) or doubling_verdict(
                ratios, v["osc_n_osc_base"], v["osc_n_osc_later"], v["osc_n_later"], v["osc_ratios_to_study"],
                max(v["osc_floors_later"]) if v["osc_floors_later"] and not v["osc_n_floor_missing"] else np.nan))


def _ablation(v):
    """Return (how much of each curve's pattern survives zeroed W_pos, verdict)."""
    return (f"correlation of the zeroed curve with the normal one: {v['osc_kept_zero_min']:.2f} to "
            f"{v['osc_kept_zero_max']:.2f} over {v['osc_n_patterned']} SAEs"), ablation_verdict(v["osc_kept_zero_values"])


def _shuffle(v):
    """Return (the model's loss under each W_pos condition, verdict)."""
    return (f"loss {v['osc_ce_normal']:.3f} nats, zeroed {v['osc_ce_zero']:.3f}, shuffled {v['osc_ce_shuffle']:.3f}",
            shuffle_verdict(v["osc_ce_normal"], v["osc_ce_zero"], v["osc_ce_shuffle"]))


def _share_range(lo: float, hi: float) -> str:
    """Return a range of shares as text, e.g. '15.9%-19.0%'."""
    return pct(lo) if pct(lo) == pct(hi) else f"{pct(lo)}-{pct(hi)}"


def _dataset_seed(v):
    """Return (the mean seed and dataset pair's share, verdict)."""
    return (f"seeds {pct(v['match_seeds_mean'])}, datasets {pct(v['match_datasets_mean'])} (mean pair)",
            more_than_verdict(v["match_seeds_mean"], v["match_datasets_mean"]))


def _range_rule(name: str, study: tuple[float, float]):
    """Return the judge of a matching comparison's range of shares against the study's."""
    def judge(v):
        """Return (the range of shares, verdict)."""
        lo, hi = v[f"match_{name}_min"], v[f"match_{name}_max"]
        return _share_range(lo, hi), level_premise(v) or range_verdict(lo, hi, study)
    return judge


def _containment(v):
    """Return (the containment shares both ways, verdict)."""
    return (f"small in large {pct(v['match_contain_small_in_large'])}, large in small "
            f"{pct(v['match_contain_large_in_small'])}; seeds {pct(v['match_seeds_mean'])}"), \
        containment_verdict(v["match_contain_small_in_large"], v["match_contain_large_in_small"], v["match_seeds_mean"])


def _ordering(v):
    """Return (each comparison's mean share, verdict)."""
    means = {n: v[f"match_{n}_mean"] for n in ("datasets", "architectures", "k", "seeds", "widths")}
    return ", ".join(f"{n} {pct(m)}" for n, m in means.items()), ordering_verdict(means)


def _early_layers(v):
    """Return (adjacent-layer shares, first and later, verdict)."""
    first = v["match_adjacent_first_layer"]
    return (f"adjacent layers from layer {first}: {pct(v['match_adjacent_first_share'])}; later pairs: "
            f"{pct(v['match_adjacent_later_share'])}"), early_layers_verdict(v["match_adjacent_first_share"],
                                                                           v["match_adjacent_later_share"])


def _rotary(v):
    """Return (the rotary and absolute SAEs' error ratios, verdict)."""
    budget = "budget-matched" if v.get("pc_rot_matched") else "not budget-matched"
    return (f"nMSE past / inside: rotary ({v['pc_rot_recipe']} recipe, {budget}) at most "
            f"{fmt(v['pc_rot_ratio_max'])}, learned-absolute up to {fmt(v['pc_abs_ratio_later_max'])} (layers 1 and "
            "up)"), \
        rotary_verdict(v["pc_rot_ratio_max"], v["pc_abs_ratio_later_max"])


def _later_error(v):
    """Return (the learned-absolute later-layer SAEs' largest error ratio, verdict)."""
    return (f"learned-absolute nMSE past / inside, layers 1 and up: at most {fmt(v['pc_abs_ratio_later_max'])}",
            later_error_verdict(v["pc_abs_ratio_later_max"]))


def _finetune_break(v):
    """Return (nMSE past the context before and after fine-tuning, and the fine-tuned SAE's own inside; verdict)."""
    return (f"nMSE past {fmt(v['pc_sae_nmse_past'])} → {fmt(v['pc_ft_nmse_past_final'])} after "
            f"{v['pc_ft_tokens_final']:,} tokens; its own inside {fmt(v['pc_ft_nmse_in_final'])} (relu-full past: "
            f"{fmt(v['pc_full_nmse_past'])})"), restore_verdict(v["pc_ft_nmse_past_final"], v["pc_ft_nmse_in_final"])


def _finetune_fidelity(v):
    """Return (nMSE inside the context before and after fine-tuning, verdict)."""
    return (f"nMSE inside {fmt(v['pc_sae_nmse_in'])} → {fmt(v['pc_ft_nmse_in_final'])} after "
            f"{v['pc_ft_tokens_final']:,} tokens"), fidelity_verdict(v["pc_ft_nmse_in_final"], v["pc_sae_nmse_in"])


def _loss(v):
    """Return (the loss the SAE adds inside and past the context, verdict)."""
    return (f"+{v['pc_loss_sae_in']:.3f} nats inside, +{v['pc_loss_sae_past']:.3f} past",
            loss_verdict(v["pc_loss_sae_in"], v["pc_loss_sae_past"]))


def _fix(k: str):
    """Return the judge of fix (k): does its nMSE past the context restore the SAE's inside?"""
    def judge(v):
        """Return (the fix's nMSE past the context, verdict)."""
        return f"nMSE past {fmt(v[f'len_fix_{k}_past'])}", restore_verdict(v[f"len_fix_{k}_past"], v["len_fix_sae_in"],
                                                                             v["len_restore_factor"])
    return judge


FIX_CLAIMS = {"a": "encoding the token embedding alone, W_pos added back, fixes the SAE past the context",
              "b": "reading the token at the last trained position fixes the SAE past the context",
              "c": "keeping the SAE's token part and using the exact W_pos fixes the SAE past the context",
              "d": "training the SAE on full contexts fixes it past the context"}

CLAIMS: tuple[Claim, ...] = (
    Claim("helix", "GPT-2's W_pos is a helix: its top 3 principal components hold about 95 % of it",
          f"{STUDY_HELIX_TOP3:.0%}", "setup", ("setup", "the-geometry-of-w-pos"),
          ("gpt2_context_last", "gpt2_top3_ctx", "top3", "setup_model"), _helix),
    Claim("few_positional", "a layer-0 SAE has few positional features",
          f"about {STUDY_N_POSITIONAL} of {STUDY_D_SAE:,}", "positional",
          ("positional", "which-features-are-positional"),
          ("pos_n_positional", "pos_d_sae", "pos_share_positional", "pos_wpos_over_we"), _minority),
    Claim("early_positions", "early positions get dedicated features", "-", "positional",
          ("positional", "which-positions-get-their-own-features"),
          ("pos_early_positions", "pos_early_per_position", "pos_late_per_position"), _early,
          "the context has a single group of peak positions on this build"),
    Claim("tiling", "positional features tile every position of the context",
          f"about {STUDY_N_POSITIONAL} features, every position of 128", "positional",
          ("positional", "which-positions-get-their-own-features"),
          ("pos_cov_n_features", "pos_cov_peak_positions", "pos_cov_n_positions"), _tiling),
    Claim("single_early", "the earliest positions get single-position features", "-", "positional",
          ("positional", "which-positions-get-their-own-features"),
          ("pos_cov_single", "pos_cov_single_early", "pos_cov_early_first", "pos_cov_early_last"), _single_early),
    Claim("early_strength", "features of early positions fire more strongly", "-", "positional",
          ("positional", "which-positions-get-their-own-features"),
          ("pos_cov_early_max_mean", "pos_cov_later_max_mean", "pos_cov_rho_peak_strength", "pos_cov_p_peak_strength"),
          _strength),
    Claim("width", "the count of positional features grows predictably with the SAE's width", "-",
          "positional", ("positional", "positional-features-vs-sae-width"),
          ("pos_sweep_first_count", "pos_sweep_first_d_sae", "pos_sweep_last_count", "pos_sweep_last_d_sae",
           "pos_sweep_k", "pos_sweep_r2", "pos_sweep_n"), _width,
          "this build runs no width sweep, or fewer than two of its widths have positional features"),
    Claim("disjoint", "positional and semantic features are disjoint at layer 0", "-", "semantic",
          ("semantic", "how-much-of-each-feature-is-token-identity"),
          ("sem_n_entangled", "sem_n_features", "sem_interaction_threshold", "sem_entangled_firing_share",
           "sem_entangled_mass_share"), _disjoint),
    Claim("bimodal", "position explains about 0 % or about 100 % of each feature's variance",
          "0 % or 100 %", "positional", ("positional", "position-vs-token-for-every-feature"),
          ("pos_low", "pos_high", "pos_pos_near0", "pos_pos_near1", "pos_max_r2"), _bimodal, source=COMMENT),
    Claim("random", "past the context, the reconstruction is worse than a random vector of the input's norm", "-",
          "length_generalization", ("length_generalization", "reconstruction-error-at-every-position"),
          ("len_heldout_past", "len_heldout_rand_past"), _random),
    Claim("as_if", "past the context, the SAE acts as if at earlier positions", "-", "length_generalization",
          ("length_generalization", "positional-features-past-the-context"),
          ("len_asif_earlier_share", "len_asif_last_share", "len_asif_median_cosine", "len_asif_threshold"), _as_if),
    Claim("spurious", "past the context, semantic features fire spuriously", "-", "length_generalization",
          ("length_generalization", "semantic-features-past-the-context-spurious-firing"),
          ("len_spur_mean", "len_spur_share", "len_spur_nonpos"), _spurious),
    *(Claim(f"fix_{k}", f"fix ({k}): {text}", "-", "length_generalization", ("length_generalization", "fixes"),
            (f"len_fix_{k}_past", "len_fix_sae_in", "len_restore_factor"), _fix(k),
            "this build has no full-context SAE, so fix (d) was skipped", source=THIS_BOOK)
      for k, text in FIX_CLAIMS.items()),
    Claim("oscillation", "the average activation oscillates with position (two periods)", "-", "oscillation",
          ("oscillation", "is-there-an-oscillation"),
          ("osc_n_osc_base", "osc_n_base", "osc_n_oscillating", "osc_n_saes", "osc_wpos_turns", "osc_n_ctx"),
          _oscillation, "the model has no learned W_pos to wind", source=STUDY_2),
    Claim("doubling", "layers 1-3 oscillate at twice layer 0's frequency", "2x", "oscillation",
          ("oscillation", "is-there-an-oscillation"),
          ("osc_ratios_to_base", "osc_n_osc_base", "osc_n_osc_later", "osc_n_later", "osc_wpos_turns", "osc_n_ctx",
           "osc_ratios_to_study", "osc_floors_later", "osc_n_floor_missing"),
          _doubling, "the model has no learned W_pos to wind", source=STUDY_2),
    Claim("first_token", "the first token's average activation is higher than at later positions", "-", "oscillation",
          ("oscillation", "average-activation-vs-position-layer-by-layer"),
          ("osc_n_pos0_higher", "osc_n_saes", "osc_pos0_ratio_min", "osc_pos0_ratio_max"), _first_token,
          source=STUDY_2),
    Claim("ablation", "ablating W_pos removes the pattern", "-", "oscillation",
          ("oscillation", "ablating-the-positional-embedding"),
          ("osc_n_patterned", "osc_kept_zero_values", "osc_kept_zero_min", "osc_kept_zero_max"), _ablation,
          "no SAE's curve varies with position by at least 1 % of its mean, so there is no pattern to remove",
          source=STUDY_2),
    Claim("shuffle", "shuffling W_pos costs the model less than zeroing it", "-", "oscillation",
          ("oscillation", "what-the-model-loses"), ("osc_ce_normal", "osc_ce_zero", "osc_ce_shuffle"), _shuffle, source=STUDY_2),
    Claim("dataset_seed", "the dataset changes an SAE's dictionary more than the seed", "-", "matching",
          ("matching", "different-seeds"), ("match_seeds_mean", "match_datasets_mean"), _dataset_seed,
          "this build compares no seed pairs or no dataset pairs", source=STUDY_2),
    Claim("seeds", "SAEs differing only in their seed share 55-85 % of features",
          f"{STUDY_SEEDS[0]:.0%}-{STUDY_SEEDS[1]:.0%}", "matching", ("matching", "different-seeds"),
          ("match_seeds_min", "match_seeds_max"), _range_rule("seeds", STUDY_SEEDS),
          "this build compares no seed pairs", source=STUDY_2),
    *(Claim(name, f"SAEs that differ only in {what} share {lo:.0%}-{hi:.1%} of features".replace(".0%", "%"),
            f"{lo:.0%}-{hi:.1%}".replace(".0%", "%"), "matching", ("matching", anchor),
            (f"match_{name}_min", f"match_{name}_max"), _range_rule(name, (lo, hi)),
            f"this build compares no SAEs that differ in {what}", source=STUDY_2)
      for name, what, (lo, hi), anchor in (("k", "k", STUDY_K, "sparsity-k"),
                                           ("architectures", "their architecture", STUDY_ARCHITECTURES, "architecture"))),
    Claim("containment", "a smaller dictionary is contained in a larger one", STUDY_CONTAINMENT, "matching",
          ("matching", "width"),
          ("match_contain_small_in_large", "match_contain_large_in_small", "match_seeds_mean"), _containment,
          "this build compares no widths, or no seed pairs for the ceiling", source=STUDY_2),
    Claim("ordering", "datasets change a dictionary most, then architectures and k, then seeds, then widths", "-",
          "matching", ("matching", "against-the-study-and-best-match-against-one-to-one"),
          tuple(f"match_{n}_mean" for n in ("datasets", "architectures", "k", "seeds", "widths")), _ordering,
          "this build lacks one of the five comparisons", source=STUDY_2),
    Claim("early_layers", "early layers match less", "-", "matching", ("matching", "layer-against-layer"),
          ("match_adjacent_first_layer", "match_adjacent_first_share", "match_adjacent_later_share"), _early_layers,
          "this build compares fewer than three layers", source=STUDY_2),
    Claim("rotary", "SAEs on rotary-embedding models (Pythia) do not blow up past their context", "-",
          "past_context", ("past_context", "a-rotary-control"),
          ("pc_rot_recipe", "pc_rot_ratio_max", "pc_abs_ratio_later_max"), _rotary,
          "this build trained no rotary twin"),
    Claim("later_error", "past the context, position is not most of a later layer's SAE error", "-",
          "past_context", ("past_context", "a-rotary-control"), ("pc_abs_ratio_later_max",),
          _later_error,
          "this build measured no later-layer SAE past its context", source=COMMENT),
    Claim("finetune_break", "fine-tuning the SAE on a little longer-context data removes the break past the context",
          "-", "past_context", ("past_context", "the-fine-tuning-fix"),
          ("pc_sae_nmse_past", "pc_ft_nmse_past_final", "pc_ft_nmse_in_final", "pc_ft_tokens_final", "pc_full_nmse_past"),
          _finetune_break, "this build has no fine-tuned SAEs or no full-context reference"),
    Claim("finetune_fidelity", "fine-tuning the SAE on a little longer-context data keeps its fidelity inside the context",
          "-", "past_context", ("past_context", "the-fine-tuning-fix"),
          ("pc_sae_nmse_in", "pc_ft_nmse_in_final", "pc_ft_tokens_final"), _finetune_fidelity,
          "this build has no fine-tuned SAEs"),
    Claim("loss", "past the context, the SAE spliced in costs the model much more next-token loss", "-",
          "past_context", ("past_context", "the-next-token-loss-past-the-context"),
          ("pc_loss_sae_in", "pc_loss_sae_past"), _loss, source=COMMENT),
)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the chapters and judging
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LedgerParams(ChapterParams):
    """The ledger's parameters: where the executed chapters it reads are."""

    chapters_dir: str = "build/book/chapters"  # the executed notebooks of the build (possae build sets it)


def read_chapters(chapters_dir: Path | str, chapters: Sequence[str] = CHAPTERS) -> dict[str, dict[str, object]]:
    """Return {chapter: its glued values} from a build's executed notebooks; raise naming any missing notebook."""
    folder = Path(chapters_dir)
    missing = [str(folder / f"{c}.ipynb") for c in chapters if not (folder / f"{c}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"The ledger reads the executed chapters, and {', '.join(missing)} does not exist: run "
                                "`possae build` first (it executes every chapter before the ledger), or point "
                                "chapters_dir at a build that has them.")
    return {c: glued_values(folder / f"{c}.ipynb") for c in chapters}


@dataclasses.dataclass(frozen=True)
class Row:
    """One judged claim: the claim, the study's number, this book's, the verdict and the link to its section."""

    claim: Claim
    book: str
    verdict: Verdict
    model: str = "-"  # the model the chapter's numbers come from (its MODEL_GLUE value)


def judge(claim: Claim, values: Mapping[str, Mapping[str, object]]) -> Row:
    """Return the claim judged on the chapters' glued values ('not run' when its chapter is absent)."""
    if claim.chapter not in values:
        return Row(claim, "-", Verdict(NOT_RUN, f"the {claim.chapter} chapter has not been executed"))
    v = values[claim.chapter]
    model = str(v.get(MODEL_GLUE, "-"))
    if any(name not in v for name in claim.names):
        return Row(claim, "-", Verdict(UNTESTABLE, claim.missing), model)
    book, verdict = claim.judge(v)
    return Row(claim, book, verdict, model)


def link(section: tuple[str, str | None]) -> str:
    """Return the HTML link to a section, relative to the ledger's page."""
    page, anchor = section
    href = f"{page}.html" + (f"#{anchor}" if anchor else "")
    return f'<a href="{href}">{html.escape(SECTIONS[section])}</a>'


def models_sentence(values: Mapping[str, Mapping[str, object]]) -> str:
    """Return which model each executed chapter's numbers come from, grouped by model."""
    by_model: dict[str, list[str]] = {}
    for chapter, v in values.items():
        if MODEL_GLUE in v:
            by_model.setdefault(str(v[MODEL_GLUE]), []).append(chapter)
    if not by_model:
        return "No executed chapter names its model."
    parts = [f"{m} ({', '.join(ch.replace('_', ' ') for ch in chs)})" for m, chs in by_model.items()]
    return ("The numbers come from " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
            + ".")


def count_sentence(counts: Mapping[str, int]) -> str:
    """Return the sentence counting the verdicts."""
    parts = [f"{counts[v]} {v}" for v in (CONFIRMED, REFUTED, UNTESTABLE, NOT_RUN) if counts.get(v)]
    return "Of the " + f"{sum(counts.values())} claims: " + ", ".join(parts) + "."


def list_sentence(rows: Sequence[Row], verdict: str) -> str:
    """Return the sentence listing the claims with one verdict and each reason, or saying there are none."""
    chosen = [r for r in rows if r.verdict.verdict == verdict]
    if not chosen:
        return f"No claim is {verdict}."
    items = "; ".join(f"{r.claim.claim}: {r.verdict.reason}" for r in chosen)
    return f"{verdict.capitalize()} ({len(chosen)}): {items}."


@dataclasses.dataclass
class LedgerResult:
    """Every claim judged, with the model the numbers come from."""

    rows: list[Row]
    models: str  # models_sentence of the chapters read
    values: pd.DataFrame  # every chapter's glued values (chapter, name, value), for the scan of quantities.py

    @property
    def claims(self) -> list[Row]:
        """Return the rows of the studies' and commenters' claims (the ledger proper)."""
        return [r for r in self.rows if r.claim.source != THIS_BOOK]

    @property
    def remedies(self) -> list[Row]:
        """Return the rows of this book's own remedies (its fixes), kept apart from the studies' claims."""
        return [r for r in self.rows if r.claim.source == THIS_BOOK]

    def counts(self, rows: Sequence[Row] | None = None) -> dict[str, int]:
        """Return {verdict: number of rows} for the four verdicts (default: the claims, remedies left out)."""
        rows = self.claims if rows is None else rows
        return {v: sum(r.verdict.verdict == v for r in rows) for v in (CONFIRMED, REFUTED, UNTESTABLE, NOT_RUN)}

    def frame(self, rows: Sequence[Row] | None = None) -> pd.DataFrame:
        """Return one row per claim (default: the claims): claim, source, study, this book (model), verdict, reason,
        section (an HTML link)."""
        rows = self.claims if rows is None else rows
        return pd.DataFrame({"claim": [r.claim.claim for r in rows], "source": [r.claim.source for r in rows],
                             "study": [r.claim.study for r in rows],
                             "this book": [r.book for r in rows], "model": [r.model for r in rows],
                             "verdict": [r.verdict.verdict for r in rows],
                             "reason": [r.verdict.reason for r in rows],
                             "section": [link(r.claim.section) for r in rows]})

    def table_html(self, rows: Sequence[Row] | None = None) -> str:
        """Return the ledger (default: the claims) as an HTML table: text escaped, the section column as real links."""
        df = self.frame(rows)
        if rows is not None and all(r.claim.source == THIS_BOOK for r in rows):  # remedies: no study, one source
            df = df.drop(columns=["source", "study"]).rename(columns={"claim": "remedy"})
        labels = list(df.columns)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
        out = []
        for values in df.itertuples(index=False):
            cells = [html.escape(str(v)) for v in values[:-1]] + [str(values[-1])]  # the section: a link, kept as HTML
            out.append("<tr>" + "".join(f'<td data-label="{html.escape(label)}">{v}</td>'
                                        for label, v in zip(labels, cells)) + "</tr>")
        # data-label names each cell's column, for the cards narrow screens show (possae/book_static/possae.css)
        return (f'<table class="ledger"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(out)
                + "\n</tbody></table>")

    def table(self, rows: Sequence[Row] | None = None):
        """Return the ledger table (default: the claims) for display in a notebook."""
        from IPython.display import HTML

        return HTML(self.table_html(rows))

    def remedies_table(self):
        """Return this book's remedies as a table for display in a notebook."""
        return self.table(self.remedies)

    def glued(self) -> dict[str, object]:
        """Return the values the prose cites (prefix ledger_)."""
        c = self.counts()
        by_source = {src: sum(r.claim.source == src for r in self.claims) for src in SOURCES if src != THIS_BOOK}
        return {"ledger_models_sentence": self.models, "ledger_n_claims": len(self.claims), "ledger_n_confirmed": c[CONFIRMED],
                "ledger_n_refuted": c[REFUTED], "ledger_n_untestable": c[UNTESTABLE], "ledger_n_not_run": c[NOT_RUN],
                "ledger_count_sentence": count_sentence(c) + " " + source_sentence(by_source),
                "ledger_refuted_sentence": list_sentence(self.claims, REFUTED),
                "ledger_untestable_sentence": list_sentence(self.claims, UNTESTABLE),
                "ledger_confirmed_sentence": list_sentence(self.claims, CONFIRMED),
                "ledger_n_remedies": len(self.remedies),
                "ledger_remedies_sentence": remedies_sentence(self.remedies),
                "ledger_quantities_sentence": quantities_sentence(self.values)}

    def quantities(self) -> pd.DataFrame:
        """Return the quantities shown on two or more pages, with their values (quantities.quantity_table)."""
        return quantity_table(self.values)


def source_sentence(by_source: Mapping[str, int]) -> str:
    """Return the sentence saying where the claims come from: how many from each study and from comments."""
    return "By source: " + ", ".join(f"{n} from {src if src != COMMENT else 'comments'}" for src, n in by_source.items()) + "."


def remedies_sentence(rows: Sequence[Row]) -> str:
    """Return the sentence on this book's own remedies: which work (confirmed) and which do not, by the same rules."""
    if not rows:
        return "This build judged none of the book's remedies."
    parts = []
    for verdict, one, many in ((CONFIRMED, "works", "work"), (REFUTED, "does not work", "do not work"),
                               (UNTESTABLE, "cannot be tested here", "cannot be tested here"),
                               (NOT_RUN, "was not run", "were not run")):
        names = [r.claim.claim.split(":")[0] for r in rows if r.verdict.verdict == verdict]
        if names:
            parts.append(f"{len(names)} {one if len(names) == 1 else many} ({', '.join(names)})")
    return f"Of the book's {len(rows)} remedies, " + "; ".join(parts) + "."


def analyze(values: Mapping[str, Mapping[str, object]], claims: Sequence[Claim] = CLAIMS) -> LedgerResult:
    """Return every claim judged on {chapter: glued values} (a chapter absent from it leaves its claims 'not run')."""
    return LedgerResult([judge(c, values) for c in claims], models_sentence(values), values_frame(values))
