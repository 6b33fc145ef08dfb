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
# # Multi-layer oscillation: average SAE activation vs token position
#
# **Overview.** In GPT-2 small, the average activation of residual-stream SAE features rises and falls with token
# position, following the periodic structure of the positional embedding `W_pos`, and in layers 1-3 at roughly twice
# layer 0's frequency. This chapter measures the same curve at every layer of the model, for ReLU (L1) SAEs trained on
# short contexts and TopK SAEs trained on full contexts; reads its frequencies from a Fourier transform; removes or
# scrambles `W_pos` to see what the curve and the model's loss owe to it; splices every SAE into the model; and looks at
# how each feature's activations are distributed.
#
# **Prerequisites.** The [setup chapter](setup) (the model, `W_pos`, held-out text). An SAE at
# `blocks.L.hook_resid_pre` reads the residual stream entering block `L`; at layer 0 that is
# `W_E[token] + W_pos[position]`.

# %% tags=["parameters", "remove-cell"]
model_name = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
sae_release = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # the layer-0 SAE of the shared interface (also the first of relu_sae_ids)
device = None  # None picks CUDA when present
relu_sae_ids = ["relu-short", "relu-L1", "relu-L2", "relu-L3"]  # ReLU/L1 SAEs, one per layer, in layer order
topk_sae_ids = ["topk-L0", "topk-L1", "topk-L2", "topk-L3"]  # TopK SAEs, one per layer; [] skips the TopK side
n_heldout_tokens = 16384  # held-out tokens per corpus, in windows of the model's full context n_ctx
seed = 0  # seed of the fixed permutation of positions used by the shuffle ablation

# %% tags=["remove-cell"]
import numpy as np
import pandas as pd
from IPython.display import display
from myst_nb import glue

from possae.figures import use_offline_renderer
from possae.figures.oscillation import (
    amplitude_figure,
    decile_figure,
    feature_scatter_figure,
    loss_by_position_figure,
    position_curves_figure,
    spectrum_figure,
)
from possae.heldout import heldout_windows
from possae.hooks import sae_layer
from possae.loaders import check_sae_fits, load_model, load_sae
from possae.oscillation import (
    ABLATIONS,
    frequency_sentence,
    frequency_table,
    oscillation_amplitude,
    position_pass,
    spliced_loss,
)

use_offline_renderer()
model = load_model(model_name, device=device)
saes = {sid: load_sae(sae_release, sid, device=device) for sid in [*relu_sae_ids, *topk_sae_ids]}
for sae in saes.values():
    check_sae_fits(model, sae)
layer_of = {sid: sae_layer(sae) for sid, sae in saes.items()}
n_ctx = model.cfg.n_ctx
tokens = heldout_windows(model.tokenizer, n_ctx, n_heldout_tokens)

# one streamed pass of the model per W_pos condition, every SAE's hook cached at once
passes = {a: position_pass(model, tokens, saes, a, seed=seed, feature_ids=relu_sae_ids if a == "normal" else ())
          for a in ABLATIONS}
positions = pd.concat([p.positions for p in passes.values()], ignore_index=True)
normal = passes["normal"].positions
ref_family = "ReLU" if relu_sae_ids else "TopK"  # the family the prose quotes first
ref_ids = relu_sae_ids or topk_sae_ids
ref0 = ref_ids[0]


def curve(sid, ablation="normal", value="mean_act"):
    """Return one SAE's curve over positions under one condition, indexed by position."""
    g = positions[(positions["sae_id"] == sid) & (positions["ablation"] == ablation)]
    return g.set_index("position")[value]


glue("osc_n_tokens", float(tokens.numel()), display=False)
glue("osc_n_windows", float(len(tokens)), display=False)
glue("osc_n_ctx", float(n_ctx), display=False)

# %% [markdown]
# ## 1. Average activation vs position, layer by layer
#
# We run the model over {glue:text}`osc_n_windows:.0f` held-out windows of the full context of
# {glue:text}`osc_n_ctx:.0f` tokens ({glue:text}`osc_n_tokens:,.0f` tokens), and for every SAE accumulate, position by
# position, two averages: the mean of the activation over all features and all windows (zeros included), and the mean
# over the nonzero activations only, as the original study did. Dashed lines mark the end of an SAE's training
# context: past it, a short-context SAE sees residual streams it never saw in training.

# %% tags=["remove-input"]
rows = []
for sid, sae in saes.items():
    c = curve(sid)
    ctx = min(int(sae.cfg.metadata.context_size or n_ctx), n_ctx)
    rows.append({"SAE": sid, "layer": layer_of[sid], "training context": ctx, "position 0": c.loc[0],
                 f"positions 1..{ctx - 1}": c.loc[1 : ctx - 1].mean(),
                 "past the training context": c.loc[ctx:].mean() if ctx < n_ctx else np.nan,
                 "rel. error 1..ctx-1": curve(sid, value="rel_err").loc[1 : ctx - 1].mean(),
                 "rel. error past ctx": curve(sid, value="rel_err").loc[ctx:].mean() if ctx < n_ctx else np.nan})
overview = pd.DataFrame(rows)
ref_row = overview.set_index("SAE").loc[ref0]
glue("osc_pos0_ratio", float(ref_row["position 0"] / ref_row.iloc[3]), display=False)
glue("osc_past_ratio", float(ref_row["past the training context"] / ref_row.iloc[3]), display=False)
glue("osc_rel_err_in", float(ref_row["rel. error 1..ctx-1"]), display=False)
glue("osc_rel_err_past", float(ref_row["rel. error past ctx"]), display=False)
overview.style.format(precision=4).hide(axis="index")

# %% [markdown]
# Position 0 always holds the BOS token and is an outlier: for the layer-0 SAE ({glue:text}`osc_ref0`) its average
# activation is {glue:text}`osc_pos0_ratio:.1f` times the average over the rest of the training context, so the curves
# are drawn both with it and without it. Past the training context the short-context SAE's average activation is
# {glue:text}`osc_past_ratio:.1f` times its in-context level and its relative reconstruction error (squared error
# over squared norm, the length chapter's `rel_err`) goes from {glue:text}`osc_rel_err_in:.3f` to
# {glue:text}`osc_rel_err_past:.3g`: the
# length-generalisation failure of the [length chapter](length_generalization), seen in the average.

# %% tags=["remove-input"]
glue("osc_ref0", ref0, display=False)
position_curves_figure(normal, "mean_act", first=0,
                       title="Mean activation over all features and tokens, with position 0")

# %% tags=["remove-input"]
position_curves_figure(normal, "mean_act", first=1, title="Mean activation over all features and tokens, positions 1..")

# %% tags=["remove-input"]
position_curves_figure(normal, "mean_nonzero", first=1, title="Mean of the nonzero activations, positions 1..")

# %% [markdown]
# ## 2. Frequencies
#
# The oscillation's frequencies come from the Fourier transform (`rfft`) of each curve over positions
# `1..n_ctx-1`, its mean removed; a peak at `k` cycles per `n_ctx` positions has period `n_ctx / k`. The dominant
# frequency is refined between bins by a parabola through the log-amplitudes of the peak and its neighbours, and
# divided by layer 0's in the same SAE family: a ratio near 2 is the doubling seen in GPT-2 small.

# %% tags=["remove-input"]
cols = ["family", "sae_id", "layer", "positions", "dominant_cycles_per_n_ctx", "dominant_period", "peak1_cycles",
        "peak1_share", "peak2_cycles", "peak3_cycles", "ratio_to_base"]
freq_full = frequency_table(normal, n_ctx, first=1)
freq_full[cols].style.format(precision=2).hide(axis="index")

# %% [markdown]
# Over the full span, a short-context SAE's curve is dominated by its rise past the training context and a smooth
# trend, which own the lowest bins. Restricting each curve to its training context and removing a least-squares
# straight line instead of only the mean is meant to isolate the oscillation itself. Where the peak still sits in the
# lowest bin (a period equal to the whole span), the curve has no resolved oscillation there, only curvature:

# %% tags=["remove-input"]
freq = frequency_table(normal, n_ctx, first=1, within_context=True, detrend="linear")
glue("osc_freq_sentence", frequency_sentence(freq, ref_family), display=False)
freq[cols + ["cycles_in_window", "resolved"]].style.format(precision=2).hide(axis="index")

# %% [markdown]
# A peak counts as *resolved* when it completes at least 1.5 cycles over the window (above the lowest bin).
# {glue:text}`osc_freq_sentence` Spectra (each normalised to its largest peak):

# %% tags=["remove-input"]
glue("osc_ref_family", ref_family, display=False)
spectrum_figure(normal, n_ctx, first=1, within_context=True, detrend="linear")

# %% [markdown]
# ## 3. Ablating the positional embedding
#
# Three conditions, each one streamed pass with a hook on `hook_pos_embed`: **normal**; **zero**, `W_pos` replaced by
# zeros; **shuffle**, the rows of `W_pos` permuted by one fixed random permutation of positions (seed
# {glue:text}`osc_seed:.0f`), so every position still gets a valid embedding but the wrong one. The token embeddings are
# untouched. The amplitude of the oscillation is the standard deviation of the average-activation curve over positions
# 1.. within each SAE's training context (so that a short-context SAE's rise past it does not count), also given
# relative to the curve's mean.

# %% tags=["remove-input"]
glue("osc_seed", float(seed), display=False)
amplitude = oscillation_amplitude(positions, "mean_act", first=1, within_context=True)
amp = amplitude.pivot_table(index=["family", "layer"], columns="ablation", values="relative_amplitude")[list(ABLATIONS)]
ref_amp = amp.loc[ref_family]
for a in ABLATIONS:
    glue(f"osc_amp0_{a}", float(ref_amp.loc[ref_amp.index.min(), a]), display=False)
amp.style.format(precision=3)

# %% tags=["remove-input"]
amplitude_figure(amplitude)

# %% [markdown]
# For the layer-0 {glue:text}`osc_ref_family` SAE the relative amplitude is {glue:text}`osc_amp0_normal:.3f` with
# `W_pos`, {glue:text}`osc_amp0_zero:.3f` with it zeroed and {glue:text}`osc_amp0_shuffle:.3f` with it shuffled. At
# layer 0 the zeroed stream is `W_E[token]` alone, so what remains of the curve there is the variation of token
# statistics with position. The curves under each condition:

# %% tags=["remove-input"]
position_curves_figure(positions, "mean_act", first=1, title="Mean activation over all features and tokens, by W_pos condition")

# %% [markdown]
# ### What the model loses
#
# The model's cross-entropy at each position (predicting the next token) under each condition:

# %% tags=["remove-input"]
loss = pd.concat([p.loss for p in passes.values()], ignore_index=True)
ce = loss[loss["position"] >= 1].groupby("ablation", sort=False)["ce"].mean()
for a in ABLATIONS:
    glue(f"osc_ce_{a}", float(ce[a]), display=False)
loss_by_position_figure(loss, title="Cross-entropy per position by W_pos condition")

# %% [markdown]
# Averaged over positions 1.., the loss is {glue:text}`osc_ce_normal:.3f` nats normally,
# {glue:text}`osc_ce_zero:.3f` with `W_pos` zeroed and {glue:text}`osc_ce_shuffle:.3f` with it shuffled. A zeroed
# `W_pos` leaves the model without positions (causal attention still leaks some, through how many tokens each position
# attends to); a shuffled one hands it confident but wrong positions.
#
# And each SAE's relative reconstruction error (squared error over squared norm) per position under each condition (log scale):

# %% tags=["remove-input"]
position_curves_figure(positions, "rel_err", first=1, log_y=True,
                       title="Relative error of the SAE reconstruction per position")

# %% [markdown]
# ## 4. Splicing the SAEs into the model
#
# Each SAE in turn replaces the residual stream at its hook with its reconstruction (`run_with_hooks` on
# `blocks.L.hook_resid_pre`); the model's cross-entropy per position is compared with the clean run.

# %% tags=["remove-input"]
clean_loss = passes["normal"].loss.drop(columns="ablation")  # the clean run is the normal pass
spliced = pd.concat([clean_loss.assign(model="clean")]
                    + [spliced_loss(model, tokens, sae).assign(model=f"{sid} (layer {layer_of[sid]})")
                       for sid, sae in saes.items()], ignore_index=True)
clean_ce = spliced[spliced["model"] == "clean"].set_index("position")["ce"]
rows = []
for sid, sae in saes.items():
    s = spliced[spliced["model"] == f"{sid} (layer {layer_of[sid]})"].set_index("position")["ce"] - clean_ce
    ctx = min(int(sae.cfg.metadata.context_size or n_ctx), n_ctx)
    rows.append({"SAE": sid, "layer": layer_of[sid], "training context": ctx,
                 "ΔCE, positions 1..ctx-1": s.loc[1 : ctx - 1].mean(),
                 "ΔCE past ctx": s.loc[ctx:].mean() if ctx < n_ctx else np.nan, "ΔCE, all positions 1..": s.loc[1:].mean()})
splice = pd.DataFrame(rows)
ref_splice = splice.set_index("SAE").loc[ref0]
glue("osc_ce_clean", float(clean_ce.loc[1:].mean()), display=False)
glue("osc_dce_in", float(ref_splice["ΔCE, positions 1..ctx-1"]), display=False)
glue("osc_dce_past", float(ref_splice["ΔCE past ctx"]), display=False)
splice.style.format(precision=3).hide(axis="index")

# %% tags=["remove-input"]
loss_by_position_figure(spliced, color="model", title="Cross-entropy per position with each SAE spliced in")

# %% [markdown]
# The clean model's loss over positions 1.. is {glue:text}`osc_ce_clean:.3f` nats. Splicing in {glue:text}`osc_ref0`
# adds {glue:text}`osc_dce_in:.3f` nats inside its training context and {glue:text}`osc_dce_past:.3f` past it.

# %% [markdown]
# ## 5. How each feature's activations are distributed
#
# For the ReLU SAEs, per feature: the mean and standard deviation of its activation over all tokens, its firing
# density, and the deciles of its nonzero activations (from the first 32,768 tokens of the normal pass). A small frame
# per layer summarises them by their medians over live features.

# %% tags=["remove-input"]
features = passes["normal"].features
if features:
    summary = []
    for sid, df in features.items():
        live = df[df["density"] > 0]
        summary.append({"SAE": sid, "layer": layer_of[sid], "live features": len(live), "dead": int((df["density"] == 0).sum()),
                        "median density": live["density"].median(), "median mean": live["mean"].median(),
                        "median std": live["std"].median(), "median q10": live["q10"].median(),
                        "median q50": live["q50"].median(), "median q90": live["q90"].median(),
                        "corr(log mean, log std)": np.corrcoef(np.log(live["mean"]), np.log(live["std"]))[0, 1],
                        "corr(log mean, log density)": np.corrcoef(np.log(live["mean"]), np.log(live["density"]))[0, 1]})
    summary = pd.DataFrame(summary)
    glue("osc_corr_ms", float(summary["corr(log mean, log std)"].min()), display=False)
    glue("osc_corr_md", float(summary["corr(log mean, log density)"].min()), display=False)
    display(summary.style.format(precision=4).hide(axis="index"))
else:
    glue("osc_corr_ms", float("nan"), display=False)
    glue("osc_corr_md", float("nan"), display=False)
    print("No ReLU SAEs given: no per-feature statistics.")

# %% tags=["remove-input"]
if features:
    display(feature_scatter_figure(features, layer_of))
    display(decile_figure(features, layer_of))

# %% [markdown]
# On log scales, a feature's mean and standard deviation go together (correlation at least
# {glue:text}`osc_corr_ms:.2f` in every layer), and so do its mean and its firing density (at least
# {glue:text}`osc_corr_md:.2f`): features that fire often also fire strongly, so the per-position average mixes how many
# features fire with how strongly.
#
# ## Summary and what's next
#
# - The average SAE activation varies with position at every layer; its frequencies, read within each SAE's training
#   context, are in the table of section 2, with each layer's ratio to layer 0.
# - Section 3 gives the oscillation's amplitude and the model's loss with `W_pos` zeroed and shuffled, and each SAE's
#   reconstruction error per position, which for a short-context SAE grows sharply past its training context.
# - The next chapter turns from positions to datasets: how well features match across SAEs trained on different text.
