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
# # Past the context: the loss, the fine-tuning fix, and a rotary control
#
# **Overview.** The [length-generalization](length_generalization) chapter measures how a layer-0 SAE's
# reconstruction breaks past the context it was trained on, and four remedies. This chapter answers three questions
# the first study and its discussion leave open:
#
# 1. **What does the break cost the model?** The next-token loss with the SAE's reconstruction spliced in, at every
#    position, inside and past the context, for the raw SAE and for each remedy.
# 2. **Does fine-tuning fix it?** The study proposes "finetuning the SAE on a small amount of longer context
#    activations". Here the SAE is continued, through sae_lens, on full-context activations for increasing numbers
#    of tokens.
# 3. **Is it the learned positional embedding?** The study reports that SAEs trained on rotary-embedding models
#    (Pythia) do not blow up past their context. Here a *rotary twin* of the model, the same recipe with rotary
#    positions (TransformerLens's `positional_embedding_type="rotary"`), gets SAEs at every layer trained on the
#    same short context, beside the learned-absolute model's.
#
# **Prerequisites.** The [length-generalization](length_generalization) chapter: the error measures (nMSE inside
# the context, positions 1 to C - 1, and past it), the random baseline and the fixes (a)-(d).

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # 'organism-gpt2pos', 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE trained on contexts shorter than n_ctx
device = None  # None picks CUDA when present
control_sae_id = "relu-full"  # the same SAE trained on full n_ctx contexts (same release); None: no control
finetune_sae_ids = ["relu-short-ft25k", "relu-short-ft100k", "relu-short-ft400k"]  # sae_id continued on full contexts
relu_sae_ids = ["relu-short", "relu-short-L1", "relu-short-L2", "relu-short-L3"]  # short-context SAEs, one per layer
rotary_release = "organism-gpt2pos-rotary"  # the rotary twin's model and SAE release; None: no rotary control
rotary_sae_ids = ["relu-short", "relu-short-L1", "relu-short-L2", "relu-short-L3"]  # its short-context SAEs, per layer
n_heldout_tokens = 2048  # held-out text tokens per corpus (section 4 checks it suffices)

# %% tags=["remove-cell"]
from possae import past_context
from possae.figures import use_offline_renderer
from possae.figures.past_context import finetune_figure, loss_vs_position_figure, rotary_figure
from possae.glued import glue_all
from possae.length import CONTROL_LABEL, load_subjects

use_offline_renderer()
params = past_context.PastContextParams.from_namespace(globals())
model, sae, control = load_subjects(params)
result = past_context.analyze(model, sae, params, control)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## 1. The next-token loss past the context
#
# **Measure.** Held-out text in windows of `n_ctx` + 1 = {glue:text}`pc_n_ctx` + 1 tokens: the model reads the first
# {glue:text}`pc_n_ctx` and each position is scored on the next token. For each method, the layer-0 input at *every*
# position of the window is replaced by that method's reconstruction (as sae_lens's spliced loss does), so the loss
# at a position also carries the errors at the earlier positions it attends to. The figure shows the increase over
# the model's own loss, position by position, over {glue:text}`pc_heldout_inputs:,` scored tokens (special tokens
# left out). Without any splice the model's loss is {glue:text}`pc_clean_in:.3f` nats at positions
# {glue:text}`pc_inside` and {glue:text}`pc_clean_past:.3f` at positions {glue:text}`pc_past`.

# %% tags=["remove-input"]
loss_vs_position_figure(result.loss_curves, result.context_size, methods=list(result.losses))

# %% tags=["remove-input"]
result.method_table

# %% [markdown]
# {glue:text}`pc_loss_sentence` {glue:text}`pc_best_fix_sentence` Fixes (b) and (c) change nothing inside the context
# (by construction they are the SAE there), so their in-context loss is the SAE's. The table gives the same methods'
# nMSE, as the length chapter defines it, beside the loss. {glue:text}`pc_ranking_sentence`

# %% [markdown]
# ## 2. The fine-tuning fix
#
# **Recipe.** The SAE is loaded into sae_lens as a training SAE and trained further by sae_lens's own runner on
# windows of the model's full context, for each budget of tokens; its L1 coefficient and input normalisation are
# those of its first training, with a fresh optimiser state and {glue:text}`pc_ft_recipe` (`possae organism saes`;
# recipes in `possae.organism.recipe.finetune_saes`; the rate and warm-up are the sweep's choice, below). Errors are measured as in section 1, inside and past the *original* SAE's
# context of {glue:text}`pc_context` positions.

# %% tags=["remove-input"]
finetune_figure(result.finetune, result.control_nmse_past, CONTROL_LABEL)

# %% tags=["remove-input"]
result.finetune_table()

# %% [markdown]
# {glue:text}`pc_finetune_sentence`
#
# **Which recipe.** {glue:text}`pc_sweep_sentence` The table gives the sweep's record (written by
# `possae organism sweep`, `possae.organism.sweep`; its SAEs are not shipped): the nearest to passing both verdicts
# first. A recipe's nearness is the larger of its two figures, each divided by its limit (1 or less passes both).

# %% tags=["remove-input"]
result.sweep_display()

# %% [markdown]
# ## 3. A rotary control
#
# **The twin.** The rotary twin shares the model's architecture, tokenizer, data and recipe; only its positions
# differ. It has no `W_pos`: rotary embeddings rotate each head's queries and keys by an angle proportional to the
# position, so position never enters the residual stream directly; it can only be written there by attention.
# {glue:text}`pc_rotary_setup` Each SAE is a ReLU SAE trained by sae_lens with the same recipe as the model's own short-context SAEs, on windows of
# {glue:text}`pc_context` tokens.

# %% tags=["remove-input"]
rotary_figure(result.layer_curves, result.context_size)

# %% tags=["remove-input"]
result.rotary_table

# %% [markdown]
# {glue:text}`pc_rotary_sentence` At layer 0 the rotary twin's residual stream is the token embedding alone, the same
# at every position, so its layer-0 SAE cannot tell positions apart; the comparison that tests the study's claim is at
# the later layers, where attention can write position into the stream.

# %% [markdown]
# ## 4. How sure: the verdicts' figures with intervals
#
# This chapter runs on {glue:text}`pc_n_heldout_tokens:,` held-out tokens per corpus, fewer than the layer-0
# chapters read, to keep the book fast. Each figure that a verdict of the [ledger](ledger) compares with a threshold
# is given an interval: the windows were dealt in turn into blocks, the figure is recomputed with each block left
# out, and the spread of those values gives a jackknife standard error (Student's t with one degree of freedom fewer
# than blocks). A figure whose whole interval lies on one side of its threshold would give the same verdict on a larger
# sample. {glue:text}`pc_check_sentence`

# %% tags=["remove-input"]
result.check_display().style.hide(axis="index")

# %% [markdown]
# ## Summary
#
# - {glue:text}`pc_loss_sentence`
# - {glue:text}`pc_best_fix_sentence`
# - {glue:text}`pc_finetune_sentence`
# - {glue:text}`pc_rotary_sentence`
#
# **What's next.** The [claims ledger](ledger) sets these results beside every other checkable claim of the two
# studies.
