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
model_name = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
sae_release = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
sae_id = "relu-short"  # a layer-0 SAE (blocks.0.hook_resid_pre)
device = None  # None picks CUDA when present
threshold = 0.5  # a feature (or MLP neuron) is positional if position explains at least this share of its variance
n_heldout_tokens = 16384  # held-out text tokens per corpus, for the MLP neurons
width_sweep_release = "organism"  # release of the width sweep's SAEs
width_sweep_ids = ["relu-short-8x", "relu-short-16x", "relu-short", "relu-short-64x"]  # [] skips the sweep
top_k = 8  # positional features whose profiles are shown

# %% tags=["remove-cell"]
import time

import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from possae.benchmark_results import layer0_benchmark_frame
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
from possae.heldout import heldout_windows
from possae.layer0_stats import layer0_stats_from_model
from possae.loaders import check_sae_fits, load_model_and_sae, load_sae
from possae.hooks import require_layer0
from possae.positional import (
    bos_slot_sentence,
    chance_share,
    decoder_alignment,
    feature_scores,
    fires_inside,
    helix_projection,
    mlp_position_moments,
    neuron_profile_frame,
    decoder_input_cosine,
    loglog_fit,
    peak_histogram,
    peak_positions,
    peak_width,
    peak_range_frame,
    positional_features,
    positional_profile_frame,
    positional_share,
    preact_profile_frame,
    r2_extremes,
    scatter_sample,
    threshold_counts,
    top_positional_features,
    width_sweep_frame,
    wpos_frame_pca,
)

use_offline_renderer()
model, sae = load_model_and_sae(sae_release, sae_id, device=device, model_name=model_name)
require_layer0(sae, "The positional-features chapter")
n_ctx = model.cfg.n_ctx
context_size = min(sae.cfg.metadata.context_size or n_ctx, n_ctx)
# exact statistics over every token x every position the SAE was trained on, and over all n_ctx positions
start = time.perf_counter()
stats_in = layer0_stats_from_model(model, sae, positions=range(context_size))
glue("pos_stats_seconds", time.perf_counter() - start, display=False)
glue("pos_stats_method", stats_in.path, display=False)
stats = stats_in if context_size == n_ctx else layer0_stats_from_model(model, sae)
glue("pos_threshold", float(threshold), display=False)
glue("pos_context", int(context_size), display=False)
glue("pos_n_ctx", int(n_ctx), display=False)
glue("pos_d_sae", int(sae.cfg.d_sae), display=False)
glue("pos_d_vocab", int(model.cfg.d_vocab), display=False)

# %% [markdown]
# ## Which features are positional
#
# Take the inputs of the SAE's training context: every token `t` of the vocabulary (uniformly weighted) at every
# position `p < context_size` ({glue:text}`pos_d_vocab` tokens × {glue:text}`pos_context` positions). Over this joint
# distribution, a feature's variance splits into a part explained by position and the rest:
#
# $$R^2_\text{pos}(i) = \frac{\operatorname{Var}_p\big(\mathbb E_t f_i(t, p)\big)}{\operatorname{Var}_{t,p} f_i(t, p)},
# \qquad R^2_\text{tok}(i) = \frac{\operatorname{Var}_t\big(\mathbb E_p f_i(t, p)\big)}{\operatorname{Var}_{t,p} f_i(t, p)}.$$
#
# Both come *exactly* from the split of the pre-activation into a token part and a position part,
# `h_i(t, p) = a_i(t) + c_i(p)`: sorting each feature's `a_i` over the vocabulary once gives the mean and the
# variance of `ReLU(a_i(t) + c_i(p))` over all tokens at every position, with no sampling. A feature counts as
# **positional** when it fires on at least one input of the context and `R²_pos ≥` {glue:text}`pos_threshold:.2f`:
# position alone explains at least that share of its variance.

# %% tags=["remove-input"]
scores = feature_scores(stats_in)
live = fires_inside(stats_in)
positional = positional_features(stats_in, threshold=threshold)
feats = positional.nonzero().squeeze(1)
all_peaks = peak_positions(stats_in)
peaks = all_peaks[feats]
counts = threshold_counts(stats_in.r2_pos, live, tuple(sorted({0.1, 0.3, 0.5, 0.7, 0.9, threshold})))
glue("pos_n_live", int(live.sum()), display=False)
glue("pos_n_positional", int(positional.sum()), display=False)
glue("pos_share_positional", float(positional.sum()) / sae.cfg.d_sae, display=False)
glue("pos_max_r2", float(stats_in.r2_pos.max()), display=False)
glue("pos_half_threshold", threshold / 2, display=False)
glue("pos_n_half_thr", int(((stats_in.r2_pos >= threshold / 2) & live).sum()), display=False)
display(sorted_scores_figure(stats_in.r2_pos, threshold))
counts.rename_axis("R²_pos ≥")

# %% [markdown]
# Of the {glue:text}`pos_d_sae` features, {glue:text}`pos_n_live` fire somewhere in the context, and
# {glue:text}`pos_n_positional` ({glue:text}`pos_share_positional:.2%`) are positional by this criterion; the largest
# `R²_pos` is {glue:text}`pos_max_r2:.3f`. The count depends on the threshold (table): halving it to
# {glue:text}`pos_half_threshold:.2f` admits {glue:text}`pos_n_half_thr` features. Either way positional features are a
# small minority of the dictionary.
#
# **What exactness costs.** Here the statistics over all {glue:text}`pos_d_vocab` × {glue:text}`pos_context` inputs
# took {glue:text}`pos_stats_seconds:.1f` s (path: {glue:text}`pos_stats_method`). The original study sampled 800
# tokens and 128 positions because brute force over gpt2-small's full distribution, 50,257 tokens × 1,024 positions
# into 24,576 features, is about 2 PFLOP. The exact path needs one matmul `W_E · W_enc` and a sort per feature; the
# benchmark below (`benchmarks/bench_layer0_stats.py`, random weights of gpt2-small's shapes, recorded in
# `benchmarks/results/layer0_stats.json`) times it against that floor and against brute force, timed on a subsample
# and extrapolated:

# %% tags=["remove-input"]
bench = layer0_benchmark_frame()
glue("pos_bench_exact", float(bench["exact (s)"].iloc[0]), display=False)
glue("pos_bench_ratio", float(bench["exact / matmul"].iloc[0]), display=False)
glue("pos_bench_speedup", float(bench["speed-up vs brute force"].iloc[0]), display=False)
bench.set_index("device").T.map(lambda v: f"{v:,.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v)

# %% [markdown]
# On the full gpt2-small distribution the exact path takes {glue:text}`pos_bench_exact:.0f` s,
# {glue:text}`pos_bench_ratio:.2f` times the unavoidable matmul and {glue:text}`pos_bench_speedup:,.0f` times faster
# than brute force.

# %% [markdown]
# ## Profiles of the top positional features
#
# For the most positional features (at most two per peak position, so that different positions show), the mean and
# standard deviation of the activation over all tokens at each position (blue), and the position part of the
# pre-activation `c_i(p) = (W_pos[p] - b_dec) · w_i + b_i` (red, right axis). The feature fires at position `p` on
# the tokens with `a_i(t) > -c_i(p)`, so on at least one token exactly where `c_i(p)` rises above the dotted line
# `-max_t a_i(t)`. Profiles run over all {glue:text}`pos_n_ctx` positions; the dashed line marks the end of the SAE's
# training context, {glue:text}`pos_context` positions (the [length-generalization](length_generalization) chapter
# follows what happens past it).

# %% tags=["remove-input"]
top = top_positional_features(stats_in, None, k=top_k, threshold=threshold, per_peak=2)
glue("pos_n_top", int(len(top)), display=False)
if len(top):
    profiles = positional_profile_frame(stats, top)
    preacts = preact_profile_frame(model.W_E, model.W_pos, sae, top, device=device)
    display(profile_grid_figure(profiles, preacts, context_size))
    display(scores.loc[top.tolist(), ["r2_pos", "r2_tok", "peak_position", "peak_width", "max_firing_rate"]])
else:
    print(f"No feature reaches R²_pos >= {threshold}: no profiles to show (lower -p threshold).")
widths = peak_width(stats_in)[feats].double()
glue("pos_mean_width", float(widths.mean()) if len(feats) else float("nan"), display=False)
glue("pos_share_width1", float((widths == 1).double().mean()) if len(feats) else float("nan"), display=False)

# %% [markdown]
# A positional feature's *peak width* is the number of context positions where its mean activation reaches at least
# half its maximum. The {glue:text}`pos_n_positional` positional features have a mean peak width of
# {glue:text}`pos_mean_width:.2f` positions, and {glue:text}`pos_share_width1:.0%` of them are single-position
# detectors (width 1). In the profiles, such a feature's `c_i(p)` stands well above the dotted line at its peak, so it
# fires on most of the vocabulary there, and drops towards or below it elsewhere, so it fires on few tokens anywhere
# else: the standard deviation band away from the peak is the few tokens that still carry it.

# %% [markdown]
# ## Which positions get their own features
#
# Each positional feature's *peak* is the context position of its largest mean activation. The histogram counts the
# features peaking at each position (stacked: the positional features, and the features with
# `threshold/2 ≤ R²_pos < threshold`); the table groups positions into position 0, positions 1-7, and the rest of the
# context. Position 0 is special: in every training window it holds the BOS token, so features peaking there learned
# the BOS slot, not a position among others.

# %% tags=["remove-input"]
half = ((stats_in.r2_pos >= threshold / 2) & live & ~positional).nonzero().squeeze(1)
display(peak_histogram_figure({f"R²_pos ≥ {threshold:g}": peak_histogram(peaks, context_size),
                               f"{threshold / 2:g} ≤ R²_pos < {threshold:g}": peak_histogram(all_peaks[half], context_size)},
                              context_size))
ranges = peak_range_frame(peaks, context_size, edges=(1, 8))
for i, key in enumerate(("p0", "early", "late")):
    has = i < len(ranges)
    glue(f"pos_range_{key}_n", int(ranges["features"].iloc[i]) if has else 0, display=False)
    glue(f"pos_range_{key}_per", float(ranges["features_per_position"].iloc[i]) if has else float("nan"), display=False)
    glue(f"pos_range_{key}_cover", int(ranges["positions_with_a_feature"].iloc[i]) if has else 0, display=False)
glue("pos_late_last", int(context_size - 1), display=False)
wpos_norm = model.W_pos.detach()[:context_size].norm(dim=-1).cpu()
glue("pos_wpos_norm_1", float(wpos_norm[1]) if context_size > 1 else float("nan"), display=False)
glue("pos_wpos_norm_last", float(wpos_norm[-1]), display=False)
glue("pos_we_norm", float(model.W_E.detach().norm(dim=-1).mean()), display=False)
ranges.drop(columns=["first", "last"]).set_index("positions")

# %% [markdown]
# Early positions get dedicated features: {glue:text}`pos_range_p0_n` positional features peak at position 0 (the BOS
# slot) and {glue:text}`pos_range_early_n` at positions 1-7, {glue:text}`pos_range_early_per:.2f` features per
# position, covering {glue:text}`pos_range_early_cover` of those 7 positions. The remaining positions 8 to
# {glue:text}`pos_late_last` get {glue:text}`pos_range_late_n` ({glue:text}`pos_range_late_per:.3f` per position,
# {glue:text}`pos_range_late_cover` positions with a feature). One reason visible in the weights: the norm of
# `W_pos[p]` falls from {glue:text}`pos_wpos_norm_1:.2f` at position 1 to {glue:text}`pos_wpos_norm_last:.2f` at the
# last context position, against a mean token-embedding norm of {glue:text}`pos_we_norm:.2f`, so late positions move
# the input less than the token does and are cheaper to leave to the decoder bias and the token features.

# %% [markdown]
# ## The W_pos helix and the decoder directions
#
# `W_pos`'s rows 1 to `context_size - 1`, centred and projected on their top three principal components, trace a
# curve (left; the [setup](setup) chapter shows it over all positions). On the right, the positional features'
# decoder directions (unit vectors) projected on the same three components, coloured by their peak position. A
# feature that detects position `p` should write back the part of the input that position adds: its decoder
# direction should point along the centred row `W_pos[p] - mean`.

# %% tags=["remove-input"]
first = 1 if context_size > 2 else 0
rows, dirs = helix_projection(model.W_pos, sae.W_dec[feats.to(sae.W_dec.device)], first, context_size)
_, _, pc_shares = wpos_frame_pca(model.W_pos, first, context_size)
display(helix_overlay_figure(rows, torch.arange(first, context_size), dirs, feats, peaks, pc_shares))
align = decoder_alignment(model.W_pos, sae.W_dec[feats.to(sae.W_dec.device)], peaks, context_size, first)
later = align[align.peak_position >= 1]
glue("pos_top3", float(pc_shares.sum()), display=False)
glue("pos_align_n", int(len(later)), display=False)
glue("pos_align_cos", float(later.cos_at_peak.mean()) if len(later) else float("nan"), display=False)
glue("pos_align_rank0", float((later.rank_of_peak == 0).mean()) if len(later) else float("nan"), display=False)
p0 = align[align.peak_position == 0]
bos = model.tokenizer.bos_token_id
bos_input = model.W_E[bos] + model.W_pos[0]  # the one input the SAE saw at position 0 in training
bos_cos = decoder_input_cosine(sae.W_dec[feats[peaks == 0].to(sae.W_dec.device)], bos_input, sae.b_dec)
glue("pos_bos_slot", bos_slot_sentence(torch.tensor(p0.cos_at_peak.to_numpy()), bos_cos.detach().cpu()), display=False)
align.assign(feature=feats.numpy()).groupby("peak_position").agg(
    features=("feature", "size"), mean_cos_at_peak=("cos_at_peak", "mean"),
    peak_is_closest_row=("rank_of_peak", lambda r: float((r == 0).mean())))

# %% [markdown]
# The top three components hold {glue:text}`pos_top3:.1%` of the variance of rows 1 to `context_size - 1`. For the
# {glue:text}`pos_align_n` positional features peaking at positions ≥ 1, the decoder direction has a mean cosine of
# {glue:text}`pos_align_cos:.3f` with the centred `W_pos` row at its peak, and for {glue:text}`pos_align_rank0:.0%` of
# them that row is the closest of all context positions. {glue:text}`pos_bos_slot`

# %% [markdown]
# ## Position vs token, for every feature
#
# Each feature's `R²_tok` against its `R²_pos` (both over the context; at most 5,000 features shown, all
# positional ones among them). The two cannot sum to more than 1; what is missing is the *interaction*: variance
# that neither position nor token explains on its own, because the ReLU cuts `a_i(t) + c_i(p)` at a threshold that
# depends on both. Cut-offs: *near 0* is `R² < 0.05`, *near 1* is `R² > 0.95`, among the features that fire.

# %% tags=["remove-input"]
LOW, HIGH = 0.05, 0.95
sample = scatter_sample(len(scores), 5000, keep=positional)
display(r2_scatter_figure(scores.iloc[sample.numpy()], positional[sample].numpy(), threshold, LOW, HIGH))
ext_pos = r2_extremes(stats_in.r2_pos, live, LOW, HIGH)
ext_tok = r2_extremes(stats_in.r2_tok, live, LOW, HIGH)
glue("pos_low", LOW, display=False)
glue("pos_high", HIGH, display=False)
glue("pos_pos_near0", ext_pos["near_0"], display=False)
glue("pos_pos_near1", ext_pos["near_1"], display=False)
glue("pos_tok_near0", ext_tok["near_0"], display=False)
glue("pos_tok_near1", ext_tok["near_1"], display=False)
glue("pos_interaction", float(scores.loc[live.numpy(), "interaction"].mean()), display=False)
glue("pos_interaction_positional", float(scores.loc[positional.numpy(), "interaction"].mean()) if len(feats)
     else float("nan"), display=False)
pd.DataFrame({"R²_pos": ext_pos, "R²_tok": ext_tok}).T.rename(
    columns={"near_0": f"share < {LOW}", "near_1": f"share > {HIGH}", "n_live": "features that fire"})

# %% [markdown]
# Position explains almost nothing of most features: {glue:text}`pos_pos_near0:.1%` of the firing features have
# `R²_pos <` {glue:text}`pos_low:.2f` and {glue:text}`pos_pos_near1:.1%` have `R²_pos >` {glue:text}`pos_high:.2f`.
# Token identity is the opposite: {glue:text}`pos_tok_near1:.1%` have `R²_tok >` {glue:text}`pos_high:.2f` and
# {glue:text}`pos_tok_near0:.1%` have `R²_tok <` {glue:text}`pos_low:.2f`. The interaction takes on average
# {glue:text}`pos_interaction:.1%` of a firing feature's variance, and {glue:text}`pos_interaction_positional:.1%` of a
# positional feature's: even the most positional features fire on only part of the vocabulary away from their peak,
# so which tokens carry them depends on both.

# %% [markdown]
# ## Positional neurons in the layer-0 MLP
#
# The SAE reads the residual stream *before* the MLP. Does the MLP itself have positional units? On held-out text
# ({glue:text}`pos_neuron_tokens` tokens from the evaluation pack's held-out documents, in windows of the model's full
# `n_ctx` = {glue:text}`pos_n_ctx` tokens), each neuron's activation at `blocks.0.mlp.hook_post` is split into its
# variance between positions and its total variance: the share `η² = SS_between / SS_total`, over positions 1 to
# `n_ctx - 1` (position 0 always holds BOS, so its activation is the same in every window). A neuron with no
# positional dependence gets, by chance alone, `E[η²] = (P - 1)/(N - 1)` = {glue:text}`pos_chance:.4f` with `P`
# positions and `N` samples. A neuron counts as positional when `η² ≥` {glue:text}`pos_threshold:.2f`.

# %% tags=["remove-input"]
windows = heldout_windows(model.tokenizer, n_ctx, n_heldout_tokens)
moments = mlp_position_moments(model, windows, layer=0, progress=False)
neuron_share = positional_share(moments, first=1)
n_samples = int(moments.n[1:].sum())
chance = chance_share(n_ctx - 1, n_samples)
top_neurons = neuron_share.argsort(descending=True)[: min(4, top_k)]
glue("pos_neuron_tokens", int(windows.numel()), display=False)
glue("pos_chance", chance, display=False)
glue("pos_d_mlp", int(neuron_share.numel()), display=False)
glue("pos_n_neurons", int((neuron_share >= threshold).sum()), display=False)
glue("pos_n_neurons_10x", int((neuron_share >= 10 * chance).sum()), display=False)
glue("pos_top_neuron_share", float(neuron_share.max()), display=False)
display(neuron_share_figure(neuron_share, threshold, chance))
display(neuron_profiles_figure(neuron_profile_frame(moments, top_neurons, first=1), context_size))
pd.DataFrame({"neuron": top_neurons.numpy(), "η²": neuron_share[top_neurons].numpy()}).set_index("neuron")

# %% [markdown]
# Of the {glue:text}`pos_d_mlp` neurons, {glue:text}`pos_n_neurons` have `η² ≥` {glue:text}`pos_threshold:.2f`, the
# largest being {glue:text}`pos_top_neuron_share:.3f`; {glue:text}`pos_n_neurons_10x` exceed ten times the chance
# level. The dashed line in the profiles marks the SAE's context, which the model itself does not have: it was
# trained on all {glue:text}`pos_n_ctx` positions. On real text a neuron's positional share is diluted by whatever
# the tokens do, just as a feature's `R²_pos` is; the profiles show what the most positional neurons do with
# position.

# %% [markdown]
# ## Positional features vs SAE width
#
# The same SAE recipe at several widths (same layer, same training context and data): for each SAE, the number of
# positional features (same criterion, over its context), the number of distinct positions they peak at, and
# their mean peak width (positions at or above half the maximum mean activation). If positional features split as
# the SAE widens, the count should grow with `d_sae` and the peak width should shrink.

# %% tags=["remove-input"]
sweep = None
if width_sweep_ids:
    sweep_saes = {}
    for sid in width_sweep_ids:
        s = sae if (sid == sae_id and width_sweep_release == sae_release) else load_sae(width_sweep_release, sid, device=device)
        require_layer0(s, f"The width sweep ({sid})")
        check_sae_fits(model, s)
        sweep_saes[sid] = s
    sweep = width_sweep_frame(model, sweep_saes, threshold, progress=False)
    fit = loglog_fit(sweep["d_sae"], sweep["positional"])
    slope = fit["slope"]
    glue("pos_sweep_slope", slope, display=False)
    glue("pos_sweep_fit_r2", fit["r2"], display=False)
    glue("pos_sweep_n", len(sweep), display=False)
    glue("pos_sweep_min", int(sweep["d_sae"].min()), display=False)
    glue("pos_sweep_max", int(sweep["d_sae"].max()), display=False)
    glue("pos_sweep_pos_min", int(sweep["positional"].iloc[0]), display=False)
    glue("pos_sweep_pos_max", int(sweep["positional"].iloc[-1]), display=False)
    glue("pos_sweep_width_min", float(sweep["mean_peak_width"].iloc[0]), display=False)
    glue("pos_sweep_width_max", float(sweep["mean_peak_width"].iloc[-1]), display=False)
    glue("pos_sweep_peaks_min", int(sweep["distinct_peaks"].iloc[0]), display=False)
    glue("pos_sweep_peaks_max", int(sweep["distinct_peaks"].iloc[-1]), display=False)
    peaks_slope = loglog_fit(sweep["d_sae"], sweep["distinct_peaks"])["slope"]
    verdict = ("too few widths with positional features to tell where the extra ones go" if not (slope > 0)
               else "the extra features mostly pile onto positions that already have one rather than tiling new ones"
               if not (peaks_slope >= 0.5 * slope) else "the extra features spread to new positions")
    glue("pos_sweep_verdict", verdict, display=False)
    display(width_sweep_figure(sweep, slope))
    display(sweep)
else:
    for key in ("slope", "fit_r2", "n", "min", "max", "pos_min", "pos_max", "width_min", "width_max", "peaks_min", "peaks_max"):
        glue(f"pos_sweep_{key}", float("nan"), display=False)
    glue("pos_sweep_verdict", "no sweep on this profile", display=False)
    print("No width sweep for this SAE (width_sweep_ids is empty): no family of SAEs that differ only in width "
          "is available for it, so this section is skipped.")

# %% [markdown]
# The counts across its {glue:text}`pos_sweep_n` widths fit a power law
# `positional ∝ d_sae^k` with `k =` {glue:text}`pos_sweep_slope:.2f` (R² of the log-log fit
# {glue:text}`pos_sweep_fit_r2:.3f`): from {glue:text}`pos_sweep_pos_min` positional features at `d_sae =`
# {glue:text}`pos_sweep_min` to {glue:text}`pos_sweep_pos_max` at {glue:text}`pos_sweep_max`. An exponent near 1 with a
# fit close to R² = 1 means the count scales predictably, in proportion to the width: the positional share of the
# dictionary stays about constant. The positions they serve go from {glue:text}`pos_sweep_peaks_min` to
# {glue:text}`pos_sweep_peaks_max` distinct peaks, and the mean peak width goes from
# {glue:text}`pos_sweep_width_min:.2f` to {glue:text}`pos_sweep_width_max:.2f` positions: {glue:text}`pos_sweep_verdict`.

# %% [markdown]
# ## Summary
#
# - Positional features are few: {glue:text}`pos_n_positional` of {glue:text}`pos_d_sae`
#   ({glue:text}`pos_share_positional:.2%`) have `R²_pos ≥` {glue:text}`pos_threshold:.2f` over the training context,
#   computed exactly over every token at every position.
# - They serve the first positions: {glue:text}`pos_range_p0_n` peak at the BOS slot, {glue:text}`pos_range_early_n`
#   at positions 1-7 and {glue:text}`pos_range_late_n` at positions 8 and later. Their mean peak width is
#   {glue:text}`pos_mean_width:.2f` positions, and the decoders of those past position 0 have a mean cosine of
#   {glue:text}`pos_align_cos:.3f` with their peak's centred `W_pos` row.
# - Across SAE widths (where a sweep exists) the number of positional features grows as `d_sae^k`,
#   `k =` {glue:text}`pos_sweep_slope:.2f`.
# - For most features position explains almost nothing ({glue:text}`pos_pos_near0:.1%` have `R²_pos <`
#   {glue:text}`pos_low:.2f`), while token identity explains more than {glue:text}`pos_high:.0%` of the variance of
#   {glue:text}`pos_tok_near1:.1%` of them.
# - The layer-0 MLP has {glue:text}`pos_n_neurons` neurons whose activation on real text is at least
#   {glue:text}`pos_threshold:.0%` explained by position.
#
# **What's next.** The [length-generalization](length_generalization) chapter follows these features past the SAE's
# training context, where `W_pos` brings rows the SAE never saw.
