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
# **Prerequisites.** The [setup chapter](setup) (the model organism and its SAE suite). The comparisons need only the
# SAEs' weights; the model runs on held-out text only to see which features fire and how much each block changes the
# residual stream. An SAE's decoder row `W_dec[i]` is the direction feature `i` writes into the residual stream; its
# encoder column `W_enc[:, i]` is the direction it reads.

# %% tags=["parameters", "remove-cell"]
sae_release = "organism"  # 'organism', a sae_lens release, or a local folder of sae_lens SAEs; ids below live in it
sae_id = "match-base"  # the base SAE (its model is loaded; reference of the chance baseline)
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
control_pairs = None  # [[id_a, id_b], ...]: SAEs at the same hook, the positive control of the layer comparison
all_layer_pairs = True  # False: only adjacent layers in the heatmap (saves time with many large SAEs)
chunk_size = 2048  # rows per cosine block: 2048 x 24,576 float32 is 200 MB
# one-to-one matching: dense Hungarian up to 4096 x 4096 pairs, above that a sparse solve certified optimal against
# every pair (about 30 s and 1.3 GB at 24,576 x 24,576 on 2 CPU cores); pairs with a larger dictionary skip it
hungarian_max_features = 32768
n_heldout_tokens = 16384  # held-out tokens per corpus (firing features, residual-stream change per block)
seed = 0  # seed of the random dictionary of the chance baseline

# %% tags=["remove-cell"]
from possae.figures import use_offline_renderer
from possae.figures.matching import comparison_figure, layer_heatmap_figure, top_cosine_figure
from possae.glued import glue_all
from possae.matching import MatchingParams, analyze, load_inputs

use_offline_renderer()
params = MatchingParams.from_namespace(globals())
model, dictionaries, tokens = load_inputs(params)
result = analyze(model, dictionaries, tokens, params)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## 1. Measuring how much two dictionaries share
#
# For two dictionaries A and B with unit-norm rows, the cosine matrix `C = A Bᵀ` holds every pair's cosine. From it:
#
# - **best-match share A→B**: the share of A's features whose best cosine in B is at least the threshold
#   ({glue:text}`match_threshold:.2f`), and B→A the other way;
# - **MMCS** (mean max cosine similarity): the mean over A's features of their best cosine in B (tables give the mean of
#   both directions);
# - the same with **encoder** directions (columns of `W_enc`), which need not agree with the decoder's;
# - **one-to-one (Hungarian) matching**: the pairing of features that maximises the summed cosine, its share of pairs
#   above the threshold and its mean matched cosine. Best match lets several features of A claim the same feature of
#   B, so it can only overstate the one-to-one share.
#
# Cosines are signed: a feature that writes `-d` is not the feature that writes `d`, since activations are
# nonnegative. `C` is never held whole for best matches: it is computed in blocks of {glue:text}`match_chunk` rows,
# once from each side (A's rows against B, then B's rows against A), keeping each row's {glue:text}`match_best_kept` best
# cosines. One-to-one matching solves the whole
# matrix with `scipy.optimize.linear_sum_assignment` for small pairs (up to {glue:text}`match_dense_side` features
# a side); for larger ones, such as gpt2-small's SAEs, it solves a sparse graph of each feature's best candidates
# (`scipy.sparse.csgraph.min_weight_full_bipartite_matching`) and proves the result optimal for the whole matrix
# from the solution's dual potentials, one more pass over `C` in blocks, adding any pair that breaks the proof and
# solving again.
#
# **Chance level.** Random directions in `d_in` = {glue:text}`match_d_in` dimensions have cosines of standard deviation
# about `1/√d_in`, so the threshold sits {glue:text}`match_sigmas:.1f` such standard deviations out. Matching the base
# SAE ({glue:text}`match_base`, {glue:text}`match_base_d_sae` features, reading {glue:text}`match_base_hook`) against as
# many random directions gives:

# %% tags=["remove-input"]
result.table("random")

# %% [markdown]
# Against random directions, {glue:text}`match_rand_share:.1%` of the base SAE's features have a match, its MMCS is
# {glue:text}`match_rand_mmcs:.3f` and {glue:text}`match_rand_hmean_sentence`: these are the floors against which
# everything below should be read. An MMCS well above zero does not by itself mean shared features.
#
# ## 2. Different datasets
#
# SAEs with the same recipe trained on different corpus groups (on the organism: children's stories, encyclopedia
# articles, classic books, technical documentation), every pair compared:

# %% tags=["remove-input"]
result.table("datasets")

# %% [markdown]
# {glue:text}`match_datasets_sentence`
#
# ## 3. Different seeds
#
# The same data and recipe, only the seed changed (initialisation and data order):

# %% tags=["remove-input"]
result.table("seeds")

# %% [markdown]
# {glue:text}`match_seeds_sentence` Two runs on the *same* data set the ceiling that a comparison between datasets
# should be measured against.
#
# **Is the ceiling still rising?** The same seed pair retrained on other budgets of training tokens, all else equal,
# shows whether two runs converge further with more training. {glue:text}`match_seed_curve_sentence`

# %% tags=["remove-input"]
result.table("seed_curve") if "seed_curve" in result.tables else None

# %% [markdown]
# ## 4. Width
#
# Dictionaries of different sizes on the same data. Here the two directions may differ by design: a small dictionary's
# features may be contained in the large one (each has a close partner there) while the large one's finer features
# have no partner in the small one.

# %% tags=["remove-input"]
result.table("widths")

# %% tags=["remove-input"]
result.table("containment")

# %% [markdown]
# {glue:text}`match_widths_sentence` {glue:text}`match_containment_sentence`
#
# ## 5. Sparsity (k)
#
# TopK SAEs that differ only in the number of active features per token:

# %% tags=["remove-input"]
result.table("k")

# %% [markdown]
# {glue:text}`match_k_sentence`
#
# ## 6. Architecture
#
# The same data, width and target sparsity, different activation functions (TopK, BatchTopK, JumpReLU on the organism):

# %% tags=["remove-input"]
result.table("architectures")

# %% [markdown]
# {glue:text}`match_architectures_sentence` To see why, the next table gives each SAE's L0 as recorded when it was
# trained, how many of its features fire at least once on {glue:text}`match_n_tokens` held-out tokens, and the mean
# cosine between a feature's own encoder column and decoder row, for firing and for silent features:

# %% tags=["remove-input"]
result.table("architecture_info")

# %% [markdown]
# The same pairs, matched over all features and over the features that fire on both sides only:

# %% tags=["remove-input"]
result.table("architecture_live")

# %% [markdown]
# {glue:text}`match_architectures_info_sentence`
#
# ## 7. How close is the second-best match?
#
# A feature's best cosine says whether it has a partner; its 2nd to 4th best say whether it has *several*, as when one
# dictionary splits a feature of the other. Below, each feature's four best decoder cosines for one pair per
# comparison, and the random baseline (dotted):

# %% tags=["remove-input"]
top_cosine_figure(result.top_long, threshold)

# %% [markdown]
# {glue:text}`match_second_sentence`
#
# ## 8. Layer against layer
#
# One SAE per layer, same family. The hooks differ (`blocks.L.hook_resid_pre` and `blocks.L+1.hook_resid_pre`), but
# all of them read the residual stream, in the same `d_model` basis, so decoder directions can be compared across
# layers. Each cell holds the share of the row layer's features with a match in the column layer's dictionary:

# %% tags=["remove-input"]
layer_heatmap_figure(result.layer_matrix, "share", threshold)

# %% tags=["remove-input"]
layer_heatmap_figure(result.layer_matrix, "mmcs", threshold)

# %% [markdown]
# {glue:text}`match_distance_sentence` Adjacent layers in detail, with one-to-one matching:

# %% tags=["remove-input"]
result.table("adjacent")

# %% [markdown]
# How much each block changes the residual stream on held-out text: the mean cosine between the stream entering block
# L (`x_L`) and the stream leaving it (`x_L+1`), the median norm of the block's output `x_L+1 - x_L` relative to
# `x_L`, and the share of the variance of `x_L+1` that `x_L` itself explains (`1 - Σ‖x_L+1 - x_L‖² / Σ‖x_L+1 - mean‖²`,
# the explained variance of the SAE chapters with `x_L` as the reconstruction):

# %% tags=["remove-input"]
result.table("blocks")

# %% [markdown]
# And the positive control: SAEs that read the same hook, matched against each other:

# %% tags=["remove-input"]
result.table("controls")

# %% [markdown]
# {glue:text}`match_layers_sentence`
#
# ## 9. Against the study, and best match against one-to-one
#
# The original study, on gpt2-small at threshold 0.7, reported roughly 6-30 % of features matched between SAEs trained
# on different datasets, 55-85 % between seeds, and 40-60 % between architectures. Our pairs, all comparisons together
# (best match: of the smaller dictionary's features, or both directions' mean for equal sizes):

# %% tags=["remove-input"]
result.table("overview")

# %% tags=["remove-input"]
comparison_figure(result.everything, threshold)

# %% [markdown]
# {glue:text}`match_study_sentence` The levels need not agree with the study's (the grey bands) wherever the model,
# the SAEs' size and training or the datasets differ from the study's, as they do on the organism.
# {glue:text}`match_encoder_sentence`
#
# ## Summary and what's next
#
# - {glue:text}`match_summary_sentence`
# - {glue:text}`match_containment_sentence`
# - {glue:text}`match_layers_sentence`
# - To run the same comparisons on gpt2-small, pass `sae_release="gpt2-small-res-jb"`: its layers, the layer-8
#   feature-splitting widths and OpenAI's TopK SAE at the same point are compared; groups with no SAEs are skipped.
# - The [past-context](past_context) chapter returns to the layer-0 SAE past its context, and the
#   [claims ledger](ledger) gathers every checkable claim of the two studies with this book's verdict.
