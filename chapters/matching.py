# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Feature matching: datasets, seeds, widths, sparsity, architectures and layers
#
# **Overview.** Two SAEs trained on the same residual stream are often said to "find the same features". This chapter
# measures how far that holds by comparing their dictionaries directly: for every feature of one SAE, the best cosine
# similarity between its decoder direction and any decoder direction of the other SAE. The original study found that
# SAEs trained on different datasets share few features, SAEs differing only in their seed share many, and
# architectures fall in between. We repeat the comparisons for SAEs trained on different corpus groups, with different
# seeds, widths, sparsities (k) and architectures, all at one hook, and for SAEs of neighbouring layers; and we check
# how much a best-match count overstates similarity against a one-to-one (Hungarian) matching.
#
# **Prerequisites.** The [setup chapter](setup) (the model organism and its SAE suite). No model is run here: the
# comparisons need only the SAEs' weights. An SAE's decoder row `W_dec[i]` is the direction feature `i` writes into
# the residual stream; its encoder column `W_enc[:, i]` is the direction it reads.

# %% tags=["parameters", "remove-cell"]
model_name = "organism"  # not loaded: matching reads SAE weights only (kept for the shared interface of the book)
sae_release = "organism"  # 'organism', a sae_lens release, or a local folder of sae_lens SAEs; ids below live in it
sae_id = "match-base"  # the base SAE (organism: TopK 16x, k 16, all corpora, layer 2), reference of the chance baseline
device = None  # None picks CUDA when present
threshold = 0.7  # a feature "has a match" when its best cosine is at least this (the threshold of the study)
# Each group lists SAE ids in sae_release or [release, sae_id] pairs; None takes possae.matching.default_groups
# (sae_release): the organism's match-* suite, or for gpt2-small-res-jb its layers, the layer-8 feature-splitting
# widths and the OpenAI TopK SAE at the same point. SAEs that do not exist are dropped; an empty group skips its section.
dataset_ids = None  # SAEs trained on different corpora (every pair is compared)
seed_pairs = None  # [[id_a, id_b], ...]: SAEs trained on the same data with different seeds
width_ids = None  # same data and hook, different widths
k_ids = None  # TopK SAEs with different k
architecture_ids = None  # e.g. TopK, BatchTopK, JumpReLU
layer_ids = None  # {family: ids ordered by layer} (or one list): one SAE per layer, same family
all_layer_pairs = True  # False: only adjacent layers in the heatmap (saves time with many large SAEs)
chunk_size = 2048  # rows per cosine block: 2048 x 24,576 float32 is 200 MB
# Hungarian matching holds the n_a x n_b float64 matrix (4.8 GB at 24,576 features) and takes minutes per pair at that
# size on one CPU core (about 18 s at 8,192); pairs with a larger dictionary skip it
hungarian_max_features = 32768
seed = 0  # seed of the random dictionary of the chance baseline

# %% tags=["remove-cell"]
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from possae.figures import use_offline_renderer
from possae.figures.matching import comparison_figure, layer_heatmap_figure, top_cosine_figure
from possae.matching import (
    STUDY_RANGES,
    Dictionary,
    all_pairs,
    as_ref,
    containment,
    default_groups,
    dictionary_table,
    display_table,
    layer_matrix,
    load_dictionaries,
    match_pair,
    match_pairs,
    random_directions,
    ref_label,
    resolve_ids,
    resolve_pairs,
    top_cosines_long,
    width_pairs,
)

use_offline_renderer()
defaults = default_groups(sae_release)


def group(value, key):
    """Return a group parameter, or the release's default when it is None."""
    return defaults[key] if value is None else value


groups = {name: resolve_ids(group(value, key), sae_release) for name, value, key in [
    ("datasets", dataset_ids, "dataset_ids"), ("widths", width_ids, "width_ids"), ("k", k_ids, "k_ids"),
    ("architectures", architecture_ids, "architecture_ids")]}
seed_refs = resolve_pairs(group(seed_pairs, "seed_pairs"), sae_release)
layer_spec = group(layer_ids, "layer_ids")
layer_spec = layer_spec if isinstance(layer_spec, dict) else {"layers": layer_spec}
layer_refs = {fam: refs for fam, ids in layer_spec.items() if len(refs := resolve_ids(ids, sae_release)) >= 2}
base_ref = as_ref(sae_id, sae_release)
all_refs = [base_ref, *(r for refs in groups.values() for r in refs), *(r for p in seed_refs for r in p),
            *(r for refs in layer_refs.values() for r in refs)]
dicts = load_dictionaries(all_refs, sae_release, device="cpu")
label = lambda ref: ref_label(ref, sae_release)  # noqa: E731
base = dicts[label(base_ref)]
opts = dict(threshold=threshold, chunk_size=chunk_size, device=device, hungarian_max_features=hungarian_max_features)

pairs = {
    "datasets": all_pairs([label(r) for r in groups["datasets"]]),
    "seeds": [(label(a), label(b)) for a, b in seed_refs],
    "widths": width_pairs(dicts, [label(r) for r in groups["widths"]]),
    "k": all_pairs([label(r) for r in groups["k"]]),
    "architectures": all_pairs([label(r) for r in groups["architectures"]]),
}
results = {name: match_pairs(p, dicts, **opts) if p else None for name, p in pairs.items()}


def fmt(df):
    """Return a match table styled for the book."""
    return display_table(df).style.format(precision=3).hide(axis="index")


def share_range(name, prefix):
    """Glue the smallest and largest best-match and Hungarian shares of a comparison (NaN when it was skipped)."""
    t = results.get(name)
    best = t.table["dec_share_small"] if t is not None else pd.Series([np.nan])
    hung = t.table["hungarian_share"] if t is not None else pd.Series([np.nan])
    glue(f"{prefix}_min", float(best.min()), display=False)
    glue(f"{prefix}_max", float(best.max()), display=False)
    glue(f"{prefix}_hmin", float(hung.min()), display=False)
    glue(f"{prefix}_hmax", float(hung.max()), display=False)


def skipped(name, what):
    """Show the sentence that replaces a section without SAEs."""
    display(Markdown(f"*No {what} are given for this release ({sae_release}): this section is skipped. Pass "
                     f"`{name}` to compare your own.*"))


glue("match_n_saes", float(len(dicts)), display=False)
glue("match_threshold", float(threshold), display=False)
glue("match_base", label(base_ref), display=False)
glue("match_base_hook", base.hook_name, display=False)

# %% [markdown]
# ## 1. Measuring how much two dictionaries share
#
# For two dictionaries A and B with unit-norm rows, the cosine matrix `C = A Bᵀ` holds every pair's cosine. From it:
#
# - **best-match share A→B**: the share of A's features whose best cosine in B is at least the threshold
#   ({glue:text}`match_threshold:.2f`), and B→A the other way; tables also give their mean;
# - **MMCS** (mean max cosine similarity): the mean over A's features of their best cosine in B (tables give the mean of
#   both directions);
# - the same two with **encoder** directions (columns of `W_enc`), which need not agree with the decoder's: an encoder
#   direction also has to suppress interference from other features;
# - **Hungarian matching**: the one-to-one pairing of features that maximises the summed cosine
#   (`scipy.optimize.linear_sum_assignment`), its mean matched cosine and share of pairs above the threshold. Best match
#   lets several features of A claim the same feature of B, so it can only overstate the one-to-one share.
#
# Cosines are signed: a feature that writes `-d` is not the feature that writes `d`, since activations are
# nonnegative. `C` is never held whole for best matches: it is computed in blocks of {glue:text}`match_chunk:.0f` rows,
# keeping each row's four best cosines and each column's running four best, so two 24,576-feature dictionaries need a
# few hundred MB; only the Hungarian step holds the full matrix.
#
# **Chance level.** Random directions in `d_in` = {glue:text}`match_d_in:.0f` dimensions have cosines of standard
# deviation about `1/√d_in`, so the threshold sits {glue:text}`match_sigmas:.1f` such standard deviations out. Matching
# the base SAE ({glue:text}`match_base`, {glue:text}`match_base_d_sae:.0f` features, reading {glue:text}`match_base_hook`)
# against as many random directions gives:

# %% tags=["remove-input"]
d_in = base.decoder.shape[1]
rand = random_directions(base.d_sae, d_in, seed)
random_dict = Dictionary("random", "random", "random", base.hook_name, "random", rand, rand)
rand_row, rand_top = match_pair(base, random_dict, **opts)
glue("match_chunk", float(chunk_size), display=False)
glue("match_d_in", float(d_in), display=False)
glue("match_sigmas", float(threshold * np.sqrt(d_in)), display=False)
glue("match_base_d_sae", float(base.d_sae), display=False)
glue("match_rand_mmcs", float(rand_row["dec_mmcs"]), display=False)
glue("match_rand_share", float(rand_row["dec_share"]), display=False)
glue("match_rand_hmean", float(rand_row["hungarian_mean"]), display=False)
fmt(pd.DataFrame([rand_row]))

# %% [markdown]
# Against random directions, {glue:text}`match_rand_share:.1%` of the base SAE's features have a match, its MMCS is
# {glue:text}`match_rand_mmcs:.3f` and its Hungarian mean cosine {glue:text}`match_rand_hmean:.3f`: these are the
# floors against which everything below should be read. An MMCS well above zero does not by itself mean shared features.
#
# ## 2. Different datasets
#
# SAEs with the same recipe trained on different corpus groups (on the organism: children's stories, encyclopedia
# articles, classic books, technical documentation), every pair compared:

# %% tags=["remove-input"]
if results["datasets"] is None:
    skipped("dataset_ids", "SAEs trained on different datasets")
else:
    display(fmt(results["datasets"].table))
share_range("datasets", "match_ds")

# %% [markdown]
# Between corpus groups, {glue:text}`match_ds_min:.1%` to {glue:text}`match_ds_max:.1%` of features (best match,
# mean of both directions) have a counterpart at cosine {glue:text}`match_threshold:.2f`, and
# {glue:text}`match_ds_hmin:.1%` to {glue:text}`match_ds_hmax:.1%` one-to-one.
#
# ## 3. Different seeds
#
# The same data and recipe, only the seed changed (initialisation and data order):

# %% tags=["remove-input"]
if results["seeds"] is None:
    skipped("seed_pairs", "pairs of SAEs that differ only in their seed")
else:
    display(fmt(results["seeds"].table))
share_range("seeds", "match_seed")

# %% [markdown]
# Changing only the seed leaves {glue:text}`match_seed_min:.1%` to {glue:text}`match_seed_max:.1%` of features
# matched ({glue:text}`match_seed_hmin:.1%` to {glue:text}`match_seed_hmax:.1%` one-to-one): the ceiling that a
# comparison between datasets should be measured against, since two runs on the *same* data already disagree on the
# rest.
#
# ## 4. Width
#
# Dictionaries of different sizes on the same data. Here the two directions differ by design: a small dictionary's
# features may be contained in the large one (each has a close partner there) while most of the large one's features,
# finer splits of the same directions, have no partner in the small one.

# %% tags=["remove-input"]
if results["widths"] is None:
    skipped("width_ids", "SAEs of different widths")
    glue("match_w_small", "", display=False)
    glue("match_w_large", "", display=False)
    for key in ("match_w_in", "match_w_rev", "match_w_hung"):
        glue(key, float("nan"), display=False)
else:
    display(fmt(results["widths"].table))
    contain = containment(results["widths"].table)
    extreme = contain.sort_values(["d_sae_small", "d_sae_large"], ascending=[True, False]).iloc[0]
    glue("match_w_small", str(extreme["small"]), display=False)
    glue("match_w_large", str(extreme["large"]), display=False)
    glue("match_w_in", float(extreme["small in large"]), display=False)
    glue("match_w_rev", float(extreme["large in small"]), display=False)
    glue("match_w_hung", float(extreme["Hungarian share"]), display=False)
    display(contain.style.format(precision=3).hide(axis="index"))
share_range("widths", "match_w")

# %% [markdown]
# Containment: {glue:text}`match_w_in:.1%` of the features of {glue:text}`match_w_small` have a partner in
# {glue:text}`match_w_large`, against {glue:text}`match_w_rev:.1%` the other way round; one-to-one,
# {glue:text}`match_w_hung:.1%` of the small dictionary's features keep a partner above the threshold.
#
# ## 5. Sparsity (k)
#
# TopK SAEs that differ only in the number of active features per token:

# %% tags=["remove-input"]
if results["k"] is None:
    skipped("k_ids", "SAEs with different k")
else:
    display(fmt(results["k"].table))
share_range("k", "match_k")

# %% [markdown]
# Between values of k, {glue:text}`match_k_min:.1%` to {glue:text}`match_k_max:.1%` of features are matched.
#
# ## 6. Architecture
#
# The same data, width and target sparsity, different activation functions (TopK, BatchTopK, JumpReLU on the organism):

# %% tags=["remove-input"]
arch_info = dictionary_table(dicts, [label(r) for r in groups["architectures"]])
glue("match_arch_l0_min", float(arch_info["L0"].min()) if len(arch_info) else float("nan"), display=False)
glue("match_arch_l0_max", float(arch_info["L0"].max()) if len(arch_info) else float("nan"), display=False)
if results["architectures"] is None:
    skipped("architecture_ids", "SAEs of different architectures")
else:
    display(arch_info.style.format(precision=1).hide(axis="index"))
    display(fmt(results["architectures"].table))
share_range("architectures", "match_arch")

# %% [markdown]
# Across architectures, {glue:text}`match_arch_min:.1%` to {glue:text}`match_arch_max:.1%` of features are matched
# ({glue:text}`match_arch_hmin:.1%` to {glue:text}`match_arch_hmax:.1%` one-to-one). The first table gives each SAE's
# L0 as recorded when it was trained: from {glue:text}`match_arch_l0_min:.1f` to
# {glue:text}`match_arch_l0_max:.1f` active features per token. A JumpReLU SAE reaches its target sparsity only through
# its penalty, not by construction as TopK does, so where the L0s differ a pair differs in sparsity as well as in
# activation function, and the k section above shows how much sparsity alone moves the share.
#
# ## 7. How close is the second-best match?
#
# A feature's best cosine says whether it has a partner; its 2nd to 4th best say whether it has *several*, as when one
# dictionary splits a feature of the other. Below, each feature's four best decoder cosines for one pair per
# comparison, and the random baseline (dotted):

# %% tags=["remove-input"]
shown = {}
for name, res in results.items():
    if res is not None:
        first = next(iter(res.top))
        shown[first] = res.top[first]
long = pd.concat([top_cosines_long(shown), top_cosines_long({(base.label, "random"): rand_top})], ignore_index=True)
second = long[long["rank"] == 2].groupby("pair", sort=False)["cosine"].apply(lambda c: float((c >= threshold).mean()))
glue("match_second_max", float(second.drop(f"{base.label} → random", errors="ignore").max()) if len(shown) else
     float("nan"), display=False)
top_cosine_figure(long, threshold)

# %% [markdown]
# At most {glue:text}`match_second_max:.1%` of a pair's features have a *second* partner above the threshold: where
# that share is not small, best-match counts several features of one dictionary against one feature of the other.
#
# ## 8. Layer against layer
#
# One SAE per layer, same family. The hooks differ (`blocks.L.hook_resid_pre` and `blocks.L+1.hook_resid_pre`), but
# all of them read the residual stream, in the same `d_model` basis, so decoder directions can be compared across
# layers. Each cell holds the share of the row layer's features with a match in the column layer's dictionary:

# %% tags=["remove-input"]
if not layer_refs:
    skipped("layer_ids", "per-layer SAE families")
    layer_mat = pd.DataFrame(columns=["family", "layer_a", "layer_b", "share", "mmcs"])
    glue("match_dist1", float("nan"), display=False)
    glue("match_distmax", float("nan"), display=False)
else:
    layer_mat = pd.concat([layer_matrix(dicts, [label(r) for r in refs], threshold, chunk_size, device,
                                        adjacent_only=not all_layer_pairs, progress=False).assign(family=fam)
                           for fam, refs in layer_refs.items()], ignore_index=True)
    dist = (layer_mat["layer_a"] - layer_mat["layer_b"]).abs()
    glue("match_dist1", float(layer_mat.loc[dist == 1, "share"].mean()), display=False)
    glue("match_distmax", float(layer_mat.loc[dist == dist.max(), "share"].mean()), display=False)
    display(layer_heatmap_figure(layer_mat, "share", threshold))
    display(layer_heatmap_figure(layer_mat, "mmcs", threshold))

# %% [markdown]
# Adjacent layers in detail, with Hungarian matching:

# %% tags=["remove-input"]
adjacent = []
for fam, refs in layer_refs.items():
    labels = sorted((label(r) for r in refs), key=lambda lab: dicts[lab].layer)
    res = match_pairs(list(zip(labels[:-1], labels[1:])), dicts, **opts, progress=False)
    adjacent.append(res.table.assign(family=fam, layers=[f"{dicts[a].layer}→{dicts[b].layer}"
                                                         for a, b in zip(res.table["a"], res.table["b"])]))
if adjacent:
    adjacent = pd.concat(adjacent, ignore_index=True)
    display(pd.concat([adjacent[["family", "layers"]], display_table(adjacent)], axis=1)
            .style.format(precision=3).hide(axis="index"))
    best_adj = adjacent.loc[adjacent["dec_share"].idxmax()]
    worst_adj = adjacent.loc[adjacent["dec_share"].idxmin()]
    glue("match_adj_best", f"{best_adj['family']} {best_adj['layers']}", display=False)
    glue("match_adj_best_share", float(best_adj["dec_share"]), display=False)
    glue("match_adj_worst", f"{worst_adj['family']} {worst_adj['layers']}", display=False)
    glue("match_adj_worst_share", float(worst_adj["dec_share"]), display=False)
    glue("match_adj_worst_mmcs", float(worst_adj["dec_mmcs"]), display=False)
else:
    adjacent = pd.DataFrame()
    for key in ("match_adj_best", "match_adj_worst"):
        glue(key, "", display=False)
    for key in ("match_adj_best_share", "match_adj_worst_share", "match_adj_worst_mmcs"):
        glue(key, float("nan"), display=False)

# %% [markdown]
# Among adjacent layers, {glue:text}`match_adj_best_share:.1%` of features match for {glue:text}`match_adj_best`,
# against {glue:text}`match_adj_worst_share:.1%` for
# {glue:text}`match_adj_worst` (whose MMCS of {glue:text}`match_adj_worst_mmcs:.3f` compares with the random
# baseline's {glue:text}`match_rand_mmcs:.3f`). Averaged over families and directions, the share matched is
# {glue:text}`match_dist1:.1%` between adjacent layers and {glue:text}`match_distmax:.1%` between the layers farthest
# apart in the heatmaps.
#
# ## 9. Against the study, and best match against one-to-one
#
# The original study, on gpt2-small at threshold 0.7, reported roughly 6-30 % of features matched between SAEs trained
# on different datasets, 55-85 % between seeds, and 40-60 % between architectures. Our pairs, all comparisons together:

# %% tags=["remove-input"]
frames = [r.table.assign(comparison=name) for name, r in results.items() if r is not None]
if len(adjacent):
    frames.append(adjacent.drop(columns=["family", "layers"]).assign(
        comparison=[f"layers ({f})" for f in adjacent["family"]]))
everything = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
rows = []
for comp, g in (everything.groupby("comparison", sort=False) if len(everything) else []):
    lo, hi = STUDY_RANGES.get(comp, (np.nan, np.nan))
    rows.append({"comparison": comp, "pairs": len(g), "study (best match)": f"{lo:.0%}-{hi:.0%}" if lo == lo else "",
                 "best match, min": g["dec_share_small"].min(), "best match, max": g["dec_share_small"].max(),
                 "Hungarian, min": g["hungarian_share"].min(), "Hungarian, max": g["hungarian_share"].max(),
                 "MMCS, mean": g["dec_mmcs"].mean(), "encoder share, mean": g["enc_share"].mean()})
overview = pd.DataFrame(rows)
if len(everything):
    gap = everything["dec_share_small"] - everything["hungarian_share"]
    worst = everything.loc[gap.idxmax()]
    glue("match_gap_mean", 100 * float(gap.mean()), display=False)  # percentage points
    glue("match_gap_max", 100 * float(gap.max()), display=False)
    glue("match_gap_pair", f"{worst['a']} / {worst['b']}", display=False)
    glue("match_enc_mean", float(everything["enc_share"].mean()), display=False)
    glue("match_dec_mean", float(everything["dec_share"].mean()), display=False)
    for comp, key in (("seeds", "match_seed_mean"), ("datasets", "match_ds_mean")):
        g = everything[everything["comparison"] == comp]
        glue(key, float(g["dec_share_small"].mean()) if len(g) else float("nan"), display=False)
    hung_mean_gap = everything["dec_mmcs"] - everything["hungarian_mean"]
    glue("match_mmcs_gap", float(hung_mean_gap.mean()), display=False)
    display(overview.style.format(precision=3).hide(axis="index"))
else:
    for key in ("match_gap_mean", "match_gap_max", "match_enc_mean", "match_dec_mean", "match_mmcs_gap",
                "match_seed_mean", "match_ds_mean"):
        glue(key, float("nan"), display=False)
    glue("match_gap_pair", "", display=False)
    display(Markdown("*No pairs were compared.*"))

# %% tags=["remove-input"]
if len(everything):
    display(comparison_figure(everything, STUDY_RANGES, threshold))

# %% [markdown]
# In the study, SAEs trained on different datasets matched far fewer features than SAEs differing only in their seed;
# here the mean seed pair matches {glue:text}`match_seed_mean:.1%` of features and the mean dataset pair
# {glue:text}`match_ds_mean:.1%`. The levels need not agree with the study's (the grey bands), since the organism's
# SAEs are far smaller than gpt2-small's, live in 128 dimensions instead of 768 and saw about a million training tokens
# each, and the corpus groups are not the study's datasets. Best match overstates: averaged over all
# pairs, the best-match share of the features Hungarian pairs (the smaller dictionary's, or both directions' mean for
# equal sizes) exceeds their one-to-one share by {glue:text}`match_gap_mean:.1f` percentage points (at most
# {glue:text}`match_gap_max:.1f`, for {glue:text}`match_gap_pair`), and the MMCS exceeds the Hungarian mean cosine by
# {glue:text}`match_mmcs_gap:.3f`. Encoder directions match in {glue:text}`match_enc_mean:.1%` of cases against
# {glue:text}`match_dec_mean:.1%` for decoder directions, on average over all pairs: an encoder direction also has to
# suppress interference from the features near it, so two SAEs that write the same direction may read it differently.
#
# ## Summary and what's next
#
# - Decoder matching at cosine {glue:text}`match_threshold:.2f`: {glue:text}`match_ds_min:.1%` to
#   {glue:text}`match_ds_max:.1%` of features across corpus groups, {glue:text}`match_seed_min:.1%` to
#   {glue:text}`match_seed_max:.1%` across seeds, {glue:text}`match_arch_min:.1%` to {glue:text}`match_arch_max:.1%`
#   across architectures; random directions: {glue:text}`match_rand_share:.1%`.
# - Width: {glue:text}`match_w_in:.1%` of the smallest dictionary's features have a partner in the largest, and
#   {glue:text}`match_w_rev:.1%` the other way round.
# - Hungarian matching is the one-to-one count when features may split or merge; best match overstates it by
#   {glue:text}`match_gap_mean:.1f` percentage points on average here.
# - To run the same comparisons on gpt2-small, pass `sae_release="gpt2-small-res-jb"`: its layers, the layer-8
#   feature-splitting widths and OpenAI's TopK SAE at the same point are compared; groups with no SAEs are skipped.
