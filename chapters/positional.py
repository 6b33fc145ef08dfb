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
# # Positional features
#
# **Overview.** At layer 0 a transformer's residual stream is exactly `x(t, p) = W_E[t] + W_pos[p]`, the sum of a
# token part and a position part. An SAE trained on it can spend features on either. This chapter finds the
# features that mostly encode *position*: it scores every feature by the share of its variance explained by
# position, exactly, over every (token, position) input; shows the profiles of the most positional ones; counts how
# many features serve each position; lays their decoder directions beside the curve `W_pos` traces in its top
# principal components; compares position with token for every feature; looks for positional *neurons* in the
# layer-0 MLP on real text; and follows the number of positional features across a sweep of SAE widths.
#
# **Prerequisites.** The [setup](setup) chapter (the model, the SAE, the geometry of `W_pos`). A ReLU SAE feature is
# `f_i(x) = ReLU(w_i · (x - b_dec) + b_i)`.

# %% tags=["parameters", "remove-cell"]
model_name = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default: GPT-2's own W_pos), 'organism', a transformer_lens name, or a folder
sae_release = "organism-gpt2pos"  # an organism's name, a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE (blocks.0.hook_resid_pre)
device = None  # None picks CUDA when present
threshold = 0.5  # a feature (or MLP neuron) is positional if position explains at least this share of its variance
n_heldout_tokens = 16384  # held-out text tokens per corpus, for the MLP neurons
width_sweep_release = "organism-gpt2pos"  # release of the width sweep's SAEs
width_sweep_ids = ["relu-short-8x", "relu-short-16x", "relu-short", "relu-short-64x"]  # [] skips the sweep
top_k = 8  # positional features whose profiles are shown

# %% tags=["remove-cell"]
from IPython.display import display

from possae.figures import use_offline_renderer
from possae.figures.positional import (
    helix_overlay_figure,
    neuron_profiles_figure,
    neuron_share_figure,
    peak_histogram_figure,
    profile_grid_figure,
    r2_scatter_figure,
    sorted_scores_figure,
    width_sweep_figure,
)
from possae.glued import glue_all
from possae.loaders import load_model_and_sae
from possae.neuronpedia import show
from possae.positional import NEAR_0, NEAR_1, PositionalParams, analyze

use_offline_renderer()
params = PositionalParams.from_namespace(globals())
model, sae = load_model_and_sae(params.sae_release, params.sae_id, device=params.device, model_name=params.model_name)
result = analyze(model, sae, params)
glue_all(result.glued(), model=model)

# %% [markdown]
# ## Which features are positional
#
# Take the inputs of the SAE's training context that hold ordinary text: every token `t` of the vocabulary
# (uniformly weighted) at every position from {glue:text}`pos_first` to {glue:text}`pos_last`
# ({glue:text}`pos_d_vocab:,` tokens at each of them; the SAE's context is {glue:text}`pos_context` positions).
# Position 0 is left out: in every training window it holds the BOS token, so it is a slot, not a position among
# others (it is discussed apart below). Over this joint distribution, a feature's variance splits into a part
# explained by position and the rest:
#
# $$R^2_\text{pos}(i) = \frac{\operatorname{Var}_p\big(\mathbb E_t f_i(t, p)\big)}{\operatorname{Var}_{t,p} f_i(t, p)},
# \qquad R^2_\text{tok}(i) = \frac{\operatorname{Var}_t\big(\mathbb E_p f_i(t, p)\big)}{\operatorname{Var}_{t,p} f_i(t, p)}.$$
#
# Both come *exactly* from the split of the pre-activation into a token part and a position part,
# `h_i(t, p) = a_i(t) + c_i(p)`: sorting each feature's `a_i` over the vocabulary once gives the mean and the
# variance of `ReLU(a_i(t) + c_i(p))` over all tokens at every position, with no sampling. A feature counts as
# **positional** when it fires on at least one of these inputs and `R²_pos ≥` {glue:text}`pos_threshold:.2f`:
# position alone explains at least that share of its variance. This is the one count of the book: the
# [semantic-features](semantic) chapter cites the same number, from the same function.

# %% tags=["remove-input"]
display(sorted_scores_figure(result.scores["r2_pos"], params.threshold))
result.threshold_table()

# %% [markdown]
# Of the {glue:text}`pos_d_sae` features, {glue:text}`pos_n_live` fire somewhere in the context, and
# {glue:text}`pos_n_positional` ({glue:text}`pos_share_positional:.2%`) are positional by this criterion; the largest
# `R²_pos` is {glue:text}`pos_max_r2:.3f`. {glue:text}`pos_count_sentence`
# {glue:text}`pos_slot_count_sentence`
#
# **What exactness costs.** Here the statistics over all {glue:text}`pos_d_vocab:,` tokens at each context position
# took {glue:text}`pos_stats_seconds:.1f` s (path: {glue:text}`pos_stats_method`). The original study sampled 800
# tokens and 128 positions because brute force over gpt2-small's full distribution, 50,257 tokens × 1,024 positions
# into 24,576 features, is about 2 PFLOP. The exact path needs one matmul `W_E · W_enc` and a sort per feature; the
# benchmark below (`benchmarks/bench_layer0_stats.py`, random weights of gpt2-small's shapes, recorded in
# `benchmarks/results/layer0_stats.json`) times it against that floor and against brute force (on a CPU timed on a
# subsample and extrapolated, on a GPU run over every input):

# %% tags=["remove-input"]
result.bench_table()

# %% [markdown]
# On the full gpt2-small distribution the exact path takes {glue:text}`pos_bench_exact:.0f` s,
# {glue:text}`pos_bench_ratio:.2f` times the unavoidable matmul ({glue:text}`pos_bench_ratio_blocked:.2f` times the same
# product formed in the cache-sized blocks of tokens the exact path uses) and {glue:text}`pos_bench_speedup:,.0f` times
# faster than brute force. {glue:text}`pos_bench_gpu_sentence`

# %% [markdown]
# ## Profiles of the top positional features
#
# {glue:text}`pos_top_lead` the mean and standard deviation of the activation over all tokens at each position
# (blue), and the position part of the pre-activation `c_i(p) = (W_pos[p] - b_dec) · w_i + b_i` (red, right axis). The feature
# fires at position `p` on the tokens with `a_i(t) > -c_i(p)`, so on at least one token exactly where `c_i(p)` rises
# above the dotted line `-max_t a_i(t)`. Each panel is zoomed onto the positions where its feature is active (at least
# 16 positions, at most the context); the shaded position 0 is the BOS slot. The
# [length-generalization](length_generalization) chapter follows these profiles past the context.

# %% tags=["remove-input"]
display(profile_grid_figure(result.profiles, result.preacts, result.windows, pages=result.pages))
show(result.top_table())

# %% [markdown]
# {glue:text}`pos_links_sentence`
#
# A positional feature's *peak width* is the number of context positions where its mean activation reaches at least
# half its maximum. {glue:text}`pos_width_sentence` The profiles show the mechanism: where `c_i(p)` stands well above
# the dotted line the feature fires on most of the vocabulary, and where it drops towards or below it, on few tokens;
# the standard-deviation band is the spread of the activation over the tokens at each position.

# %% [markdown]
# ## Which positions get their own features
#
# Each positional feature's *peak* is the context position of its largest mean activation. The histogram counts the
# features peaking at each position (stacked: the positional features, the features with
# `threshold/2 ≤ R²_pos < threshold`, and, at position 0, the BOS-slot features described below, which the count
# leaves out); the table groups the context's positions into early and late ones.

# %% tags=["remove-input"]
display(peak_histogram_figure(result.histograms()))
result.range_table()

# %% [markdown]
# {glue:text}`pos_range_sentence` {glue:text}`pos_norm_sentence`
#
# **Coverage.** The first study found about 50 positional features tiling every position of GPT-2's 128-token
# context, single-position features at the earliest positions, and early features firing more strongly.
# {glue:text}`pos_coverage_sentence`
#
# **Two geometries.** possae's first organism learned its own `W_pos`; this chapter's default organism carries
# GPT-2's. The table sets this SAE beside the other organism's 32x ReLU SAE on its short context: how far each
# `W_pos` winds over the positions its SAE sees, how long its rows are against a token embedding, and how many of
# those positions the positional features peak at (the [setup](setup) chapter compares the whole curves).

# %% tags=["remove-input"]
result.geometry_coverage_table()

# %% [markdown]
# {glue:text}`pos_geometry_coverage_sentence`

# %% [markdown]
# ## The W_pos curve and the decoder directions
#
# `W_pos`'s rows {glue:text}`pos_first` to {glue:text}`pos_last`, centred and projected on their top three principal
# components, trace a curve (top; the [setup](setup) chapter shows it over all positions). Below, the
# positional features' decoder directions (unit vectors) projected on the same three components, coloured by their
# peak position. A feature that detects position `p` should write back the part of the input that position adds:
# its decoder direction should point along the centred row `W_pos[p] - mean`.

# %% tags=["remove-input"]
display(helix_overlay_figure(result.helix, pages=result.pages))
result.alignment_table().style.format(precision=3)  # a Styler shows every peak position (pandas would elide rows)

# %% [markdown]
# The top three components hold {glue:text}`pos_top3:.1%` of the variance of rows {glue:text}`pos_first` to
# {glue:text}`pos_last`. {glue:text}`pos_align_sentence`
#
# **The BOS slot.** {glue:text}`pos_bos_slot`

# %% [markdown]
# ## Position vs token, for every feature
#
# Each feature's `R²_tok` against its `R²_pos` (both over the context positions {glue:text}`pos_first` to
# {glue:text}`pos_last`; at most {glue:text}`pos_scatter_points:,` features shown, all positional ones among them).
# The two cannot sum to more than 1; what is missing is the *interaction*: variance that neither position nor token
# explains on its own, because the ReLU cuts `a_i(t) + c_i(p)` at a threshold that depends on both. Cut-offs:
# *near 0* is `R² <` {glue:text}`pos_low:.2f`, *near 1* is `R² >` {glue:text}`pos_high:.2f`, among the features that
# fire.

# %% tags=["remove-input"]
display(r2_scatter_figure(result.scatter, params.threshold, NEAR_0, NEAR_1, pages=result.pages))
result.extremes_table()

# %% [markdown]
# {glue:text}`pos_extremes_sentence` {glue:text}`pos_interaction_sentence`

# %% [markdown]
# ## Positional neurons in the layer-0 MLP
#
# The SAE reads the residual stream *before* the MLP. Does the MLP itself have positional units? On held-out text
# ({glue:text}`pos_neuron_tokens` tokens from the evaluation pack's held-out documents, in windows of the model's full
# `n_ctx` = {glue:text}`pos_n_ctx` tokens), each neuron's activation at `blocks.0.mlp.hook_post` gets the same
# `R²_pos` as the SAE's features, here estimated from samples: the share of its variance between positions,
# `η² = SS_between / SS_total`, over positions 1 to `n_ctx - 1` (position 0 always holds BOS, so its activation is the
# same in every window). A neuron with no positional dependence gets, by chance alone, `E[η²] = (P - 1)/(N - 1)` =
# {glue:text}`pos_chance:.4f` with `P` positions and `N` samples. A neuron counts as positional when `η² ≥`
# {glue:text}`pos_threshold:.2f`.

# %% tags=["remove-input"]
display(neuron_share_figure(result.neurons.r2, params.threshold, result.neurons.chance))
display(neuron_profiles_figure(result.neurons.profiles, result.context_size))
result.neuron_table()

# %% [markdown]
# Of the {glue:text}`pos_d_mlp` neurons, {glue:text}`pos_n_neurons` have `η² ≥` {glue:text}`pos_threshold:.2f`, the
# largest being {glue:text}`pos_top_neuron_share:.3f`; {glue:text}`pos_n_neurons_10x` exceed ten times the chance
# level. {glue:text}`pos_neuron_context` On real text a neuron's positional share is diluted by whatever
# the tokens do, just as a feature's `R²_pos` is; the profiles show what the most positional neurons do with
# position.

# %% [markdown]
# ## Positional features vs SAE width
#
# The same SAE recipe at several widths (same layer, same training context and data): for each SAE, the number of
# positional features (same criterion, over its own context positions), the number of distinct positions they peak
# at, and their mean peak width (positions at or above half the maximum mean activation). If positional features
# split as the SAE widens, the count should grow with `d_sae` and the peak width should shrink.

# %% tags=["remove-input"]
display(width_sweep_figure(result.sweep, result.fit["slope"]))
result.sweep_table()

# %% [markdown]
# {glue:text}`pos_sweep_sentence`

# %% [markdown]
# ## Summary
#
# - {glue:text}`pos_n_positional` of {glue:text}`pos_d_sae` features ({glue:text}`pos_share_positional:.2%`) are
#   positional: `R²_pos ≥` {glue:text}`pos_threshold:.2f` over the context positions {glue:text}`pos_first` to
#   {glue:text}`pos_last`, computed exactly over every token at each of them.
# - {glue:text}`pos_summary_peaks`
# - {glue:text}`pos_coverage_sentence`
# - {glue:text}`pos_sweep_summary`
# - Position explains less than {glue:text}`pos_low:.0%` of the variance of {glue:text}`pos_pos_near0:.1%` of the
#   firing features, while token identity explains more than {glue:text}`pos_high:.0%` of the variance of
#   {glue:text}`pos_tok_near1:.1%` of them.
# - The layer-0 MLP has {glue:text}`pos_n_neurons` neurons whose activation on real text is at least
#   {glue:text}`pos_threshold:.0%` explained by position.
#
# **What's next.** The [length-generalization](length_generalization) chapter follows these features past the SAE's
# training context, where `W_pos` brings rows the SAE never saw.
