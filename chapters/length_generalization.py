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
# # Length generalization: a layer-0 SAE past its training context
#
# **Overview.** An SAE is trained on windows of `context_size` tokens, often fewer than the model's `n_ctx`
# (`gpt2-small-res-jb` saw 128 of GPT-2's 1024 positions). At layer 0 its input is exactly
# `x(t, p) = W_E[t] + W_pos[p]`, so every position `p >= context_size` brings a row of `W_pos` the SAE never saw.
# This chapter measures what that does: the reconstruction error at every position, on held-out text and over the
# whole vocabulary; what the positional features do past the context; how often features fire on tokens that never
# fire them inside it; and how well four remedies work.
#
# **Prerequisites.** The [setup](setup) chapter (the model, the SAE, `W_pos`, the error measures) and the
# [positional features](positional) chapter (the exact split of a layer-0 pre-activation into a token part
# `a_i(t)` and a position part `c_i(p)`, and the share of a feature's variance explained by position, `R²_pos`).

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default: GPT-2's own W_pos), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # an organism's name, a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE trained on contexts shorter than n_ctx
device = None  # None picks CUDA when present
control_sae_id = "relu-full"  # the same SAE trained on full n_ctx contexts (same release); None: no control
n_heldout_tokens = 16384  # held-out text tokens per corpus (as in the setup chapter)
n_vocab_sample = 256  # tokens sampled from the vocabulary for the all-token curves (intervals in section 1); the whole vocabulary if larger
seed = 0  # the sample of vocabulary tokens for the all-token curves

# %% tags=["remove-cell"]
from IPython.display import display

from possae import length
from possae.figures import use_offline_renderer
from possae.figures.length import (
    error_vs_position_figure,
    example_profile_figure,
    firing_by_kind_figure,
    positional_profiles_figure,
    spurious_rate_figure,
)
from possae.glued import glue_all
from possae.neuronpedia import FeaturePages

use_offline_renderer()
params = length.LengthParams.from_namespace(globals())
model, sae, control = length.load_subjects(params)
result = length.analyze(model, sae, params, control)
pages = FeaturePages(params.sae_release, params.sae_id)  # the SAE's Neuronpedia pages (none for the organism)
glue_all(result.glued() | pages.glued("len", "the lines under the figures"), model=model)

# %% [markdown]
# ## Reconstruction error at every position
#
# **Measures.** The same as in the setup chapter and in sae_lens's evals. For a set of inputs `x` with
# reconstructions `x̂`, the *MSE* is the mean of `||x - x̂||²` (summed over the `d_model` dimensions) and the
# *nMSE* is `Σ ||x - x̂||² / Σ ||x - x̄||²`, `x̄` the inputs' mean: one minus the explained variance. Per position `p`,
# the curves below divide the MSE at `p` by the variance of the inputs *inside the context*, positions
# {glue:text}`len_inside` (position 0 always holds the BOS token), so that one number divides every point: the
# input-weighted mean of the curve inside the context is the nMSE there, and past the context it is the MSE there
# over that same variance. Special tokens (BOS) are left out everywhere, as in sae_lens's evals.
#
# **Baselines.** Three reconstructions that know nothing of the individual input's direction, each computed on both
# distributions, with `u` uniform on the unit sphere, independently for each input. A random vector's error is taken
# exactly, as its expectation over `u` (no vector is drawn: `E||x - r u||² = ||x||² + r²`, since `E u = 0`):
#
# - *random, input's norm*: `x̂ = ||x|| u`, a random vector of the same norm as the input, the study's baseline.
#   Its expected squared error is `2 ||x||²`, whatever the SAE does.
# - *random, reconstruction's norm*: `x̂ = ||x̂_SAE|| u`, as long as the SAE's own output. Its expected squared error,
#   `||x||² + ||x̂_SAE||²`, grows with that output: where the SAE's output is far too long, this baseline is as bad as
#   the SAE for that reason alone, so matching it does not make the SAE "as good as random".
# - *mean input*: the constant `x̄`, the mean of the inputs inside the context of the same distribution. Its nMSE
#   inside the context is 1 by definition.
#
# **Two distributions.** (1) *Held-out text*: {glue:text}`len_heldout_inputs:,` tokens from the held-out documents of
# every corpus in the evaluation pack, in windows of the model's full `n_ctx` = {glue:text}`len_n_ctx` tokens, read at
# `blocks.0.hook_resid_pre`; (2) *all tokens*: `x = W_E[t] + W_pos[p]` for {glue:text}`len_vocab_sample` tokens `t`
# drawn uniformly from the vocabulary (special tokens left out) and every position `p >= 1`. On this text the
# largest gap between `hook_resid_pre` and `hook_embed + hook_pos_embed` is {glue:text}`len_input_gap:.1e`: the
# input is exactly the sum of the two embeddings.
#
# **The setup chapter's figure.** In windows of its own {glue:text}`len_context` positions, exactly as the setup
# chapter measures it (sae_lens's evals over {glue:text}`len_setup_tokens:,` held-out tokens), the SAE explains
# {glue:text}`len_setup_explained_variance:.1%` of the variance: nMSE {glue:text}`len_setup_nmse:.3f`. In the longer
# windows used here, positions {glue:text}`len_inside` give an nMSE of {glue:text}`len_heldout_in:.3f`: the same
# measure on a different sample of the same text.

# %% tags=["remove-input"]
result.error_table

# %% tags=["remove-input"]
error_vs_position_figure({"held-out text": result.heldout_curves, "all tokens": result.alltok_curves},
                         result.context_size, metrics=("mse", "nmse"),
                         methods=[length.SAE_LABEL, *length.BASELINE_LABELS],
                         title="Reconstruction error vs position (log scale)")

# %% [markdown]
# On held-out text the SAE's nMSE is {glue:text}`len_heldout_in:.3f` inside its context (MSE
# {glue:text}`len_heldout_mse_in:.3g`) and {glue:text}`len_heldout_past_text` past it (MSE
# {glue:text}`len_heldout_mse_past_text`), {glue:text}`len_heldout_change`. Over the all-token distribution it is
# {glue:text}`len_alltok_in:.3f` inside and {glue:text}`len_alltok_past_text` past it,
# {glue:text}`len_alltok_change`. {glue:text}`len_alltok_interval_sentence` An nMSE above 1 means a squared error
# larger than the in-context inputs' total variance. {glue:text}`len_random_sentence` The constant mean input leaves {glue:text}`len_heldout_mean_past_text`
# past the context on held-out text ({glue:text}`len_alltok_mean_past_text` over all tokens), and the two random
# vectors {glue:text}`len_heldout_rand_past_text` (input's norm) and {glue:text}`len_heldout_randrec_past_text`
# (reconstruction's norm); over all tokens, {glue:text}`len_alltok_rand_past_text` and
# {glue:text}`len_alltok_randrec_past_text`. The next two sections find which features are responsible.

# %% [markdown]
# ## Positional features past the context
#
# A feature is *positional* here if position explains at least half of its variance inside the SAE's context:
# `R²_pos >= 0.5` over the positions inside it (from the exact layer-0 statistics over all tokens, uniformly
# weighted). Restricting to the context matters: over all `n_ctx` positions, the misbehaviour past the context would
# itself make features look positional. The figure shows the top positional features by `R²_pos` (at most two per
# in-context peak position): their mean activation over all tokens at every position.

# %% tags=["remove-input"]
display(positional_profiles_figure(result.positional_profiles, result.context_size, pages=pages))
pages.note(result.positional_profiles["feature"])

# %% tags=["remove-input"]
result.behaviour_table.style  # a Styler shows every peak position (pandas would elide rows)

# %% [markdown]
# {glue:text}`len_positional_sentence` The table groups them by the in-context position where they peak. A positional
# feature past the context responds to how much the new row `W_pos[p]` resembles the rows it was tuned on; the table
# below gives, for a few positions, the in-context row with the highest cosine and that cosine.

# %% tags=["remove-input"]
result.nearest_table

# %% tags=["remove-input"]
firing_by_kind_figure(result.firing_by_kind, result.context_size)

# %% [markdown]
# {glue:text}`len_nearest_sentence` (The setup chapter explains why the last row, `W_pos[n_ctx - 1]`, needs a
# check: here it has norm {glue:text}`len_last_norm:.3f` against its neighbour's {glue:text}`len_last_previous_norm:.3f`,
# and cosine {glue:text}`len_last_cosine_to_previous:.3f` with it.)
# The figure counts the expected number of active features per token over all tokens. On average over the
# positions, positional features account for {glue:text}`len_l0_positional_in:.1f` active features per token inside
# the context and {glue:text}`len_l0_positional_past:.1f` past it; non-positional features for
# {glue:text}`len_l0_nonpositional_in:.1f` inside and {glue:text}`len_l0_nonpositional_past_text` past it.
#
# **Where does the SAE act as if it were?** Past the context, does the SAE treat every position as its last trained
# one, `C - 1`, or as earlier ones? For each position `p` past the context, take the positional features' pattern
# there (each one's mean activation over all tokens, as in the profiles above) and find the position `q` inside the
# context whose pattern has the highest cosine with it (ties go to the `q` closest in length). A cosine of at least
# {glue:text}`len_asif_threshold` counts as a match (the share of `p`'s squared length along `q`'s pattern is the
# cosine squared, most of it at that threshold); when the median best cosine falls below it, the SAE acts as if at
# neither. {glue:text}`len_asif_sentence`

# %% [markdown]
# ## Semantic features past the context: spurious firing
#
# With the split `h_i(t, p) = a_i(t) + c_i(p)`, feature `i` fires on `(t, p)` iff `a_i(t) + c_i(p) > thr_i`
# (`thr_i = 0` for a ReLU SAE). A (token, feature) pair *never fires inside the context* iff
# `a_i(t) + max_p c_i(p) <= thr_i` over the positions {glue:text}`len_inside`; it is *spurious* at a position
# `p >= context_size` iff it fires there. Counting, for every position, the spurious pairs over the **whole
# vocabulary** is exact and cheap: for each chunk of features, sort each feature's `a_i(t)` over the tokens once; the
# count at `p` is then the number of tokens between two thresholds, `thr_i - max c_i` and `thr_i - c_i(p)`, found by
# binary search. No `d_vocab x d_sae` matrix is ever held.

# %% tags=["remove-input"]
spurious_rate_figure(result.spurious_rates, result.context_size)

# %% tags=["remove-input"]
result.spurious_table

# %% [markdown]
# {glue:text}`len_spurious_sentence` The share is pooled: spurious firings over all firings, summed over every
# position past the context (the table's last column gives each position's own share). By definition a spurious pair has `c_i(p)` above its largest value inside the
# context: the new row of `W_pos` lifts the feature's positional offset above anything it had there, and tokens that
# stayed just below the threshold cross it.
#
# ### An example, found automatically
#
# Among non-positional features that fire inside the context, and tokens that occur in the held-out text, the pair
# below has the largest spurious activation past the context. The table gives the feature's top tokens inside the
# context.

# %% tags=["remove-input"]
result.example_top_tokens

# %% tags=["remove-input"]
display(example_profile_figure(result.example_profile, result.context_size, pages=pages))
pages.note(result.example_profile["feature"], "Neuronpedia page of the example's feature")

# %% [markdown]
# {glue:text}`len_example_sentence` (The curves come from `sae.encode` on `W_E[t] + W_pos[p]`; the search used the exact split, and a
# test checks that the two agree.) {glue:text}`len_links_sentence`

# %% [markdown]
# ## Fixes
#
# Each remedy below is a reconstruction `x̂(t, p)`; `C` is the SAE's context size. On held-out text the token ids
# are known, and at layer 0 `x - W_pos[p] = W_E[t]` exactly.
#
# - **(a) Encode the token alone:** `x̂ = SAE(W_E[t]) + W_pos[p]` at every position: the SAE never sees position.
# - **(b) Read the token at a trained position:** for `p >= C`, `x̂ = SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1] + W_pos[p]`
#   (the SAE's output at the last position it was trained on, moved to the true position); the SAE itself for `p < C`.
# - **(c) Keep the SAE's token part, use the exact `W_pos`:** for `p >= C`, decode the activations with the positional
#   features zeroed and add the exact positional embedding:
#   `x̂ = f_sem(x) W_dec + b_dec - κ + W_pos[p]`, where `f_sem` zeroes the features with `R²_pos >= 0.5` inside the
#   context and `κ = b_dec + f̄_sem W_dec - mean_t W_E[t]` (with `f̄_sem` the mean non-positional activation over all
#   tokens and the positions inside the context, from the exact statistics) removes the token part's average bias
#   there, so the positional content left in `b_dec` is not counted twice. The SAE itself for `p < C`.
# - **(d) Train on full contexts:** a control SAE, same recipe, trained on every position.
#   {glue:text}`len_control`
#
# A fix *restores* the SAE if its nMSE past the context, on held-out text, is at most
# {glue:text}`len_restore_factor:.0f` times the SAE's own nMSE inside it ({glue:text}`len_fix_sae_in:.3f`).

# %% tags=["remove-input"]
error_vs_position_figure({"held-out text": result.heldout_curves}, result.context_size,
                         methods=result.fix_methods(),
                         title="nMSE vs position for each fix (held-out text, log scale)")

# %% tags=["remove-input"]
result.fix_table

# %% [markdown]
# Past the context, on held-out text, the SAE itself leaves an nMSE of {glue:text}`len_fix_sae_past_text`.
#
# - {glue:text}`len_fix_a_sentence`
# - {glue:text}`len_fix_b_sentence`
# - {glue:text}`len_fix_c_sentence`
# - {glue:text}`len_fix_d_sentence`
#
# The [past-context](past_context) chapter measures what each of these costs the model in next-token loss, position
# by position, and tries one more remedy the study proposes: fine-tuning the SAE on a little full-context data.

# %% [markdown]
# ## Summary
#
# - Trained on {glue:text}`len_context` of {glue:text}`len_n_ctx` positions, the layer-0 SAE's nMSE on held-out
#   text is {glue:text}`len_heldout_in:.3f` inside its context and {glue:text}`len_heldout_past_text` past it
#   ({glue:text}`len_sae_over_random_text` times the nMSE of a random vector with the input's norm,
#   {glue:text}`len_heldout_rand_past_text`); over all tokens, {glue:text}`len_alltok_in:.3f` inside and
#   {glue:text}`len_alltok_past_text` past it.
# - {glue:text}`len_asif_sentence`
# - {glue:text}`len_positional_sentence`
# - {glue:text}`len_spurious_sentence` Counted exactly over the whole vocabulary. {glue:text}`len_example_short`
# - {glue:text}`len_fix_summary`
#
# **What's next.** The [multi-layer oscillation](oscillation) chapter follows position into the later layers, where
# the input is no longer a sum of two embeddings.
