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
model_name = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
sae_release = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"
device = None  # None picks CUDA when present
n_heldout_tokens = 16384  # held-out tokens per corpus for the reconstruction metrics
gpt2_wpos_path = None  # GPT-2 small's W_pos as .npy; None: the copy in possae's evaluation pack

# %% tags=["remove-cell"]
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from possae.heldout import heldout_windows
from possae.loaders import load_model_and_sae
from possae.metrics import sae_quality
from possae.figures import use_offline_renderer
from possae.figures.setup import heldout_loss_figure, position_cosine_figure, wpos_pca_figure
from possae.wpos import last_row, load_gpt2_wpos, wpos_geometry

use_offline_renderer()
model, sae = load_model_and_sae(sae_release, sae_id, device=device, model_name=model_name)
context_size = sae.cfg.metadata.context_size or model.cfg.n_ctx

# %% [markdown]
# ## The model and the SAE

# %% tags=["remove-input"]
config = pd.DataFrame({
    "model": [model.cfg.model_name], "layers": [model.cfg.n_layers], "d_model": [model.cfg.d_model],
    "n_ctx": [model.cfg.n_ctx], "d_vocab": [model.cfg.d_vocab], "SAE": [f"{sae_release} / {sae_id}"],
    "architecture": [sae.cfg.architecture()], "hook": [sae.cfg.metadata.hook_name], "d_sae": [sae.cfg.d_sae],
    "SAE context_size": [context_size],
}).T.rename(columns={0: ""})
config

# %% [markdown]
# ## Reconstruction on held-out text
#
# Measured on the held-out tail of every corpus in possae's evaluation pack (text the model and the SAE never
# trained on; the pack holds every corpus but the OpenWebText sample, whose license is unclear), in
# windows of the SAE's own context size.

# %% tags=["remove-input"]
tokens = heldout_windows(model.tokenizer, context_size, n_heldout_tokens)
metrics = sae_quality(model, sae, tokens)
for k in ("l0", "explained_variance", "dead_share"):
    glue(k, metrics[k], display=False)
pd.DataFrame([metrics])

# %% [markdown]
# On {glue:text}`l0:.0f`-odd active features per token the SAE explains
# {glue:text}`explained_variance:.1%` of the activations' variance, with {glue:text}`dead_share:.1%`
# of its features never firing on this sample.

# %% [markdown]
# ## The model organism's card
#
# Shown when the subject is the organism: where its training data came from and how it compares
# with a unigram model on held-out text.

# %% tags=["remove-input"]
if model_name == "organism":
    from possae.organism.card import organism_training_note, read_model_card, stages_frame

    card = read_model_card()
    heldout = pd.DataFrame(card["heldout"])
    display(heldout_loss_figure(heldout))
    display(pd.DataFrame(card["data"]["corpora"]).drop(columns="files"))
else:
    print(f"{model_name} is not the organism: no model card.")

# %% [markdown]
# ## The geometry of W_pos
#
# Rows 1 to `context_size - 1` (position 0 is special: it always holds the BOS token), and all rows
# up to `n_ctx - 1`: the share of variance in the top three principal components, and the mean cosine
# between adjacent positions.

# %% tags=["remove-input"]
W_pos = model.W_pos.detach().cpu()
geometry = pd.DataFrame({f"rows 1..{last - 1}": wpos_geometry(W_pos, 1, last)
                         for last in sorted({context_size, model.cfg.n_ctx})}).T
glue("top3", float(geometry["top3_share"].iloc[-1]), display=False)
glue("adjcos", float(geometry["adjacent_cosine"].iloc[-1]), display=False)
geometry

# %% [markdown]
# ### The last row
#
# A language-model trainer that feeds windows of `n_ctx` tokens scores only `n_ctx - 1` next-token predictions:
# the output at the last position has nothing to predict, so no loss reaches `W_pos[n_ctx - 1]` and it keeps its
# initial value (zero for the organism's first stage). Every per-position curve in this book would then drop at the
# last position for that reason alone. possae's trainer feeds windows of `n_ctx + 1` tokens, so every position is
# scored. Here the last row has norm {glue:text}`last_norm:.3f` against {glue:text}`last_previous_norm:.3f` for
# its neighbour, and a cosine of {glue:text}`last_cosine_to_previous:.3f` with it.

# %% tags=["remove-input"]
for key, value in last_row(W_pos).items():
    glue(f"last_{key}", value, display=False)
if model_name == "organism":
    display(Markdown(organism_training_note(card)))
    display(stages_frame(card)[["stage", "trained", "tokens", "epochs", "positions scored", "seconds", "device"]]
            .style.format({"tokens": "{:,}", "epochs": "{:.2f}", "seconds": "{:.0f}"}).hide(axis="index"))

# %% tags=["remove-input"]
wpos_pca_figure(W_pos[: model.cfg.n_ctx])

# %% tags=["remove-input"]
position_cosine_figure(W_pos[: model.cfg.n_ctx])

# %% [markdown]
# ### Beside GPT-2 small
#
# GPT-2 small's `W_pos` (from the evaluation pack shipped with possae, or the model itself on the `gpt2` profile) is
# the object the original study found to trace a helix. The same measures over its rows
# 1..127 (its SAE's context of 128) and 1..1023:

# %% tags=["remove-input"]
gpt2_W_pos = W_pos if model.cfg.d_model == 768 and model.cfg.n_ctx == 1024 else load_gpt2_wpos(gpt2_wpos_path)
gpt2_geometry = pd.DataFrame({f"GPT-2 rows 1..{last - 1}": wpos_geometry(gpt2_W_pos, 1, last)
                              for last in (128, 1024)}).T
display(pd.concat([geometry.rename(index=lambda r: f"{model.cfg.model_name} {r}"), gpt2_geometry]))
display(wpos_pca_figure(gpt2_W_pos[:128]).update_layout(title="GPT-2 small's W_pos, rows 1..127"))

# %% [markdown]
# ## Summary
#
# Over all its positions, the three top principal components of this model's `W_pos` hold
# {glue:text}`top3:.1%` of its variance, and adjacent positions have a mean cosine of
# {glue:text}`adjcos:.3f`. The next chapters ask which SAE features read this structure.
