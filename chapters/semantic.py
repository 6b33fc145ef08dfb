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
# **Overview.** Most features of a layer-0 SAE respond to *which* token is present, not *where* it is. This
# chapter measures that, exactly, over every (token, position) input the SAE can see at layer 0: how much of each
# feature's variance the token explains, which features a few common tokens switch on and whether those ignore
# position, and which features are the most position-invariant of all.
#
# **Prerequisites.** The [setup](setup) chapter (the model and the SAE) and the [positional features](positional)
# chapter (the exact layer-0 statistics, the split of a feature's pre-activation into a token part and a position
# part, and the positional score `R²_pos`).

# %% tags=["parameters", "remove-cell"]
model_name = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
sae_release = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE (blocks.0.hook_resid_pre)
device = None  # None picks CUDA when present
tokens_of_interest = [" the", " and", " said", "."]  # strings that are one token each (mind the leading space)
top_k = 5  # features shown per token of interest
threshold = 0.5  # a feature is semantic when the token explains at least this share of its variance (R²_tok)

# %% tags=["remove-cell"]
import pandas as pd
from IPython.display import display
from myst_nb import glue

from possae.figures import use_offline_renderer
from possae.figures.semantic import (
    invariant_profiles_figure,
    score_curve_figure,
    token_profiles_figure,
    variation_figure,
)
from possae.layer0_stats import layer0_stats_from_model
from possae.tokenizer import decode_tokens
from possae.loaders import load_model_and_sae
from possae.hooks import require_layer0
from possae.positional import POSITIONAL_R2
from possae.semantic import (
    alive_features,
    chosen_token_means,
    in_context_positions,
    most_invariant_features,
    pair_profiles,
    position_invariance_frame,
    scores_frame,
    semantic_counts,
    single_token_ids,
    sorted_scores_frame,
    token_activation_vs_position,
    token_top_features_frame,
    variation_over_positions,
)

use_offline_renderer()
model, sae = load_model_and_sae(sae_release, sae_id, device=device, model_name=model_name)
require_layer0(sae, "The semantic-features chapter")
token_ids = single_token_ids(model.tokenizer, tokens_of_interest, model.cfg.d_vocab)  # fails early on a bad string
context_size = sae.cfg.metadata.context_size or model.cfg.n_ctx
n_ctx = model.cfg.n_ctx
positions = in_context_positions(context_size, n_ctx)  # 1..context_size-1: position 0 always held BOS in training
stats = layer0_stats_from_model(model, sae, positions=positions, device=device)  # exact, every token x those positions
glue("sem_context", int(context_size), display=False)
glue("sem_n_ctx", int(n_ctx), display=False)
glue("sem_last_pos", int(positions[-1]), display=False)
glue("sem_d_vocab", int(model.cfg.d_vocab), display=False)
glue("sem_threshold", float(threshold), display=False)

# %% [markdown]
# ## How much of each feature is token identity
#
# At `blocks.0.hook_resid_pre` the SAE reads `x(t, p) = W_E[t] + W_pos[p]`, so feature `i`'s activation
# `f_i(t, p)` is a function of a token and a position. Take the tokens uniformly over the whole vocabulary
# ({glue:text}`sem_d_vocab` tokens) and the positions uniformly over `1..`{glue:text}`sem_last_pos`: the positions
# inside the SAE's training context of {glue:text}`sem_context` tokens that held ordinary tokens (position 0 always
# held BOS). Over this joint distribution the *token score* of a feature is
#
# $$R^2_{\mathrm{tok}} = \frac{\operatorname{Var}_t\big(\mathbb{E}_p f_i(t, p)\big)}{\operatorname{Var} f_i},$$
#
# the share of its variance explained by the token alone (the positional score `R²_pos` swaps the roles). Since
# tokens and positions are independent, `R²_tok + R²_pos <= 1`; the rest is their interaction, which exists only
# because the activation function clips the additive pre-activation `a_i(t) + c_i(p)`. All of it is computed exactly
# from the split of the pre-activation, with no sampling.
#
# **Criterion.** A feature is *semantic* when `R²_tok >=` {glue:text}`sem_threshold:.2f` (the parameter `threshold`):
# the token explains most of its variance. With a threshold of at least 0.5 no feature can be both semantic and
# positional (`R²_pos >= 0.5`).

# %% tags=["remove-input"]
counts = semantic_counts(stats, threshold, POSITIONAL_R2)
scores = scores_frame(stats, threshold)
alive = alive_features(stats)
interaction = (1 - stats.r2_tok - stats.r2_pos)[alive]
for key in ("n_features", "n_alive", "n_semantic", "n_positional", "n_neither_alive"):
    glue(f"sem_{key}", int(counts[key]), display=False)
for key in ("semantic_share", "semantic_share_alive", "median_r2_tok_alive"):
    glue(f"sem_{key}", float(counts[key]), display=False)
glue("sem_median_interaction", float(interaction.median()) if len(interaction) else float("nan"), display=False)
kinds = {"all features": counts["n_features"], "live (fire on some input)": counts["n_alive"],
         f"semantic (R²_tok >= {threshold:g})": counts["n_semantic"],
         f"positional (R²_pos >= {POSITIONAL_R2:g})": counts["n_positional"],
         "live, neither": counts["n_neither_alive"]}
display(pd.DataFrame({"features": kinds.values(), "share of all": [v / counts["n_features"] for v in kinds.values()]},
                     index=list(kinds)).style.format({"share of all": "{:.1%}"}))
score_curve_figure(sorted_scores_frame(stats), scores, threshold)

# %% [markdown]
# Of the {glue:text}`sem_n_features` features, {glue:text}`sem_n_alive` fire on some input and
# **{glue:text}`sem_n_semantic` are semantic** ({glue:text}`sem_semantic_share:.1%` of all features,
# {glue:text}`sem_semantic_share_alive:.1%` of the live ones); {glue:text}`sem_n_positional` are positional and
# {glue:text}`sem_n_neither_alive` live features are neither. The median token score of a live feature is
# {glue:text}`sem_median_r2_tok_alive:.3f`, and the median share left to the interaction of token and position is
# {glue:text}`sem_median_interaction:.3f`: on its own training positions, a typical feature of this SAE is a
# function of the token.
#
# **Which positions count.** The count depends on the positions the variance is taken over. Adding position 0 (the
# BOS slot, where the [positional features](positional) chapter finds many features peak), and then every position
# up to the model's `n_ctx`, including those past the SAE's context:

# %% tags=["remove-input"]
ranges = {f"1..{positions[-1]} (this chapter)": stats}
if positions.start > 0:
    ranges[f"0..{context_size - 1}"] = layer0_stats_from_model(model, sae, positions=range(context_size), device=device,
                                                               progress=False)
if context_size < n_ctx:
    ranges[f"0..{n_ctx - 1} (all)"] = layer0_stats_from_model(model, sae, device=device, progress=False)
by_range = pd.DataFrame({name: semantic_counts(st, threshold, POSITIONAL_R2) for name, st in ranges.items()}).T
by_range = by_range[["n_semantic", "semantic_share", "n_positional", "median_r2_tok_alive"]]
last = by_range.iloc[-1]
glue("sem_all_range", str(by_range.index[-1]), display=False)
glue("sem_all_n_semantic", int(last.n_semantic), display=False)
glue("sem_all_share", float(last.semantic_share), display=False)
glue("sem_all_n_positional", int(last.n_positional), display=False)
by_range.astype({"n_semantic": int, "n_positional": int}).style.format(
    {"semantic_share": "{:.1%}", "median_r2_tok_alive": "{:.3f}"})

# %% [markdown]
# Over positions {glue:text}`sem_all_range`, {glue:text}`sem_all_n_semantic` features
# ({glue:text}`sem_all_share:.1%`) are semantic and {glue:text}`sem_all_n_positional` positional. When the last row
# reaches past the SAE's context (it does unless the SAE was trained on full `n_ctx` windows), a lower count there
# means that features which are token features on the positions the SAE was trained on stop being so past them:
# their position part `c_i(p)` takes values it never took in training (see the
# [length generalization](length_generalization) chapter). Everything else in this chapter uses the positions
# `1..`{glue:text}`sem_last_pos`.

# %% [markdown]
# ## Common tokens and their top features
#
# For each token of interest, its top {glue:text}`sem_top_k` features by mean activation over the positions
# `1..`{glue:text}`sem_last_pos` (exact), with each feature's scores and the *variation over positions* of its
# activation on that token: the coefficient of variation `cv = std_p f_i(t, p) / mean_p f_i(t, p)` over the same
# positions (population standard deviation). A pure token feature has `cv = 0`. The figure draws the activation on
# the token at every one of the model's {glue:text}`sem_n_ctx` positions, inside the SAE's context and past it: flat
# lines are token features, bumps mean that position enters.

# %% tags=["remove-input"]
glue("sem_top_k", int(top_k), display=False)
labels = dict(zip(token_ids, decode_tokens(model.tokenizer, token_ids)))
means = chosen_token_means(model.W_E, model.W_pos, sae, token_ids, positions=positions, device=device)
top = token_top_features_frame(means, token_ids, top_k)
top.insert(1, "string", [labels[t] for t in top.token])
top["r2_tok"] = stats.r2_tok[top.feature.tolist()].numpy()
top["r2_pos"] = stats.r2_pos[top.feature.tolist()].numpy()
top["cv"] = variation_over_positions(pair_profiles(model.W_E, model.W_pos, sae, top.token.values, top.feature.values,
                                                   positions=positions, device=device)).numpy()
top["semantic"] = top.r2_tok >= threshold
glue("sem_tok_semantic_share", float(top.semantic.mean()), display=False)
glue("sem_tok_n_pairs", int(len(top)), display=False)
glue("sem_tok_cv_median", float(top.cv.median()), display=False)
glue("sem_tok_cv_sem_median", float(top.cv[top.semantic].median()) if top.semantic.any() else float("nan"),
     display=False)
glue("sem_tok_cv_other_median", float(top.cv[~top.semantic].median()) if (~top.semantic).any() else float("nan"),
     display=False)
glue("sem_tok_n_other", int((~top.semantic).sum()), display=False)
display(top.set_index(["string", "rank"]).drop(columns="token").style.format(
    {"mean_activation": "{:.3f}", "r2_tok": "{:.3f}", "r2_pos": "{:.4f}", "cv": "{:.3f}"}))
profiles = pd.concat([token_activation_vs_position(model.W_E, model.W_pos, sae, t, top.feature[top.token == t].values,
                                                   device=device) for t in token_ids], ignore_index=True)
token_profiles_figure(profiles, labels, context_size)

# %% [markdown]
# Of these {glue:text}`sem_tok_n_pairs` (token, feature) pairs, {glue:text}`sem_tok_semantic_share:.0%` involve a
# semantic feature. Their activation on the token varies little over the positions: the median `cv` is
# {glue:text}`sem_tok_cv_sem_median:.3f` for the semantic features, against {glue:text}`sem_tok_cv_other_median:.3f`
# for the {glue:text}`sem_tok_n_other` others (NaN when there are none): those are the lines with bumps, features
# that a token only drives at some positions. Past the SAE's context the lines may change; the
# [length generalization](length_generalization) chapter studies that.

# %% [markdown]
# ## The most position-invariant features
#
# **Measure.** For every feature, its top token `t*` is the token with the largest mean activation over the
# positions `1..`{glue:text}`sem_last_pos`, found exactly over the whole vocabulary (streamed, no vocabulary x
# features matrix is held). The feature's *variation over positions* is the `cv` of its activation on `t*` over
# those positions; the table also gives the mean `cv` over its top five tokens (those with a positive mean). The
# most position-invariant features are the semantic ones (`R²_tok >=` {glue:text}`sem_threshold:.2f`) that fire on
# their top token, ranked by increasing `cv`. Activations on `t*` at each position come from the exact split
# `a_i(t*) + c_i(p)` (or from `sae.encode` for SAEs the split does not cover).

# %% tags=["remove-input"]
frame = position_invariance_frame(model.W_E, model.W_pos, sae, stats, n_top_tokens=5, device=device, progress=False)
best = most_invariant_features(frame, threshold, n=12)
fires = frame[(frame.top_mean > 0) & frame.cv.notna()]
sem_cv = fires.cv[fires.r2_tok >= threshold]
other_cv = fires.cv[fires.r2_tok < threshold]
glue("sem_inv_median_sem", float(sem_cv.median()) if len(sem_cv) else float("nan"), display=False)
glue("sem_inv_median_other", float(other_cv.median()) if len(other_cv) else float("nan"), display=False)
glue("sem_inv_n_other", int(len(other_cv)), display=False)
glue("sem_inv_share_below_5", float((sem_cv < 0.05).mean()) if len(sem_cv) else float("nan"), display=False)
glue("sem_inv_everywhere", float(fires.fires_everywhere[fires.r2_tok >= threshold].mean()) if len(sem_cv)
     else float("nan"), display=False)
if len(best):
    table = best.assign(top_tokens=[", ".join(decode_tokens(model.tokenizer, t)) for t in best.top_tokens])
    table = table[["r2_tok", "r2_pos", "firing_rate", "top_mean", "cv", "cv_top_n", "top_tokens"]]
    glue("sem_inv_best_feature", int(best.index[0]), display=False)
    glue("sem_inv_best_cv", float(best.cv.iloc[0]), display=False)
    glue("sem_inv_best_token", decode_tokens(model.tokenizer, [int(best.top_token.iloc[0])])[0], display=False)
    glue("sem_inv_best_mean", float(best.top_mean.iloc[0]), display=False)
    display(table.style.format({"r2_tok": "{:.4f}", "r2_pos": "{:.5f}", "firing_rate": "{:.2%}", "top_mean": "{:.3f}",
                                "cv": "{:.4f}", "cv_top_n": "{:.4f}"}))
else:
    print(f"No feature has R²_tok >= {threshold} and fires on its top token.")
    for key in ("feature", "cv", "token", "mean"):
        glue(f"sem_inv_best_{key}", float("nan"), display=False)
variation_figure(frame, threshold)

# %% tags=["remove-input"]
if len(best):
    shown = best.head(6)
    prof = pd.concat([token_activation_vs_position(model.W_E, model.W_pos, sae, int(t), [int(i)], device=device)
                      for i, t in zip(shown.index, shown.top_token)], ignore_index=True)
    names = {int(i): f"feature {i} on {s}" for i, s in zip(shown.index, decode_tokens(model.tokenizer, shown.top_token))}
    display(invariant_profiles_figure(prof, names, context_size))

# %% [markdown]
# The most position-invariant feature, {glue:text}`sem_inv_best_feature`, fires on its top token
# {glue:text}`sem_inv_best_token` with a mean activation of {glue:text}`sem_inv_best_mean:.3f` and a `cv` of only
# {glue:text}`sem_inv_best_cv:.4f` over the positions. Over all semantic features the median `cv` on the top token
# is {glue:text}`sem_inv_median_sem:.3f` ({glue:text}`sem_inv_share_below_5:.0%` are below 0.05, and
# {glue:text}`sem_inv_everywhere:.0%` fire on their top token at every position), against
# {glue:text}`sem_inv_median_other:.3f` for the {glue:text}`sem_inv_n_other` other features that fire on theirs: the
# token score and the variation over positions tell the same story from two sides. The last figure follows the most
# invariant features past the SAE's context too, where their position part `c_i(p)` meets rows of `W_pos` the SAE
# never saw.

# %% [markdown]
# ## Summary
#
# - Over every token and the positions `1..`{glue:text}`sem_last_pos` of its training context, exactly,
#   **{glue:text}`sem_n_semantic` of the SAE's {glue:text}`sem_n_features` features
#   ({glue:text}`sem_semantic_share:.1%`) are semantic** (`R²_tok >=` {glue:text}`sem_threshold:.2f`), against
#   {glue:text}`sem_n_positional` positional ones; the median token score of a live feature is
#   {glue:text}`sem_median_r2_tok_alive:.3f`. Over positions {glue:text}`sem_all_range` the count is
#   {glue:text}`sem_all_n_semantic` ({glue:text}`sem_all_share:.1%`).
# - The top {glue:text}`sem_top_k` features of the tokens of interest are semantic in
#   {glue:text}`sem_tok_semantic_share:.0%` of cases, with a median variation over positions of
#   {glue:text}`sem_tok_cv_sem_median:.3f` for the semantic ones.
# - On its top token, a semantic feature's activation varies by a median `cv` of
#   {glue:text}`sem_inv_median_sem:.3f` over the positions (other features: {glue:text}`sem_inv_median_other:.3f`);
#   the most invariant, feature {glue:text}`sem_inv_best_feature`, by {glue:text}`sem_inv_best_cv:.4f`.
#
# **What's next.** The [length generalization](length_generalization) chapter asks what these features do past the
# SAE's context, where the position part of their input is new.
