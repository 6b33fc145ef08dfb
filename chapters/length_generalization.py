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
# (`gpt2-small-res-jb` saw 128 of GPT-2's 1024 positions; the organism's `relu-short` SAE sees 64 of 256). At layer 0
# its input is exactly `x(t, p) = W_E[t] + W_pos[p]`, so every position `p >= context_size` brings a row of `W_pos`
# the SAE never saw. This chapter measures what that does: the reconstruction error at every position, on held-out
# text and over the whole vocabulary; what the positional features do past the context; how often features fire on
# tokens that never fire them inside it; and how well four remedies work.
#
# **Prerequisites.** The [setup](setup) chapter (the model, the SAE, `W_pos`) and the
# [positional features](positional) chapter (the exact split of a layer-0 pre-activation into a token part
# `a_i(t)` and a position part `c_i(p)`, and the share of a feature's variance explained by position, `R²_pos`).

# %% tags=["parameters", "remove-cell"]
model_name = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
sae_release = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE trained on contexts shorter than n_ctx
device = None  # None picks CUDA when present
control_sae_id = "relu-full"  # the same SAE trained on full n_ctx contexts (same release); None: no control
n_heldout_tokens = 16384  # held-out text tokens per corpus
n_vocab_sample = 4096  # tokens sampled from the vocabulary for the all-token curves; the whole vocabulary if larger
seed = 0  # token sample and random reconstructions

# %% tags=["remove-cell"]
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from possae.figures import use_offline_renderer
from possae.figures.length import (
    error_vs_position_figure,
    example_profile_figure,
    firing_by_kind_figure,
    positional_profiles_figure,
    spurious_rate_figure,
)
from possae.heldout import heldout_windows
from possae.layer0_stats import layer0_stats_from_model
from possae.length import (
    CLAMP_LABEL,
    CONTROL_LABEL,
    RANDOM_LABEL,
    SAE_LABEL,
    SWAP_LABEL,
    TOKEN_ONLY_LABEL,
    bos_slot_firing_sentence,
    all_token_position_errors,
    feature_top_tokens,
    firing_by_kind_frame,
    heldout_position_errors,
    layer0_input_gap,
    length_fixes,
    nearest_inside,
    past_context_frame,
    past_context_summary,
    restores,
    sample_tokens,
    spurious_counts,
    spurious_example,
    spurious_rate_frame,
    summary_frame,
)
from possae.loaders import check_sae_fits, load_model_and_sae, load_sae
from possae.hooks import require_layer0
from possae.positional import positional_profile_frame, top_positional_features
from possae.semantic import token_activation_vs_position
from possae.tokenizer import decode_tokens
from possae.wpos import last_row

use_offline_renderer()
model, sae = load_model_and_sae(sae_release, sae_id, device=device, model_name=model_name)
require_layer0(sae, "The length-generalization chapter")
context_size = sae.cfg.metadata.context_size or model.cfg.n_ctx
n_ctx = model.cfg.n_ctx
if context_size >= n_ctx:
    raise ValueError(f"SAE {sae_id!r} was trained on {context_size} >= n_ctx = {n_ctx} positions: nothing lies past its "
                     "context. Pick an SAE trained on shorter contexts, e.g. -p sae_id relu-short.")
control = None
if control_sae_id is not None:
    control = load_sae(sae_release, control_sae_id, device=device)
    require_layer0(control, "The full-context control")
    check_sae_fits(model, control)
stats = layer0_stats_from_model(model, sae, progress=False)  # exact, over every (token, position) input
fixes = length_fixes(stats, sae, model.W_E, context_size)
glue("len_context", int(context_size), display=False)
glue("len_n_ctx", int(n_ctx), display=False)

# %% [markdown]
# ## Reconstruction error at every position
#
# **Measures.** For the inputs `x` at one position `p` and their reconstructions `x̂`, the *MSE* is
# `Σ ||x - x̂||² / (n d_model)` and the *normalised MSE* is
#
# $$\mathrm{nMSE}(p) = \frac{\sum_{x \text{ at } p} \lVert x - \hat x\rVert^2}{\sum_{x \text{ at } p} \lVert x - \bar x\rVert^2},$$
#
# where `x̄` is the mean input over the whole sample (all positions), so `1 - nMSE` is the share of variance explained,
# as in the setup chapter. (The tables below also carry `rel_err = Σ||x - x̂||² / Σ||x||²`.) As a floor for "no
# information", each input also gets a *random reconstruction of equal norm*: `x̂_rand = ||x̂|| u` with `u` drawn
# uniformly on the unit sphere, independently for each input, so it has the SAE's output norm and no direction.
#
# **Two distributions.** (1) *Held-out text* ({glue:text}`len_heldout_tokens` tokens from the held-out documents of
# every corpus in the evaluation pack), in windows of the model's full `n_ctx` = {glue:text}`len_n_ctx` tokens, read at
# `blocks.0.hook_resid_pre` and streamed through the SAE batch by batch; (2) *all tokens*: `x = W_E[t] + W_pos[p]`
# for {glue:text}`len_vocab_sample` tokens `t` drawn uniformly from the vocabulary and every position `p`.

# %% tags=["remove-input"]
tokens = heldout_windows(model.tokenizer, n_ctx, n_heldout_tokens)
gap = layer0_input_gap(model, tokens[:4])
glue("len_input_gap", float(gap), display=False)
heldout = heldout_position_errors(model, sae, tokens, fixes=fixes, control=control, seed=seed, progress=False)
vocab = sample_tokens(model.cfg.d_vocab, n_vocab_sample, seed)
all_tokens = all_token_position_errors(model.W_E[vocab.to(model.W_E.device)], model.W_pos, sae, seed=seed,
                                       progress=False)
glue("len_heldout_tokens", int(tokens.numel()), display=False)
glue("len_vocab_sample", int(len(vocab)), display=False)

sae_only = [SAE_LABEL, RANDOM_LABEL]
frames = {"held-out text": heldout[heldout.method.isin(sae_only)], "all tokens": all_tokens}
tables = {(name, metric): summary_frame(df, context_size, metric)
          for name, df in frames.items() for metric in ("mse", "nmse")}
for key, name in (("heldout", "held-out text"), ("alltok", "all tokens")):
    for metric, tag in (("nmse", ""), ("mse", "_mse")):
        t = tables[name, metric]
        glue(f"len_{key}{tag}_in", float(t.loc[SAE_LABEL].iloc[0]), display=False)
        glue(f"len_{key}{tag}_past", float(t.loc[SAE_LABEL].iloc[1]), display=False)
        glue(f"len_{key}{tag}_ratio", float(t.loc[SAE_LABEL].iloc[2]), display=False)
        glue(f"len_{key}{tag}_rand_past", float(t.loc[RANDOM_LABEL].iloc[1]), display=False)
pd.concat({name: pd.concat([tables[name, "mse"], tables[name, "nmse"]], axis=1) for name in frames},
          names=["distribution"])

# %% tags=["remove-input"]
error_vs_position_figure(frames, context_size, metrics=("mse", "nmse"), methods=sae_only,
                         title="Reconstruction error vs position (log scale)")

# %% [markdown]
# At layer 0 the hook's input is exactly `W_E[t] + W_pos[p]`: on this text the largest gap between
# `hook_resid_pre` and `hook_embed + hook_pos_embed` is {glue:text}`len_input_gap:.1e`. Inside its context the SAE leaves
# an nMSE of {glue:text}`len_heldout_in:.3f` on held-out text (MSE {glue:text}`len_heldout_mse_in:.3g`); past it
# the mean nMSE over the positions is {glue:text}`len_heldout_past:.3g`, {glue:text}`len_heldout_ratio:.3g` times
# larger (MSE {glue:text}`len_heldout_mse_past:.3g`). Over the all-token distribution the nMSE is
# {glue:text}`len_alltok_in:.3f` inside and {glue:text}`len_alltok_past:.3g` past it. An nMSE above 1 means the
# reconstruction is further from the input than the sample mean is. Compare the random reconstruction of equal norm
# past the context: nMSE {glue:text}`len_heldout_rand_past:.3g` on text, {glue:text}`len_alltok_rand_past:.3g` on
# all tokens. When the SAE's curve meets the random one, its output is no closer to its input than a random vector of
# the same length: what is left of the error is the size of the output, not its direction. The next two sections find
# which features are responsible.

# %% [markdown]
# ## Positional features past the context
#
# A feature is *positional* here if position explains at least half of its variance inside the SAE's context:
# `R²_pos >= 0.5` computed over the positions `p < context_size` (from the exact layer-0 statistics over all tokens,
# uniformly weighted). Restricting to the context matters: over all `n_ctx` positions, the misbehaviour past the
# context would itself make features look positional. The figure shows the top positional features by `R²_pos`
# (at most two per in-context peak position), their mean activation over all tokens at every position.

# %% tags=["remove-input"]
positional = fixes.positional
top = top_positional_features(stats, context_size, k=8, per_peak=2)
glue("len_n_positional", int(positional.sum()), display=False)
behaviour = None
if len(top):
    display(positional_profiles_figure(positional_profile_frame(stats, top), context_size))
    behaviour = past_context_summary(past_context_frame(stats, positional.nonzero().squeeze(1), context_size))
    display(behaviour.rename_axis("peak position inside the context"))
else:
    print("This SAE has no feature with R²_pos >= 0.5 inside its context.")
has = behaviour is not None and "all" in behaviour.index
for col in ("features", "silent", "overshoot", "firing_rate_inside", "firing_rate_past"):
    glue(f"len_pos_all_{col}", float(behaviour.loc["all", col]) if has else float("nan"), display=False)
glue("len_pos_p0_sentence", bos_slot_firing_sentence(behaviour), display=False)

# %% [markdown]
# Of the {glue:text}`len_n_positional` positional features, a share of {glue:text}`len_pos_all_silent:.0%` fall
# silent past the context (firing rate below a tenth of their rate inside it) and
# {glue:text}`len_pos_all_overshoot:.0%` reach a higher mean activation past the context than anywhere inside it; on
# average they fire on {glue:text}`len_pos_all_firing_rate_inside:.1%` of the (token, position) inputs inside the
# context and on {glue:text}`len_pos_all_firing_rate_past:.1%` past it. The table groups them by the in-context
# position where they peak. {glue:text}`len_pos_p0_sentence` A positional feature
# past the context responds to how much the new row `W_pos[p]` resembles the rows it was tuned on; the table below
# gives, for a few positions, the in-context row with the highest cosine and that cosine.

# %% tags=["remove-input"]
near = nearest_inside(model.W_pos, context_size)
past_near = near[near.index >= context_size]
glue("len_min_cos", float(past_near.cosine.min()), display=False)
glue("len_min_cos_pos", int(past_near.cosine.idxmin()), display=False)
glue("len_far_share", float((past_near.cosine < 0.5).mean()), display=False)
for key, value in last_row(model.W_pos.detach()).items():
    glue(f"len_last_{key}", value, display=False)
display(near.iloc[sorted({context_size - 1, context_size, (context_size + n_ctx) // 2, int(past_near.cosine.idxmin()),
                          n_ctx - 1})])
by_kind = firing_by_kind_frame(stats, positional)
for kind in ("positional", "non-positional"):
    glue(f"len_l0_{kind}_in", float(by_kind[kind][by_kind.index < context_size].mean()), display=False)
    glue(f"len_l0_{kind}_past", float(by_kind[kind][by_kind.index >= context_size].mean()), display=False)
firing_by_kind_figure(by_kind, context_size)

# %% [markdown]
# For {glue:text}`len_far_share:.0%` of the positions past the context, no in-context row has a cosine above 0.5
# with `W_pos[p]`; at position {glue:text}`len_min_cos_pos` the best cosine is {glue:text}`len_min_cos:.2f`: the row
# points away from everything the SAE saw. (The last row, `W_pos[n_ctx - 1]`, has norm
# {glue:text}`len_last_norm:.3f` against its neighbour's {glue:text}`len_last_previous_norm:.3f`, and cosine
# {glue:text}`len_last_cosine_to_previous:.3f` with it. A trainer that feeds windows of `n_ctx` tokens scores only
# `n_ctx - 1` predictions and never trains that row: it would read 0 here.)
# The figure counts the expected number of active features per token over all tokens. On average over the
# positions, positional features account for {glue:text}`len_l0_positional_in:.1f` active features per token inside
# the context and {glue:text}`len_l0_positional_past:.1f` past it; non-positional features for
# {glue:text}`len_l0_non-positional_in:.1f` inside and {glue:text}`len_l0_non-positional_past:.1f` past it.

# %% [markdown]
# ## Semantic features past the context: spurious firing
#
# With the split `h_i(t, p) = a_i(t) + c_i(p)`, feature `i` fires on `(t, p)` iff `a_i(t) + c_i(p) > thr_i`
# (`thr_i = 0` for a ReLU SAE). A (token, feature) pair *never fires inside the context* iff
# `a_i(t) + max_{p < context} c_i(p) <= thr_i`; it is *spurious* at a position `p >= context` iff it fires there.
# Counting, for every position, the spurious pairs over the **whole vocabulary** is exact and cheap: for each chunk of
# features, sort each feature's `a_i(t)` over the tokens once; the count at `p` is then the number of tokens between
# two thresholds, `thr_i - max_{p<C} c_i(p)` and `thr_i - c_i(p)`, found by binary search. No `d_vocab x d_sae`
# matrix is ever held.

# %% tags=["remove-input"]
counts = spurious_counts(model.W_E, model.W_pos, sae, context_size, progress=False)
rates = spurious_rate_frame(counts, model.cfg.d_vocab, positional, stats.l0_by_position())
past_rates = rates[rates.index >= context_size]
glue("len_spur_mean", float(past_rates.spurious_per_token.mean()), display=False)
glue("len_spur_max", float(past_rates.spurious_per_token.max()), display=False)
glue("len_spur_max_pos", int(past_rates.spurious_per_token.idxmax()), display=False)
glue("len_spur_share", float(past_rates.spurious_share_of_l0.mean()), display=False)
glue("len_spur_nonpos", float(past_rates["non-positional"].sum() / max(past_rates.spurious_per_token.sum(), 1e-30)),
     display=False)
display(spurious_rate_figure(rates, context_size))
rates.iloc[[context_size - 1, context_size, context_size + 1, (context_size + n_ctx) // 2, n_ctx - 1]]

# %% [markdown]
# Past the context a token fires on average {glue:text}`len_spur_mean:.1f` features it never fires inside it
# (at most {glue:text}`len_spur_max:.1f`, at position {glue:text}`len_spur_max_pos`): on average
# {glue:text}`len_spur_share:.0%` of its active features are spurious, and {glue:text}`len_spur_nonpos:.1%` of the
# spurious pairs belong to non-positional features. By definition a spurious pair has `c_i(p) > max_{q<C} c_i(q)`:
# the new row of `W_pos` lifts the feature's positional offset above anything it had inside the context, and tokens
# that stayed just below the threshold cross it.
#
# ### An example, found automatically
#
# Among non-positional features that fire inside the context, and tokens that occur in the held-out text, the pair
# below has the largest spurious activation past the context.

# %% tags=["remove-input"]
seen = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
seen[tokens.unique()] = True
semantic = (~positional) & (stats.firing_rate[stats.positions < context_size].max(0).values > 0)
example = spurious_example(model.W_E, model.W_pos, sae, context_size, features=semantic, tokens=seen)
top_tokens = feature_top_tokens(model.W_E, model.W_pos, sae, example.feature, context_size, k=10)
top_tokens.insert(1, "string", decode_tokens(model.tokenizer, top_tokens.token))
spurious_string = decode_tokens(model.tokenizer, [example.token])[0]
glue("len_ex_feature", int(example.feature), display=False)
glue("len_ex_token", spurious_string, display=False)
glue("len_ex_act", float(example.activation), display=False)
glue("len_ex_pos", int(example.position), display=False)
glue("len_ex_npos", int(example.n_positions), display=False)
glue("len_ex_top", str(top_tokens.string.iloc[0]), display=False)
glue("len_ex_top_act", float(top_tokens.max_activation_inside.iloc[0]), display=False)
print(f"feature {example.feature}: top tokens inside the context")
display(top_tokens)
print(f"spurious token {spurious_string} (id {example.token}): activation {example.activation:.3f} at position "
      f"{example.position}; fires at {example.n_positions} of the {n_ctx - context_size} positions past the context, "
      f"at none inside it")
top_token = int(top_tokens.token.iloc[0])
profile = pd.concat([token_activation_vs_position(model.W_E, model.W_pos, sae, t, [example.feature], method="brute_force")
                     for t in (example.token, top_token)])
labels = {example.token: f"{spurious_string} (spurious)", top_token: f"{top_tokens.string.iloc[0]} (top token)"}
example_profile_figure(profile, labels, context_size, example.feature)

# %% [markdown]
# Feature {glue:text}`len_ex_feature` is not positional (`R²_pos < 0.5` inside the context); there it fires most on
# {glue:text}`len_ex_top` (activation {glue:text}`len_ex_top_act:.2f`) and never on {glue:text}`len_ex_token`. Past
# the context it fires on {glue:text}`len_ex_token` at {glue:text}`len_ex_npos` positions, up to
# {glue:text}`len_ex_act:.2f` at position {glue:text}`len_ex_pos`: the same kind of failure as the arrow feature
# firing on "leep" in the original study. (The curves come from `sae.encode` on `W_E[t] + W_pos[p]`; the search used
# the exact split, so the two agree.)

# %% [markdown]
# ## Fixes
#
# Each remedy below is a reconstruction `x̂(t, p)`; `C` is the SAE's context size. On held-out text the token ids
# are known, and at layer 0 `x - W_pos[p] = W_E[t]` exactly.
#
# - **(a) Encode the token alone:** `x̂ = SAE(W_E[t]) + W_pos[p]` at every position: the SAE never sees position.
# - **(a') Read the token at a trained position:** for `p >= C`, `x̂ = SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1] + W_pos[p]`
#   (the SAE's output at the last position it was trained on, moved to the true position); the SAE itself for `p < C`.
# - **(b) Keep the SAE's token part, use the exact `W_pos`:** for `p >= C`, decode the activations with the positional
#   features zeroed and add the exact positional embedding:
#   `x̂ = f_sem(x) W_dec + b_dec - κ + W_pos[p]`, where `f_sem` zeroes the features with `R²_pos >= 0.5` inside the
#   context and `κ = b_dec + f̄_sem W_dec - mean_t W_E[t]` (with `f̄_sem` the mean non-positional activation over all
#   tokens and positions `< C`, from the exact statistics) removes the token part's average bias inside the context,
#   so the positional content left in `b_dec` is not counted twice. The SAE itself for `p < C`.
# - **(c) Train on full contexts:** a control SAE, same recipe, `context_size = n_ctx`. {glue:text}`len_control`
#
# The summary number of each fix is its mean nMSE over the positions `p >= C` of held-out text.

# %% tags=["remove-input"]
if control is not None:
    control_note = (f"Here: {sae_release} / {control_sae_id}, trained on "
                    f"{control.cfg.metadata.context_size or n_ctx} positions.")
else:
    control_note = "This profile names no full-context SAE (control_sae_id is None), so fix (c) is skipped below."
glue("len_control", control_note, display=False)
fix_methods = [m for m in (SAE_LABEL, TOKEN_ONLY_LABEL, CLAMP_LABEL, SWAP_LABEL, CONTROL_LABEL)
               if m in set(heldout.method)]
summary = summary_frame(heldout[heldout.method.isin(fix_methods + [RANDOM_LABEL])], context_size)
verdict = restores(summary)
for key, label in (("sae", SAE_LABEL), ("a", TOKEN_ONLY_LABEL), ("a2", CLAMP_LABEL), ("b", SWAP_LABEL)):
    glue(f"len_fix_{key}_in", float(summary.loc[label].iloc[0]), display=False)
    glue(f"len_fix_{key}_past", float(summary.loc[label].iloc[1]), display=False)
    glue(f"len_fix_{key}_verdict", "restores" if verdict[label] else "does not restore", display=False)
if control is not None:
    c_in, c_past = (float(v) for v in summary.loc[CONTROL_LABEL].iloc[:2])
    glue("len_fix_c_short", f"the full-context SAE (c) {c_past:.3f}", display=False)
    c_text = (f"The full-context SAE (c) gives {c_past:.3f} past position {context_size} and {c_in:.3f} before it "
              f"({'restores' if verdict[CONTROL_LABEL] else 'does not restore'}): trained on every position, it has "
              "no outside.")
else:
    glue("len_fix_c_short", "the full-context SAE (c) not available on this profile", display=False)
    c_text = "The full-context control (c) is skipped: this profile names no full-context SAE."
glue("len_fix_c_text", c_text, display=False)
display(error_vs_position_figure({"held-out text": heldout}, context_size, methods=fix_methods,
                                 title="Normalised MSE vs position for each fix (held-out text, log scale)"))
summary

# %% [markdown]
# Past the context, on held-out text, the SAE itself leaves an nMSE of {glue:text}`len_fix_sae_past:.3g`
# ("restores" below means: within twice the SAE's own nMSE inside the context, {glue:text}`len_fix_sae_in:.3f`).
#
# - Fix (a) gives {glue:text}`len_fix_a_past:.3g` past the context and {glue:text}`len_fix_a_in:.3g` inside it
#   ({glue:text}`len_fix_a_verdict`): the SAE was trained on inputs that always carry a positional part, so a bare
#   token embedding is itself an input it never saw.
# - Fix (a') gives {glue:text}`len_fix_a2_past:.3f` past the context ({glue:text}`len_fix_a2_verdict`). By
#   construction its error at `p >= C` is the SAE's error on the same token at position `C - 1`: giving the SAE a
#   position it knows, rather than none, is what (a) lacked.
# - Fix (b) gives {glue:text}`len_fix_b_past:.3g` ({glue:text}`len_fix_b_verdict`): replacing the positional
#   features' output leaves the spurious non-positional features in place, and they are the bulk of the error.
# - {glue:text}`len_fix_c_text`

# %% [markdown]
# ## Summary
#
# - Trained on {glue:text}`len_context` of {glue:text}`len_n_ctx` positions, the layer-0 SAE's normalised MSE on
#   held-out text goes from {glue:text}`len_heldout_in:.3f` inside its context to {glue:text}`len_heldout_past:.3g`
#   past it (a random vector of the same norm: {glue:text}`len_heldout_rand_past:.3g`); over all tokens, from
#   {glue:text}`len_alltok_in:.3f` to {glue:text}`len_alltok_past:.3g`.
# - Of its {glue:text}`len_n_positional` positional features, {glue:text}`len_pos_all_silent:.0%` fall silent past
#   the context.
# - Features fire spuriously on tokens they never fire on inside the context: {glue:text}`len_spur_mean:.1f` such
#   (token, feature) pairs per token on average past it ({glue:text}`len_spur_share:.0%` of the active features),
#   {glue:text}`len_spur_nonpos:.1%` of them non-positional; counted exactly over the whole vocabulary. Feature
#   {glue:text}`len_ex_feature` firing on {glue:text}`len_ex_token` is one example.
# - Past the context, nMSE on held-out text: fix (a) {glue:text}`len_fix_a_past:.3g`, (a')
#   {glue:text}`len_fix_a2_past:.3f`, (b) {glue:text}`len_fix_b_past:.3g`; {glue:text}`len_fix_c_short`.
#
# **What's next.** The [multi-layer oscillation](oscillation) chapter follows position into the later layers, where
# the input is no longer a sum of two embeddings.
