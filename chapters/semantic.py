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
# # Semantic features
#
# **Overview.** A feature of a layer-0 SAE can respond to *which* token is present, to *where* it is, or to both.
# This chapter measures, exactly, over every (token, position) input the SAE can see at layer 0: how much of each
# feature's variance the token explains, which features a few common tokens switch on and whether those ignore
# position, and which features are the most position-invariant of all.
#
# **Prerequisites.** The [setup](setup) chapter (the model and the SAE) and the [positional features](positional)
# chapter (the exact layer-0 statistics, the split of a feature's pre-activation into a token part and a position
# part, and the positional score `R²_pos`).

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default: GPT-2's own W_pos), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # an organism's name, a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE (blocks.0.hook_resid_pre)
device = None  # None picks CUDA when present
tokens_of_interest = [" the", " and", " said", "."]  # strings that are one token each (mind the leading space)
top_k = 5  # features shown per token of interest
threshold = 0.5  # a feature is semantic when the token explains at least this share of its variance (R²_tok)
n_heldout_tokens = 16384  # held-out text tokens per corpus, for the share of firings each kind of feature carries

# %% tags=["remove-cell"]
from IPython.display import display

from possae import semantic
from possae.figures import use_offline_renderer
from possae.figures.semantic import (
    invariant_profiles_figure,
    score_curve_figure,
    token_profiles_figure,
    variation_figure,
)
from possae.glued import glue_all
from possae.loaders import load_model_and_sae
from possae.neuronpedia import show

params = semantic.SemanticParams.from_namespace(globals())
use_offline_renderer()
model, sae = load_model_and_sae(params.sae_release, params.sae_id, device=params.device, model_name=params.model_name)
result = semantic.analyze(model, sae, params)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## How much of each feature is token identity
#
# At `blocks.0.hook_resid_pre` the SAE reads `x(t, p) = W_E[t] + W_pos[p]`, so feature `i`'s activation
# `f_i(t, p)` is a function of a token and a position. Take the tokens uniformly over the whole vocabulary
# ({glue:text}`sem_d_vocab` tokens) and the positions uniformly over
# {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos`: the positions inside the SAE's training context of
# {glue:text}`sem_context` tokens that held ordinary tokens (position 0 always held BOS). The
# [positional features](positional) chapter counts over the same positions. Over this joint distribution the
# *token score* of a feature is
#
# $$R^2_{\mathrm{tok}} = \frac{\operatorname{Var}_t\big(\mathbb{E}_p f_i(t, p)\big)}{\operatorname{Var} f_i},$$
#
# the share of its variance explained by the token alone (the positional score `R²_pos` swaps the roles). Since
# tokens and positions are independent, `R²_tok + R²_pos <= 1`; the rest is their interaction, which exists only
# because the activation function clips the additive pre-activation `a_i(t) + c_i(p)`. All of it is computed exactly
# from the split of the pre-activation, with no sampling.
#
# **Criterion.** A feature is *semantic* when `R²_tok >=` {glue:text}`sem_threshold` (the parameter `threshold`):
# the token explains that share of its variance. It is *positional* when `R²_pos >=`
# {glue:text}`sem_positional_threshold` and it fires somewhere, as in the positional chapter.
# {glue:text}`sem_both_sentence`

# %% tags=["remove-input"]
display(result.kinds_table)
score_curve_figure(result.curve, result.scores, params.threshold)

# %% [markdown]
# Of the {glue:text}`sem_n_features` features, **{glue:text}`sem_n_semantic` are semantic**
# ({glue:text}`sem_semantic_share:.1%`). {glue:text}`sem_counts_sentence` {glue:text}`sem_typical_sentence`
#
# **Position-modulated features.** Since `R²_tok + R²_pos ≤ 1`, no feature can pass both thresholds, so counting
# features that are "both" tests nothing. What mixes the two is the rest of a feature's variance, the interaction of
# token and position `1 - R²_tok - R²_pos`, and what matters is how much of the text such features carry. So each is
# weighted by held-out text: the SAE reads `W_E[t] + W_pos[p]` for every token of the held-out windows at positions
# {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos` (special tokens left out), and its firings (input-feature
# pairs with a positive activation) and activation mass are pooled over all of them.
# {glue:text}`sem_entangled_sentence`
#
# **Which positions count.** The counts depend on the positions the variance is taken over. The table adds position 0
# (the BOS slot, which never held an ordinary token in training), and then every position up to the model's `n_ctx`
# ({glue:text}`sem_n_ctx`) when the SAE's context is shorter:

# %% tags=["remove-input"]
result.ranges_table

# %% [markdown]
# {glue:text}`sem_range_sentence` The [length generalization](length_generalization) chapter studies what these
# features do past the context. Everything else in this chapter uses the positions
# {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos`.

# %% [markdown]
# ## Common tokens and their top features
#
# For each token of interest, its top {glue:text}`sem_top_k` features by mean activation over the positions
# {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos` (exact), with each feature's scores and the *variation over
# positions* of its activation on that token: the coefficient of variation `cv = std_p f_i(t, p) / mean_p f_i(t, p)`
# over the same positions (population standard deviation). A pure token feature has `cv = 0`. The figure draws the
# activation on the token at every one of the model's {glue:text}`sem_n_ctx` positions, inside the SAE's context and
# past it: each panel is one token, and each line is named, coloured and ranked as in the table (`#rank feature i`).
# Flat lines are token features; bumps mean that position enters.

# %% tags=["remove-input"]
display(show(result.top_table))
token_profiles_figure(result.token_profiles, result.context_size, pages=result.pages)

# %% [markdown]
# {glue:text}`sem_pairs_sentence` A higher `cv` means a line with bumps: a feature that the token drives more at
# some positions than at others. {glue:text}`sem_links_sentence`

# %% [markdown]
# ## The most position-invariant features
#
# **Measure.** For every feature, its top token `t*` is the token with the largest mean activation over the
# positions {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos`, found exactly over the whole vocabulary
# (streamed, no vocabulary x features matrix is held). The feature's *variation over positions* is the `cv` of its
# activation on `t*` over those positions; the table also gives the mean `cv` over its top
# {glue:text}`sem_n_top_tokens` tokens (those with a positive mean). The most position-invariant features are the
# semantic ones (`R²_tok >=` {glue:text}`sem_threshold`) that fire on their top token, ranked by increasing `cv`.
# Activations on `t*` at each position come from the exact split `a_i(t*) + c_i(p)` (or from `sae.encode` for SAEs
# the split does not cover). The first figure compares the `cv` of semantic and other features; the second follows
# the first features of the table on their top tokens at every position, past the SAE's context too, where their
# position part `c_i(p)` meets rows of `W_pos` the SAE never saw.

# %% tags=["remove-input"]
display(result.invariant_table.style)
display(variation_figure(result.invariance, params.threshold))
invariant_profiles_figure(result.best_profiles, result.context_size, pages=result.pages)

# %% [markdown]
# {glue:text}`sem_inv_sentence`

# %% [markdown]
# ## Summary
#
# - Over every token and the positions {glue:text}`sem_first_pos`..{glue:text}`sem_last_pos` of its training
#   context, exactly, **{glue:text}`sem_n_semantic` of the SAE's {glue:text}`sem_n_features` features
#   ({glue:text}`sem_semantic_share:.1%`) are semantic** (`R²_tok >=` {glue:text}`sem_threshold`), against
#   {glue:text}`sem_n_positional` positional ones. Over positions {glue:text}`sem_all_range` the count is
#   {glue:text}`sem_all_n_semantic` ({glue:text}`sem_all_share:.1%`).
# - {glue:text}`sem_pairs_summary`
# - {glue:text}`sem_inv_summary`
#
# **What's next.** The [length generalization](length_generalization) chapter asks what these features do past the
# SAE's context, where the position part of their input is new.
