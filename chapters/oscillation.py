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
# **Overview.** In GPT-2 small, the average activation of residual-stream SAE features was reported to rise and fall
# with token position, in two periods over its 1,024 positions, following the turns of the positional embedding
# `W_pos`, and in layers 1-3 at roughly twice layer 0's frequency (study 2). This chapter measures the same curve at
# every layer given, for ReLU (L1) SAEs and TopK SAEs, on the organism that carries GPT-2's own `W_pos`
# (organism-gpt2pos: GPT-2 small's rows, projected to the organism's width and frozen, over all 1,024 positions); asks
# whether a curve oscillates at all, with a test that keeps the curve's trend; tests the first organism's curves beside
# it; removes or scrambles `W_pos` to see what the curve and the model's loss owe to it; splices every SAE into the
# model; and looks at how each feature's activations are distributed.
#
# **Prerequisites.** The [setup chapter](setup) (the models, `W_pos`, held-out text). An SAE at
# `blocks.L.hook_resid_pre` reads the residual stream entering block `L`; at layer 0 that is
# `W_E[token] + W_pos[position]`.

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # 'organism-gpt2pos', 'organism', a sae_lens release, or a local sae_lens folder
device = None  # None picks CUDA when present
relu_sae_ids = ["relu-full", "relu-full-L1", "relu-full-L2", "relu-full-L3"]  # ReLU/L1 SAEs, in layer order; [] skips
topk_sae_ids = ["topk-L0", "topk-L1", "topk-L2", "topk-L3"]  # TopK SAEs, in layer order; [] skips them
n_heldout_tokens = 2048  # held-out tokens per corpus, in windows of the model's full context n_ctx (section 6 checks it suffices)
seed = 0  # seed of the shuffle ablation's permutation of positions and of the spectral test's null
comparison_model = "organism"  # a shipped organism whose curves are tested beside this model's; None: none

# %% tags=["remove-cell"]
from possae.figures import use_offline_renderer
from possae.figures.oscillation import (
    amplitude_figure,
    decile_figure,
    feature_scatter_figure,
    loss_by_position_figure,
    position_curves_figure,
    sae_families,
    spectrum_figure,
    spliced_loss_figure,
)
from possae.glued import glue_all
from possae.oscillation import OscillationParams, analyze, load_subjects

use_offline_renderer()
params = OscillationParams.from_namespace(globals())
model, saes = load_subjects(params)
result = analyze(model, saes, params)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## 1. Average activation vs position, layer by layer
#
# We run the model over {glue:text}`osc_n_windows` held-out windows of the full context of {glue:text}`osc_n_ctx`
# tokens ({glue:text}`osc_n_tokens:,` tokens), and for every SAE accumulate, position by position, two averages: the
# mean of the activation over all features and all windows (zeros included), and the mean over the nonzero
# activations only, as the original study did. An SAE's *training context* is the number of positions `C` it was
# trained on: positions `1..C-1` are inside it (position 0 holds BOS), positions `C..` past it, where a short-context
# SAE sees residual streams it never saw in training. Dashed lines in the figures mark the end of the context.

# %% tags=["remove-input"]
result.tables["activation"].style.hide(axis="index")

# %% [markdown]
# The table gives the first average at position 0, over the in-context positions and over the positions past the
# context. Position 0 always holds the BOS token: for the layer-{glue:text}`osc_ref_layer` SAE
# ({glue:text}`osc_ref0`) its average activation is {glue:text}`osc_pos0_ratio:.2f` times the average over the rest
# of its training context, and the curves are drawn both with it and without it. {glue:text}`osc_past_sentence`

# %% tags=["remove-input"]
position_curves_figure(result.positions[result.positions["ablation"] == "normal"], "mean_act", first=0,
                       title="Mean activation over all features and tokens, with position 0")

# %% tags=["remove-input"]
position_curves_figure(result.positions[result.positions["ablation"] == "normal"], "mean_act", first=1, fit_context=True,
                       title="Mean activation over all features and tokens, positions 1..<br>(y: the SAE's context)")

# %% tags=["remove-input"]
position_curves_figure(result.positions[result.positions["ablation"] == "normal"], "mean_nonzero", first=1,
                       fit_context=True, title="Mean of the nonzero activations, positions 1..<br>(y: the SAE's context)")

# %% [markdown]
# ## 2. Is there an oscillation?
#
# {glue:text}`osc_premise_sentence`
#
# A curve that rises or bends across its window puts its power in the lowest Fourier bins, and the peak of a raw
# spectrum then reports the window's length as a "period". So each SAE's curve is taken over its in-context positions
# `1..C-1` only, a least-squares polynomial of degree {glue:text}`osc_detrend_degree` in the position is removed, and
# the spectrum (`rfft`) of what remains is read at its largest peak. The peak counts as an **oscillation** only when
# both hold:
#
# - it is *resolved*: a sinusoid near the peak (its cycles searched within one cycle of it, with its amplitude and
#   phase: three parameters) fits the curve, beside the cubic, better than a *trend* with three parameters more does:
#   the polynomial of degree {glue:text}`osc_poly_degree`, or the cubic plus one sharp logistic step anywhere in the
#   window. And the best sinusoid has at least {glue:text}`osc_min_cycles:g` cycles in the window (a rise, a fall and a
#   rise again). A smooth trend that is no polynomial, a log-like rise or a step, leaves about two cycles after the
#   cubic, just where GPT-2's two periods would lie: this rule tells the two apart by which shape fits them. (The
#   table's "trend / sinusoid residual" is above 1 where the sinusoid fits better.)
# - it is *significant*: its power exceeds the {glue:text}`osc_null_quantile:.0%` quantile of the largest detrended
#   power of {glue:text}`osc_n_null` seeded *red-noise surrogates* of the curve. Each surrogate is the curve's own
#   polynomial trend plus an AR(1) series with the lag-1 autocorrelation of the curve's detrended residual, scaled to
#   the residual's power. The null thus keeps the trend and the residual's smoothness, and asks only whether one
#   frequency stands out more than smooth noise of the same size makes one stand out. The p-value is the share of
#   surrogates (counting the curve itself) that reach the peak's power. An oscillation raises the residual's
#   autocorrelation too, which makes the test conservative.
#
# The package's tests check the method on controls. Over 1,023 positions, with noise and a swing at the levels measured
# on the GPT-2-geometry organism's layer-0 curve on top of a large cubic trend, sines of two and of four cycles are found, with their
# cycles; the cubic, log-like, decaying, square-root and step trends with the same noise, and pure noise, are called at
# about the rate the quantile allows. The methods this one replaced fail the same controls: the raw spectrum's lowest
# bin reports the trend, and a null that shuffles the raw curve spreads the trend's variance over every frequency and
# misses the sines.

# %% tags=["remove-input"]
result.tables["frequency"].style.hide(axis="index")

# %% [markdown]
# {glue:text}`osc_n_oscillating` of the {glue:text}`osc_n_saes` curves pass both tests.
# {glue:text}`osc_freq_sentence`
#
# {glue:text}`osc_floor_sentence`
#
# {glue:text}`osc_comparison_sentence` The cycles found, per model, family and layer:

# %% tags=["remove-input"]
result.tables["cycles"].style.hide(axis="index")

# %% [markdown]
# The spectra of this model's curves, each over its red-noise threshold (a point above the dashed line at 1 has more
# power than {glue:text}`osc_null_quantile:.0%` of the surrogates' largest peaks):

# %% tags=["remove-input"]
spectrum_figure(result.spectra)

# %% [markdown]
# ## 3. Ablating the positional embedding
#
# Three conditions, each one streamed pass with a hook on `hook_pos_embed`: **normal**; **zero**, `W_pos` replaced by
# zeros; **shuffle**, the rows of `W_pos` permuted by one fixed random permutation of positions (seed
# {glue:text}`osc_seed`), so every position still gets a valid embedding but the wrong one.
# {glue:text}`osc_shuffle_sentence` The token embeddings are untouched. The relative amplitude of a curve is its standard deviation over the SAE's in-context positions `1..C-1`
# divided by its mean there (so that a short-context SAE's rise past its context does not count). Permuting positions
# leaves that number almost unchanged, so the table also gives how much of the normal curve's *pattern* an ablated
# curve keeps: its correlation with the normal curve over the same positions (1: the same shape, at any level or
# scale; 0 or below: the pattern gone).

# %% tags=["remove-input"]
result.tables["amplitude"].style.hide(axis="index")

# %% tags=["remove-input"]
amplitude_figure(result.amplitude)

# %% [markdown]
# For the layer-{glue:text}`osc_ref_layer` {glue:text}`osc_ref_family` SAE ({glue:text}`osc_ref0`) the relative
# amplitude is {glue:text}`osc_amp0_normal:.3f` with `W_pos`, {glue:text}`osc_amp0_zero:.3f` with it zeroed and
# {glue:text}`osc_amp0_shuffle:.3f` with it shuffled. {glue:text}`osc_pattern_sentence` At layer 0 the zeroed
# stream is `W_E[token]` alone, so what remains of the curve there is the variation of token statistics with position.
# The curves under each condition:

# %% tags=["remove-input"]
position_curves_figure(result.positions, "mean_act", first=1,
                       title="Mean activation over all features and tokens, by W_pos condition")

# %% [markdown]
# ### What the model loses
#
# The model's cross-entropy at each position (predicting the next token) under each condition:

# %% tags=["remove-input"]
loss_by_position_figure(result.loss, title="Cross-entropy per position by W_pos condition")

# %% [markdown]
# Averaged over positions 1.. (position 0 sees BOS alone), the loss is {glue:text}`osc_ce_normal:.3f` nats normally,
# {glue:text}`osc_ce_zero:.3f` with `W_pos` zeroed and {glue:text}`osc_ce_shuffle:.3f` with it shuffled.
# {glue:text}`osc_ce_sentence`
#
# And each SAE's nMSE per position under each condition (log scale): the MSE at the position over the total variance
# of the SAE's in-context inputs in the normal pass, the same divisor for every condition:

# %% tags=["remove-input"]
position_curves_figure(result.positions, "nmse", first=1, log_y=True,
                       title="nMSE of the SAE reconstruction per position")

# %% [markdown]
# ## 4. Splicing the SAEs into the model
#
# Each SAE in turn replaces the residual stream at its hook with its reconstruction (`run_with_hooks` on its
# `blocks.L.hook_resid_pre`); the model's cross-entropy per position is compared with the clean run
# ({glue:text}`osc_ce_normal:.3f` nats over positions 1..). The nMSE inside the context is sae_lens's (one minus the
# explained variance over those inputs); past it, the MSE there over the same in-context variance.

# %% tags=["remove-input"]
result.tables["splice"].style.hide(axis="index")

# %% tags=["remove-input"]
spliced_loss_figure(result.spliced, sae_families(result.positions),
                    title="Cross-entropy per position with each SAE spliced in")

# %% [markdown]
# {glue:text}`osc_splice_sentence` The [length chapter](length_generalization) studies what happens past an SAE's
# training context in detail.

# %% [markdown]
# ## 5. How each feature's activations are distributed
#
# Per feature of every SAE: the mean and standard deviation of its activation over all tokens, its firing density,
# and the deciles of its nonzero activations (from the first {glue:text}`osc_quantile_tokens:,` tokens of each
# region, whole tokens up to {glue:text}`osc_quantile_values:,` nonzero values), computed separately over the SAE's
# in-context positions `1..C-1` and, for a short-context SAE, over the positions past its context. The tables give
# medians over the features that fire in that region (live). A feature silent on this chapter's
# {glue:text}`osc_n_tokens:,` tokens may still fire on more text: the count of silent features is not the dead share
# of the model card or of sae_lens's evals in the setup chapter, which read more held-out tokens.

# %% tags=["remove-input"]
result.tables["features"].style.hide(axis="index")

# %% [markdown]
# {glue:text}`osc_density_sentence` The figures and the next table use the in-context statistics only.

# %% tags=["remove-input"]
result.tables["shape"].style.hide(axis="index")

# %% tags=["remove-input"]
feature_scatter_figure(result.features, result.layers)

# %% tags=["remove-input"]
decile_figure(result.features, result.layers, sae_families(result.positions))

# %% [markdown]
# {glue:text}`osc_corr_sentence`
#
# ## 6. How sure: the verdicts' figures with intervals
#
# This chapter runs on {glue:text}`osc_n_heldout_tokens:,` held-out tokens per corpus, fewer than the layer-0
# chapters read, to keep the book fast. Each figure that a verdict of the [ledger](ledger) compares with a threshold
# is given an interval: the windows were dealt in turn into blocks, the figure is recomputed with each block left
# out, and the spread of those values gives a jackknife standard error (Student's t with one degree of freedom fewer
# than blocks). A figure whose whole interval lies on one side of its threshold would give the same verdict on a larger
# sample. {glue:text}`osc_check_sentence`

# %% tags=["remove-input"]
result.tables["checks"].style.hide(axis="index")

# %% [markdown]
# ## Summary and what's next
#
# - The average SAE activation is measured position by position at every layer given; whether it *oscillates*
#   inside an SAE's training context is the test of section 2: {glue:text}`osc_n_oscillating` of
#   {glue:text}`osc_n_saes` curves do.
# - Section 3 gives the curve's amplitude and the model's loss with `W_pos` zeroed and shuffled, and each SAE's nMSE
#   per position; section 4 what splicing each SAE costs the model, inside and past its training context.
# - Per-feature statistics are computed inside each SAE's training context, and past it separately.
# - The next chapter turns from positions to datasets: how well features match across SAEs trained on different text.
