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
# # Setup: the model, its SAE and its positional embedding
#
# **Overview.** Every later chapter studies one model and one SAE. This chapter loads them, reports
# how well the SAE reconstructs held-out text, and looks at the geometry of the positional embedding
# `W_pos`, the object the whole book is about.
#
# **Prerequisites.** The [introduction](introduction); a transformer's residual stream at layer 0
# is `W_E[token] + W_pos[position]`.

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default: GPT-2's own W_pos), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # an organism's name, a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"
device = None  # None picks CUDA when present
n_heldout_tokens = 16384  # held-out tokens per corpus for the SAE's quality figures
gpt2_wpos_path = None  # GPT-2 small's W_pos as .npy; None: the copy in possae's evaluation pack

# %% tags=["remove-cell"]
from IPython.display import display

from possae.figures import use_offline_renderer
from possae.figures.setup import position_cosine_figure, wpos_pca_figure
from possae.glued import glue_all
from possae.loaders import load_model_and_sae
from possae.setup import GPT2_SAE_CONTEXT, SetupParams, analyze

use_offline_renderer()
params = SetupParams.from_namespace(globals())
model, sae = load_model_and_sae(params.sae_release, params.sae_id, device=params.device, model_name=params.model_name)
result = analyze(model, sae, params)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## The model and the SAE

# %% tags=["remove-input"]
result.config

# %% [markdown]
# ## Reconstruction on held-out text
#
# Measured with sae_lens's own evaluation functions (`sae_lens.evals`), so the figures compare with what SAELens
# users and Neuronpedia report, on the held-out tail of every corpus in possae's evaluation pack (text the model and
# the SAE never trained on; the pack holds every corpus but the OpenWebText sample, whose license is unclear), in
# windows of the SAE's own context size ({glue:text}`setup_context` tokens). As in sae_lens, BOS and other special
# tokens are left out: {glue:text}`heldout_tokens:,` tokens count. The explained variance is
# `1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²` over those tokens; the MSE is the mean of `‖x - x̂‖²`; "CE loss recovered" compares
# the next-token loss with the SAE's reconstruction spliced into the residual stream against the clean loss and
# against zero-ablating that activation.

# %% tags=["remove-input"]
result.quality_table()

# %% [markdown]
# On {glue:text}`l0:.1f` active features per token the SAE explains {glue:text}`explained_variance:.1%` of the
# activations' variance, with {glue:text}`dead_share:.1%` of its features never firing on this sample. Spliced into
# the model, it raises the next-token loss from {glue:text}`ce_clean:.3f` to {glue:text}`ce_spliced:.3f` nats
# ({glue:text}`ce_score:.1%` of the loss that zero-ablating the activation costs is recovered; measured on
# {glue:text}`ce_tokens:,` of those tokens, windows spread evenly over the corpora, since it runs the whole model four
# times). Every later chapter
# that cites the SAE's explained variance cites this number.

# %% [markdown]
# ## The model organism's card
#
# {glue:text}`card_sentence`

# %% tags=["remove-input"]
display(*result.card_items())

# %% [markdown]
# ## The geometry of W_pos
#
# Rows 1 to `context_size - 1` (position 0 is special: it always holds the BOS token), and all rows up to
# `n_ctx - 1`: the share of variance in the top three principal components, the mean cosine between adjacent
# positions, and how far the rows wind: the net angle they sweep in the plane of their top two principal components,
# in turns, with the zero crossings of those two components and the period they imply (two crossings per period). A
# top-3 share near 1 holds for any smooth curve, an arc as well as a helix; the turns tell them apart. The same
# measures for GPT-2 small's `W_pos` (from the evaluation pack shipped with possae), the object the first study found
# to trace a helix, over its rows 1..{glue:text}`gpt2_context_last` (its SAEs' context) and all its rows.
# {glue:text}`other_sentence`
#
# Over all its rows, this model's `W_pos` is {glue:text}`shape`; GPT-2 small's is
# {glue:text}`gpt2_shape`.

# %% tags=["remove-input"]
result.geometry_table()

# %% [markdown]
# ### The last row
#
# A language-model trainer that feeds windows of `n_ctx` tokens scores only `n_ctx - 1` next-token predictions:
# the output at the last position has nothing to predict, so no loss reaches `W_pos[n_ctx - 1]` and it keeps its
# initial value. Every per-position curve in this book would then drop at the last position for that reason alone.
# {glue:text}`last_row_sentence` Here the last row has norm
# {glue:text}`last_norm:.3f` against {glue:text}`last_previous_norm:.3f` for its neighbour, and a cosine of
# {glue:text}`last_cosine_to_previous:.3f` with it.

# %% tags=["remove-input"]
wpos_pca_figure(result.W_pos)

# %% tags=["remove-input"]
position_cosine_figure(result.W_pos)

# %% tags=["remove-input"]
wpos_pca_figure(result.gpt2_W_pos[:GPT2_SAE_CONTEXT], title=f"GPT-2 small's W_pos, rows 1..{GPT2_SAE_CONTEXT - 1}")

# %% [markdown]
# ## Summary
#
# Over all its positions, the three top principal components of this model's `W_pos` hold
# {glue:text}`top3:.1%` of its variance, adjacent positions have a mean cosine of {glue:text}`adjcos:.3f`, and the
# rows wind {glue:text}`turns:.2f` turns ({glue:text}`shape`; GPT-2 small's all rows: {glue:text}`gpt2_turns:.2f`).
# GPT-2 small's rows 1..{glue:text}`gpt2_context_last` hold {glue:text}`gpt2_top3_ctx:.1%` in their top three. The
# next chapters ask which SAE features read this structure.
