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

# %% tags=["remove-cell"]
import pandas as pd
from myst_nb import glue

from possae.heldout import heldout_windows
from possae.loaders import load_model_and_sae
from possae.metrics import sae_metrics
from possae.figures import use_offline_renderer
from possae.figures.setup import heldout_loss_figure, position_cosine_figure, wpos_pca_figure
from possae.wpos import wpos_geometry

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
# Measured on the held-out tail of every corpus (text the model and the SAE never trained on), in
# windows of the SAE's own context size.

# %% tags=["remove-input"]
tokens = heldout_windows(model.tokenizer, context_size, n_heldout_tokens)
metrics = sae_metrics(model, sae, tokens)
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
    from possae.organism.card import read_model_card

    card = read_model_card()
    heldout = pd.DataFrame(card["heldout"])
    display(heldout_loss_figure(heldout))
    display(pd.DataFrame(card["data"]["corpora"]).drop(columns="files"))
else:
    print(f"{model_name} is not the organism: no model card.")

# %% [markdown]
# ## The geometry of W_pos
#
# Rows 1 to `context_size - 1` (position 0 is special: it always holds the BOS token). GPT-2 small's
# rows 1..127 have 95.7 % of their variance in three principal components and trace a helix.

# %% tags=["remove-input"]
W_pos = model.W_pos.detach().cpu()
geometry = pd.DataFrame({f"rows 1..{last - 1}": wpos_geometry(W_pos, 1, last)
                         for last in sorted({context_size, model.cfg.n_ctx})}).T
glue("top3", float(geometry["top3_share"].iloc[-1]), display=False)
glue("adjcos", float(geometry["adjacent_cosine"].iloc[-1]), display=False)
geometry

# %% tags=["remove-input"]
wpos_pca_figure(W_pos[: model.cfg.n_ctx])

# %% tags=["remove-input"]
position_cosine_figure(W_pos[: model.cfg.n_ctx])

# %% [markdown]
# ## Summary
#
# Over all its positions, the three top principal components of this model's `W_pos` hold
# {glue:text}`top3:.1%` of its variance, and adjacent positions have a mean cosine of
# {glue:text}`adjcos:.3f`. The next chapters ask which SAE features read this structure.
