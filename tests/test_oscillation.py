"""Tests of possae.oscillation: parameters, W_pos ablation hooks, streamed per-position statistics vs brute force,
the detrended spectrum and its red-noise null (with positive and negative controls) on curves whose answer is known,
per-feature statistics inside and past the training context, the chapter's result (no NaN, narrow tables) and the
figure builders."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from possae.book import chapter_parameters
from possae.glued import check_prose_values
from possae.oscillation import (
    DASH,
    DECILES,
    IN,
    PAST,
    OscillationParams,
    analyze,
    frequency_sentence,
    frequency_table,
    oscillation_amplitude,
    per_feature_quantiles,
    pos_embed_ablation,
    position_frame,
    position_pass,
    position_permutation,
    sae_info,
    spectral_peak,
    spliced_loss,
)
from possae.params import ParameterError

N_CTX, D, V, SHORT = 32, 16, 50, 8
CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "oscillation.py"


@pytest.fixture(scope="module")
def model():
    """A tiny random GPT-2-style model with learned absolute positions."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, n_ctx=N_CTX, d_head=4, d_vocab=V, act_fn="gelu",
                                  normalization_type="LN", seed=0)
    m = HookedTransformer(cfg)
    with torch.no_grad():
        m.W_pos.mul_(20)  # make position matter
    return m.eval()


def make_sae(kind, layer, F=64, seed=0, context=None):
    """Return a random in-memory SAE reading blocks.<layer>.hook_resid_pre (ReLU ones trained on SHORT positions)."""
    cls, cfg_cls, kw = {"relu": (StandardSAE, StandardSAEConfig, {}), "topk": (TopKSAE, TopKSAEConfig, {"k": 4})}[kind]
    cfg = cfg_cls(d_in=D, d_sae=F, **kw)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_pre"
    cfg.metadata.context_size = context or (SHORT if kind == "relu" else N_CTX)
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, F, generator=g) / math.sqrt(D))
        sae.W_dec.copy_(torch.randn(F, D, generator=g) / math.sqrt(F))
        sae.b_enc.copy_(torch.randn(F, generator=g) * 0.3 - 0.3)
    return sae


def tokens(n=6, seed=1):
    return torch.randint(0, V, (n, N_CTX), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- parameters


def test_params_match_the_chapter_parameters_cell():
    assert set(OscillationParams.names()) == chapter_parameters(CHAPTER)
    assert "sae_id" not in OscillationParams.names()  # read by no one: removed


def test_params_reject_unknown_ill_typed_and_meaningless_values():
    with pytest.raises(ParameterError, match="no parameter 'sae_id'"):
        OscillationParams.from_mapping({"sae_id": "relu-short"})
    with pytest.raises(ParameterError, match="n_heldout_tokens"):
        OscillationParams.from_mapping({"n_heldout_tokens": "many"})
    with pytest.raises(ParameterError, match="seed"):
        OscillationParams.from_mapping({"seed": 1.5})
    with pytest.raises(ParameterError, match="at least one SAE"):
        OscillationParams(relu_sae_ids=[], topk_sae_ids=[])
    with pytest.raises(ParameterError, match="twice"):
        OscillationParams(relu_sae_ids=["a"], topk_sae_ids=["a"])
    p = OscillationParams.from_mapping({"relu_sae_ids": [f"blocks.{layer}.hook_resid_pre" for layer in range(12)],
                                        "topk_sae_ids": []})
    assert len(p.sae_ids) == 12 and isinstance(p.relu_sae_ids, tuple)


# ---------------------------------------------------------------- hooks


@pytest.mark.parametrize("ablation", ["zero", "shuffle"])
def test_ablation_changes_pos_embed_only(model, ablation):
    toks = tokens(2)
    names = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    _, clean = model.run_with_cache(toks, names_filter=names)
    with model.hooks(fwd_hooks=[("hook_pos_embed", pos_embed_ablation(ablation, seed=3))]):
        _, abl = model.run_with_cache(toks, names_filter=names)
    torch.testing.assert_close(abl["hook_embed"], clean["hook_embed"], rtol=0, atol=0)
    expected = torch.zeros_like(clean["hook_pos_embed"]) if ablation == "zero" else \
        clean["hook_pos_embed"][:, position_permutation(N_CTX, 3)]
    torch.testing.assert_close(abl["hook_pos_embed"], expected, rtol=0, atol=0)
    assert not torch.allclose(abl["hook_pos_embed"], clean["hook_pos_embed"])
    torch.testing.assert_close(abl["blocks.0.hook_resid_pre"], abl["hook_embed"] + expected)


def test_permutation_is_fixed_and_a_permutation():
    p = position_permutation(100, 7)
    assert torch.equal(p, position_permutation(100, 7)) and not torch.equal(p, position_permutation(100, 8))
    assert torch.equal(p.sort().values, torch.arange(100)) and (p != torch.arange(100)).sum() > 90
    with pytest.raises(ValueError, match="Unknown ablation"):
        pos_embed_ablation("reverse")


def test_a_bounded_permutation_shuffles_within_each_context_only():
    p = position_permutation(100, 7, bounds=[30, 100, 0])
    assert torch.equal(p[:30].sort().values, torch.arange(30)) and torch.equal(p[30:].sort().values, torch.arange(30, 100))
    assert (p[:30] != torch.arange(30)).sum() > 20 and (p[30:] != torch.arange(30, 100)).sum() > 60
    assert torch.equal(position_permutation(100, 7, bounds=[100]), position_permutation(100, 7))  # no inner bound


def test_the_shuffle_pass_keeps_a_short_saes_positions_inside_its_context(model, monkeypatch):
    """With a ReLU SAE trained on SHORT positions, rows of positions >= SHORT never enter positions < SHORT."""
    import possae.oscillation as osc

    toks = tokens(2)
    _, clean = model.run_with_cache(toks, names_filter=["hook_pos_embed"])
    seen = {}
    original = osc.pos_embed_ablation

    def spy(ablation, seed=0, bounds=()):
        hook = original(ablation, seed, bounds)
        seen["bounds"] = sorted(bounds)

        def recorded(act, hook_point=None, **kw):
            seen["pos"] = hook(act, kw.get("hook", hook_point))
            return seen["pos"]

        return recorded

    monkeypatch.setattr(osc, "pos_embed_ablation", spy)
    osc.position_pass(model, toks, {"short": make_sae("relu", 0), "full": make_sae("topk", 0)}, "shuffle", seed=3,
                      batch_size=2)
    assert seen["bounds"] == [SHORT, N_CTX]
    rows, inside = clean["hook_pos_embed"][0], seen["pos"][0, :SHORT]
    source = (inside[:, None, :] == rows[None, :, :]).all(-1).float().argmax(1)  # which clean row each one is
    assert (source < SHORT).all() and not torch.equal(source, torch.arange(SHORT))


# ---------------------------------------------------------------- streamed pass vs brute force


def test_position_pass_matches_brute_force(model):
    toks = tokens(5)
    saes = {"r0": make_sae("relu", 0), "t1": make_sae("topk", 1, seed=2)}
    res = position_pass(model, toks, saes, "normal", feature_stats=True, batch_size=2)
    frame = position_frame({"normal": res}, sae_info(saes, N_CTX), {s: 64 for s in saes})
    logits, cache = model.run_with_cache(toks)
    for sid, sae in saes.items():
        x = cache[sae.cfg.metadata.hook_name]
        f = sae.encode(x).detach()
        got = frame[frame["sae_id"] == sid].sort_values("position")
        np.testing.assert_allclose(got["mean_act"], f.mean((0, 2)).numpy(), rtol=1e-5)
        nz = torch.where(f > 0, f, torch.nan)
        np.testing.assert_allclose(got["mean_nonzero"], nz.nanmean((0, 2)).numpy(), rtol=1e-5)
        np.testing.assert_allclose(got["l0"], (f > 0).sum(-1).double().mean(0).numpy(), rtol=1e-6)
        # nmse: MSE at each position over the total variance of the in-context inputs (positions 1..C-1)
        C = sae.cfg.metadata.context_size
        xi = x[:, 1:C].reshape(-1, D).double()
        var = (xi - xi.mean(0)).pow(2).sum(-1).mean()
        mse = (sae.decode(f) - x).pow(2).sum(-1).double().mean(0)
        np.testing.assert_allclose(got["nmse"], (mse / var).detach().numpy(), rtol=1e-4)
        assert got["layer"].iloc[0] == int(sae.cfg.metadata.hook_name.split(".")[1])
    assert set(frame["family"]) == {"ReLU", "TopK"}
    ce = model.loss_fn(logits, toks, per_token=True).mean(0)
    np.testing.assert_allclose(res.loss.mean("ce"), ce.detach().numpy(), rtol=1e-5)


def test_feature_stats_are_split_at_the_training_context(model):
    """Per-feature statistics of a short-context SAE are over positions 1..C-1, past-context ones kept apart."""
    toks = tokens(5)
    saes = {"r0": make_sae("relu", 0), "t0": make_sae("topk", 0)}
    res = position_pass(model, toks, saes, "normal", feature_stats=True, batch_size=2)
    assert set(res.features["r0"]) == {IN, PAST} and set(res.features["t0"]) == {IN}  # full context: nothing past
    f = saes["r0"].encode(model.run_with_cache(toks)[1]["blocks.0.hook_resid_pre"]).detach()
    for region, sl in ((IN, slice(1, SHORT)), (PAST, slice(SHORT, N_CTX))):
        ff = f[:, sl].flatten(0, 1)
        got = res.features["r0"][region].frame()
        np.testing.assert_allclose(got["mean"], ff.mean(0).numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["std"], ff.std(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["density"], (ff > 0).double().mean(0).numpy())
        j = int((ff > 0).sum(0).argmax())
        np.testing.assert_allclose(got.loc[j, "q50"], ff[ff[:, j] > 0, j].median().item(), rtol=1e-5)


def test_zero_ablation_flattens_layer0_curve(model):
    toks = torch.full((3, N_CTX), 7)  # every position sees the same token: only W_pos varies along positions
    saes = {"r0": make_sae("relu", 0, context=N_CTX)}
    passes = {a: position_pass(model, toks, saes, a) for a in ("normal", "zero")}
    frame = position_frame(passes, sae_info(saes, N_CTX), {"r0": 64})
    amp = oscillation_amplitude(frame).set_index("ablation")["amplitude"]
    assert amp["zero"] < 1e-6 < 1e-2 < amp["normal"]


def test_spliced_loss(model):
    toks = tokens(4)
    clean = spliced_loss(model, toks, None, batch_size=3).mean("ce")
    np.testing.assert_allclose(clean, position_pass(model, toks, {}).loss.mean("ce"), rtol=1e-6)
    spliced = spliced_loss(model, toks, make_sae("relu", 1), batch_size=3).mean("ce")
    assert len(spliced) == N_CTX - 1 and not np.allclose(spliced, clean)


def test_pass_splice_equals_spliced_loss(model):
    """The normal pass's splice (run on from the SAE's layer with the pass's own reconstruction) gives the losses a
    whole forward pass with the SAE hooked in gives, at layer 0 and later; an SAE reading a hook that is not
    resid_pre is left to spliced_loss."""
    toks = tokens(5)
    saes = {"r0": make_sae("relu", 0), "t1": make_sae("topk", 1, seed=2), "r1": make_sae("relu", 1, seed=3)}
    other = make_sae("relu", 1, seed=4)
    other.cfg.metadata.hook_name = "blocks.1.hook_mlp_out"
    res = position_pass(model, toks, {**saes, "mlp": other}, "normal", splice=True, batch_size=2)
    assert set(res.spliced) == set(saes)
    for sid, sae in saes.items():
        np.testing.assert_allclose(res.spliced[sid].mean("ce"), spliced_loss(model, toks, sae, batch_size=3).mean("ce"),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.spliced["r0"].mean("ce"), res.loss.mean("ce"))
    assert position_pass(model, toks, saes, "normal", batch_size=2).spliced == {}


# ---------------------------------------------------------------- spectrum and its null


def test_quadratic_trend_is_no_oscillation():
    t = np.arange(1, 64, dtype=float)
    peak = spectral_peak(0.01 * (t - 30) ** 2 + 0.3 * t)
    assert not peak["significant"] and not peak["oscillation"] and peak["p_value"] > 0.5


def test_smooth_trends_are_no_oscillation():
    """The old finding: a trend's lowest Fourier bin (period 63 over 1..63) was reported as a period."""
    t = np.arange(1, 64, dtype=float)
    for c in (np.exp(-t / 15), np.log(t), np.tanh((t - 30) / 5), 2 + 0.05 * t):
        assert not spectral_peak(c)["oscillation"]


def test_sine_of_period_16_with_noise_is_a_significant_oscillation():
    t = np.arange(1, 64, dtype=float)
    noise = np.random.default_rng(0).standard_normal(len(t))
    peak = spectral_peak(3 + np.sin(2 * np.pi * t / 16 + 0.4) + 0.3 * noise)
    assert peak["oscillation"] and peak["resolved"] and peak["significant"]
    assert abs(peak["period"] - 16) < 0.5 and peak["p_value"] <= 0.002 and peak["peak_over_null"] > 1


def test_white_noise_is_not_significant():
    noise = np.random.default_rng(1).standard_normal(127)
    peak = spectral_peak(noise)
    assert not peak["significant"] and not peak["oscillation"] and peak["p_value"] > 0.05


# Controls of the spectral test, on curves shaped like the chapter's: a cubic trend over 127 in-context positions plus
# AR(1) noise (smooth, as an average over tokens is), with or without a sine of period 16 positions.
CONTROL_T = np.arange(1, 128, dtype=float)
CONTROL_TREND = 2 + 3 * ((CONTROL_T - 64) / 64) ** 3 - 1.5 * ((CONTROL_T - 64) / 64)


def _control_curve(rng, amplitude, rho=0.5, scale=0.1):
    """Return the trend, plus a sine of period 16 with this amplitude (random phase), plus AR(1) noise."""
    from scipy.signal import lfilter

    e = rng.standard_normal(len(CONTROL_T))
    e[0] /= np.sqrt(1 - rho**2)
    sine = amplitude * np.sin(2 * np.pi * CONTROL_T / 16 + rng.uniform(0, 2 * np.pi))
    return CONTROL_TREND + sine + scale * lfilter([1.0], [1.0, -rho], e)


def _shuffled_raw_curve_call(c, n_null=200, seed=0):
    """The test the book used before: the null shuffles the raw curve's positions (so it loses the trend's order but
    keeps its variance), then detrends. Returns whether it calls an oscillation."""
    from possae.oscillation import NULL_QUANTILE, power_spectrum

    x = torch.tensor(c)
    perms = torch.argsort(torch.rand(n_null, len(x), generator=torch.Generator().manual_seed(seed)), dim=1)
    threshold = float(torch.quantile(power_spectrum(x[perms])[:, 1:].max(1).values, NULL_QUANTILE))
    return spectral_peak(c, n_null=n_null)["resolved"] and float(power_spectrum(x)[1:].max()) > threshold


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_negative_control_trend_and_smooth_noise_is_called_about_5_percent_of_the_time(rho):
    rng = np.random.default_rng(10)
    calls = [spectral_peak(_control_curve(rng, 0.0, rho), n_null=200, seed=i)["oscillation"] for i in range(300)]
    assert 0.01 <= np.mean(calls) <= 0.11  # nominal 5 %; 300 draws


def test_positive_control_a_sine_on_a_trend_is_found_and_the_old_raw_curve_null_misses_it():
    rng = np.random.default_rng(11)
    curves = [_control_curve(rng, 0.2) for _ in range(50)]
    found = [spectral_peak(c, n_null=200, seed=i) for i, c in enumerate(curves)]
    assert np.mean([p["oscillation"] for p in found]) >= 0.9
    assert all(abs(p["period"] - 16) < 1 for p in found if p["oscillation"])
    # the control fails the old test: shuffling the raw curve spreads the trend's variance over every frequency
    assert np.mean([_shuffled_raw_curve_call(c) for c in curves]) <= 0.2


# The issue's controls at GPT-2's length: 1,023 in-context positions, white noise and a sine at the levels measured on
# the GPT-2-geometry organism's layer-0 curve (relu-full, 4,096 held-out tokens per corpus: mean 0.014, residual noise
# 0.0005 with lag-1 autocorrelation 0.02, a swing of amplitude about 0.001), on a cubic trend that rises by 0.02 and
# bends back: the detrending removes any cubic exactly, and a large one defeats the methods this one replaced.
LONG_T = np.arange(1023) / 1023
LONG_TREND = 0.03 + 0.02 * (2 * LONG_T - 1) - 0.015 * (2 * LONG_T - 1) ** 3
LONG_NOISE, LONG_AMPLITUDE = 0.0005, 0.001
LONG_TRENDS = {"cubic": LONG_TREND, "log": 0.014 + 0.001 * np.log(LONG_T + 0.01),
               "decay": 0.014 + 0.003 * np.exp(-LONG_T / 0.05), "sqrt": 0.014 + 0.002 * np.sqrt(LONG_T),
               "step": 0.014 + 0.002 * np.tanh((LONG_T - 0.4) / 0.02)}


def _long_curve(rng, trend, cycles=0.0, amplitude=LONG_AMPLITUDE):
    """Return trend + a sine of `cycles` over the window (random phase) + white noise at the measured level."""
    sine = amplitude * np.sin(2 * np.pi * cycles * LONG_T + rng.uniform(0, 2 * np.pi)) if cycles else 0.0
    return trend + sine + LONG_NOISE * rng.standard_normal(len(LONG_T))


def _lowest_bin_cycles(c):
    """The first book's method: the peak of the raw (not detrended) spectrum, in cycles over the window."""
    return int(np.abs(np.fft.rfft(c - c.mean()))[1:].argmax()) + 1


@pytest.mark.parametrize("cycles", [2, 4])
def test_long_control_two_and_four_cycles_on_a_cubic_trend_are_found_with_their_cycles(cycles):
    rng = np.random.default_rng(20 + cycles)
    curves = [_long_curve(rng, LONG_TREND, cycles) for _ in range(40)]
    found = [spectral_peak(c, n_null=200, seed=i) for i, c in enumerate(curves)]
    assert np.mean([p["oscillation"] for p in found]) >= (0.8 if cycles == 2 else 0.95)
    assert all(abs(p["cycles"] - cycles) < 0.3 for p in found if p["oscillation"])
    # the methods this one replaced fail the same control: the raw spectrum's lowest bin is the trend's, and the null
    # that shuffles the raw curve spreads the trend's variance over every frequency
    assert np.mean([_lowest_bin_cycles(c) == cycles for c in curves]) <= 0.1
    assert np.mean([_shuffled_raw_curve_call(c) for c in curves]) <= 0.2


@pytest.mark.parametrize("trend", sorted(LONG_TRENDS))
def test_long_control_trends_with_noise_are_not_found(trend):
    rng = np.random.default_rng(30)
    calls = [spectral_peak(_long_curve(rng, LONG_TRENDS[trend]), n_null=200, seed=i)["oscillation"] for i in range(40)]
    assert np.mean(calls) <= 0.1  # nominal 5 %


def test_long_control_pure_noise_is_not_found():
    rng = np.random.default_rng(31)
    calls = [spectral_peak(LONG_NOISE * rng.standard_normal(1023), n_null=200, seed=i)["oscillation"] for i in range(40)]
    assert np.mean(calls) <= 0.1


def test_the_recorded_comparison_is_the_computed_one_and_stands_only_for_its_parameters_and_weights(tmp_path,
                                                                                                  monkeypatch):
    """The comparison organism's curves are tested by the same method, without floors; the command records what the
    chapter computes (both run here on 256 tokens per corpus); the record is read only for the parameters and weights
    it was computed on, and the shipped one holds for the chapter's defaults."""
    from possae import oscillation
    from possae.oscillation import COMPARISON_FILE, recorded_comparison, write_comparison

    from possae.oscillation import comparison_frequencies

    live = comparison_frequencies(OscillationParams(n_heldout_tokens=256, device="cpu"))  # no record at 256: computed
    assert list(live["sae_id"]) == ["relu-short", "relu-L1", "relu-L2", "relu-L3", "topk-L0", "topk-L1", "topk-L2",
                                    "topk-L3"]
    assert (live["model"] == "organism").all() and (live["n_ctx"] == 256).all() and live["floor"].isna().all()
    assert (live["wpos_turns"] < 1).all()  # the first organism's W_pos is an arc
    assert comparison_frequencies(OscillationParams(model_name="organism", sae_release="organism",
                                                    relu_sae_ids=["relu-short"])).empty  # itself: nothing beside it
    with pytest.raises(ParameterError, match="comparison_model 'gpt2'"):
        comparison_frequencies(OscillationParams(comparison_model="gpt2"))
    path = write_comparison("organism", n_heldout_tokens=256, folder=tmp_path)
    pd.testing.assert_frame_equal(recorded_comparison("organism", 256, 0, folder=tmp_path), live, check_dtype=False)
    assert recorded_comparison("organism", 256, 1, folder=tmp_path) is None  # another seed
    assert recorded_comparison("organism", 512, 0, folder=tmp_path) is None  # another sample
    monkeypatch.setattr(oscillation, "comparison_fingerprint", lambda name: "retrained")
    assert recorded_comparison("organism", 256, 0, folder=tmp_path) is None  # other weights
    monkeypatch.undo()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="possae organism oscillation-comparison"):
        recorded_comparison("organism", 256, 0, folder=tmp_path)
    defaults = OscillationParams()
    assert recorded_comparison(defaults.comparison_model, defaults.n_heldout_tokens, defaults.seed) is not None, (
        f"the shipped {COMPARISON_FILE} is stale: run `possae organism oscillation-comparison`")


def test_the_detection_floor_is_the_smallest_swing_found_at_every_phase():
    from possae.oscillation import FLOOR_RANGE, detection_floor

    rng = np.random.default_rng(40)
    flat = 1.0 + 0.05 * rng.standard_normal(1023)
    floor = detection_floor(flat, 8.0)
    assert FLOOR_RANGE[0] < floor <= 0.05  # a sine of 8 cycles over white noise of 5 % is found from a few %
    assert detection_floor(1.0 + 0.001 * rng.standard_normal(1023), 8.0) == pytest.approx(FLOOR_RANGE[0])  # the bottom
    t = np.arange(1023) / 1023
    for phase in (0.0, 0.25, 0.5, 0.75):  # at the floor the test finds it at every phase ...
        p = spectral_peak(flat + floor * np.sin(2 * np.pi * (8 * t + phase)), n_null=200)
        assert p["oscillation"] and abs(p["cycles"] - 8) < 0.3
    assert not all(spectral_peak(flat + floor / 1.5 * np.sin(2 * np.pi * (8 * t + ph)), n_null=200)["oscillation"]
                   for ph in (0.0, 0.25, 0.5, 0.75))  # ... and not at two thirds of it at all of them
    assert np.isnan(detection_floor(flat[:63], 1.0))  # under MIN_CYCLES: the window cannot resolve it


def test_a_sinusoid_must_beat_a_trend_with_as_many_parameters():
    """A sharp step or a log-like rise leaves about two cycles after the cubic; a sinusoid of two cycles does not fit
    them better than the next polynomial terms or a logistic step, so they are trend; a real sine is not."""
    from possae.oscillation import trend_rss, sinusoid_fit

    step = LONG_TRENDS["step"]
    assert trend_rss(step) < 0.05 * sinusoid_fit(step, 2.0)[1]  # a logistic step of the searched grid fits it closely
    sine = LONG_TREND + LONG_AMPLITUDE * np.sin(2 * np.pi * 2 * LONG_T)
    cycles, rss = sinusoid_fit(sine, 2.3)
    assert abs(cycles - 2) < 0.01 and rss < 1e-12 and trend_rss(sine) > 1e-8


def test_the_red_noise_null_keeps_the_trend():
    """Adding any cubic to a curve changes neither its detrended spectrum nor the null: the trend is kept, not
    scrambled into noise."""
    from possae.oscillation import null_max_power

    c = _control_curve(np.random.default_rng(12), 0.1)
    assert torch.allclose(null_max_power(c, 100), null_max_power(c + 50 * (CONTROL_T / 127) ** 3 - 7 * CONTROL_T, 100))


def test_null_is_seeded():
    c = np.sin(np.arange(63) / 3) + np.random.default_rng(2).standard_normal(63)
    assert spectral_peak(c, seed=4) == spectral_peak(c, seed=4)


def _curves(layers_mult, n_ctx=128, context=128, noise=0.2):
    """Return a positions frame of ReLU curves (normal condition), a cosine of 5 * mult cycles per n_ctx per layer."""
    t, rng, rows = np.arange(n_ctx), np.random.default_rng(0), []
    for layer, mult in layers_mult:
        rows.append(pd.DataFrame({"ablation": "normal", "family": "ReLU", "sae_id": f"r{layer}", "layer": layer,
                                  "context_size": context, "position": t,
                                  "mean_act": 1 + np.cos(2 * np.pi * 5 * mult * t / n_ctx)
                                  + noise * rng.standard_normal(n_ctx)}))
    frame = pd.concat(rows, ignore_index=True)
    return frame, frame.drop_duplicates("sae_id")[["sae_id", "family", "layer", "context_size"]]


def test_frequency_table_finds_doubling_in_the_layers_given():
    frame, info = _curves([(2, 1), (5, 2), (9, 3)])  # layers come from the SAEs, not a hard-coded 1..3
    table = frequency_table(frame, info, n_null=200)
    assert table["oscillation"].all()
    np.testing.assert_allclose(table["ratio_to_base"], [1, 2, 3], atol=0.05)
    np.testing.assert_allclose(table["period"], [25.6, 12.8, 128 / 15], rtol=0.03)
    text = frequency_sentence(table, "ReLU")
    assert "layer-2 ReLU SAE's curve oscillates with a period of 25." in text
    assert "Layers 5, 9 oscillate at 2.0" in text and "to 2.9" in text


def test_a_trend_in_the_lowest_bin_is_not_reported_as_a_period():
    pos = np.arange(0, 64, dtype=float)
    frame = pd.DataFrame({"ablation": "normal", "family": "ReLU", "sae_id": "s0", "layer": 0, "position": pos,
                          "context_size": 64, "mean_act": 0.01 * (pos - 30) ** 2 + 0.02 * pos})
    info = frame.drop_duplicates("sae_id")[["sae_id", "family", "layer", "context_size"]]
    table = frequency_table(frame, info, n_null=200)
    assert not table.loc[0, "oscillation"] and np.isnan(table.loc[0, "ratio_to_base"])
    text = frequency_sentence(table, "ReLU")
    assert "shows no oscillation" in text and "cannot be tested" in text and "period of 63" not in text


def _freq_rows(rows):
    return pd.DataFrame([{"family": "ReLU", "sae_id": f"s{l}", "layer": l, "first": 1, "last": 63, "window": 63,
                          "cycles": c, "period": 63 / c, "resolved": c >= 2, "significant": s, "sine_over_trend": 2.0,
                          "oscillation": c >= 2 and s,
                          "peak_over_null": 3.0 if s else 0.5, "p_value": 0.001 if s else 0.4, "base_layer": 0,
                          "ratio_to_base": r} for l, c, s, r in rows])


def test_frequency_sentence_reports_only_what_the_test_supports():
    text = frequency_sentence(_freq_rows([(0, 4.0, True, 1.0), (1, 8.0, True, 2.0), (2, 7.6, True, 1.9),
                                          (3, 1.0, False, np.nan)]), "ReLU")
    assert "a period of 15.8 positions" in text and "Layers 1, 2 oscillate at 1.90 to 2.00 times" in text
    assert text.endswith("Layer 3 shows no oscillation.")
    text = frequency_sentence(_freq_rows([(0, 1.0, True, np.nan), (1, 3.0, True, np.nan)]), "ReLU")
    assert "shows no oscillation" in text and "layer 1 (period 21.0 positions)" in text and "cannot be tested" in text
    flat = _freq_rows([(0, 1.0, False, np.nan), (1, 6.0, False, np.nan), (2, 3.8, False, np.nan)])
    text = frequency_sentence(flat.assign(tested_cycles=4.0, floor=[0.3, 0.04, 0.05]), "ReLU")
    assert "Nor is GPT-2 small's doubling there" in text and "from 5% of the curve's mean" in text
    text = frequency_sentence(flat.assign(tested_cycles=0.5, floor=np.nan), "ReLU")  # windows too short: untestable
    assert "cannot be tested" in text and "Nor is" not in text
    text = frequency_sentence(_freq_rows([(0, 5.0, False, np.nan)]), "ReLU")
    assert "not" in text.lower() and "p = 0.40" in text and "cannot be tested" in text


# ---------------------------------------------------------------- quantiles


@pytest.mark.parametrize("dtype, low", [(torch.float32, 0.0), (torch.float32, -1.0), (torch.float64, -1.0)])
def test_per_feature_quantiles_match_torch(dtype, low):
    """float32 values sort once on (feature, value bits), of either sign; others sort twice: both match torch."""
    g = torch.Generator().manual_seed(0)
    F = 7
    feats = torch.randint(0, F - 1, (500,), generator=g)  # the last feature never fires
    vals = ((torch.rand(500, generator=g, dtype=torch.float64) + low) * (feats + 1)).to(dtype)
    vals[:3] = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    q = per_feature_quantiles(vals, feats, F)
    assert q.shape == (F, len(DECILES)) and torch.isnan(q[-1]).all()
    for j in range(F - 1):
        torch.testing.assert_close(q[j], torch.quantile(vals[feats == j].double(), torch.tensor(DECILES, dtype=torch.float64)))


# ---------------------------------------------------------------- the chapter's result


@pytest.fixture(scope="module")
def result(model):
    saes = {"r0": make_sae("relu", 0), "r1": make_sae("relu", 1, seed=3), "t0": make_sae("topk", 0, seed=2)}
    params = OscillationParams(relu_sae_ids=["r0", "r1"], topk_sae_ids=["t0"], seed=0, comparison_model=None)
    return analyze(model, saes, params, tokens=tokens(6), n_null=100), saes


def test_result_tables_have_no_nan_and_are_narrow(result):
    res, _ = result
    check_prose_values(res.glued())
    assert all(k.startswith("osc_") for k in res.glued())
    texts = [v for v in res.glued().values() if isinstance(v, str)]
    assert not any("`" in t or "](" in t for t in texts)  # glued text is not parsed as markdown
    for name, table in res.tables.items():
        assert table.shape[1] <= 7, name
        assert not table.isna().any().any(), name
        assert not table.astype(str).apply(lambda c: c.str.lower().str.contains("nan")).any().any(), name
    splice = res.tables["splice"].set_index("SAE")
    assert splice.loc["t0", "ΔCE past context (nats)"] == DASH and splice.loc["r0", "ΔCE past context (nats)"] != DASH
    assert res.tables["activation"].set_index("SAE").loc["t0", "past context (C..)"] == DASH


def test_result_numbers_match_brute_force(result, model):
    res, saes = result
    toks = tokens(6)
    logits = model(toks).detach()
    v = res.glued()
    ce = float(model.loss_fn(logits, toks, per_token=True)[:, 1:].mean())
    assert v["osc_ce_normal"] == pytest.approx(ce, rel=1e-5)
    assert v["osc_ref0"] == "r0" and v["osc_ref_layer"] == 0 and v["osc_n_saes"] == 3
    f = saes["r0"].encode(model.run_with_cache(toks)[1]["blocks.0.hook_resid_pre"]).detach()
    np.testing.assert_allclose(res.features["r0"]["density"], (f[:, 1:SHORT] > 0).double().mean((0, 1)).numpy())
    act = f.mean(-1).mean(0)
    assert v["osc_pos0_ratio"] == pytest.approx(float(act[0] / act[1:SHORT].mean()), rel=1e-5)
    assert f"{float(act[SHORT:].mean() / act[1:SHORT].mean()):.1f} times" in v["osc_past_sentence"]
    assert "r0" in v["osc_density_sentence"] and "past" in v["osc_splice_sentence"]


def test_result_without_short_context_saes_says_so(model):
    saes = {"t0": make_sae("topk", 0, seed=2), "t1": make_sae("topk", 1, seed=4)}
    params = OscillationParams(relu_sae_ids=[], topk_sae_ids=["t0", "t1"], comparison_model=None)
    res = analyze(model, saes, params, tokens=tokens(3), n_null=50)
    v = res.glued()
    check_prose_values(v)
    assert "full context" in v["osc_past_sentence"] and "full context" in v["osc_density_sentence"]
    assert "no past-context part" in v["osc_splice_sentence"] and v["osc_ref_family"] == "TopK"


def test_figures_build(result):
    from possae.figures.oscillation import (
        amplitude_figure,
        decile_figure,
        feature_scatter_figure,
        loss_by_position_figure,
        position_curves_figure,
        spectrum_figure,
    )

    res, _ = result
    fig = position_curves_figure(res.positions, first=1)
    assert len(fig.data) == 3 * 3 and len(fig.layout.shapes) == 2  # two ReLU panels get a training-context line
    assert len(spectrum_figure(res.spectra).data) == 3
    assert len(amplitude_figure(res.amplitude).data) == 3
    assert len(loss_by_position_figure(res.loss).data) == 3
    assert len(loss_by_position_figure(res.spliced, color="model").data) == 4
    assert len(feature_scatter_figure(res.features, res.layers).data) == 3
    assert len(decile_figure(res.features, res.layers).data) == 3


def test_feature_sums_keep_whole_tokens_up_to_the_value_budget():
    """Deciles keep the nonzero values of whole tokens, in order, until the value budget would be passed; sums see all."""
    from possae.oscillation import FeatureSums

    f = torch.zeros(10, 6)
    f[:, :3] = torch.arange(1, 11, dtype=torch.float32)[:, None]  # 3 nonzero values a token
    acc = FeatureSums(6).add(f[:4], max_kept=100, max_values=10).add(f[4:], max_kept=100, max_values=10)
    assert acc.kept == 3 and acc.n == 10 and float(acc.total[0]) == 55.0  # 3 tokens (9 values) fit, the 4th does not
    assert torch.equal(torch.cat(acc.vals), f[:3, :3].flatten())
    roomy = FeatureSums(6).add(f, max_kept=5)
    assert roomy.kept == 5 and len(torch.cat(roomy.vals)) == 15


def test_feature_scatter_draws_every_live_feature_up_to_the_cap_then_a_fixed_sample():
    from possae.figures.oscillation import feature_scatter_figure

    df = pd.DataFrame({"feature": np.arange(100), "mean": np.linspace(0.1, 1, 100), "std": 0.5,
                       "density": np.r_[np.zeros(10), np.full(90, 0.1)]})
    full = feature_scatter_figure({"a": df}, {"a": 0})
    assert len(full.data[0].x) == 90 and "live features per SAE" not in full.layout.title.text
    capped = feature_scatter_figure({"a": df}, {"a": 0}, max_points=30)
    again = feature_scatter_figure({"a": df}, {"a": 0}, max_points=30)
    assert len(capped.data[0].x) == 30 and list(capped.data[0].x) == list(again.data[0].x)
    assert "30 live features per SAE" in capped.layout.title.text


def test_pattern_kept_is_the_correlation_with_the_normal_curve():
    """Controls: an unchanged curve keeps all of the pattern, whatever its level or scale; a flat one none; an
    unrelated one about none; the same values in shuffled order (what std / mean cannot see) little. pattern_values
    counts only SAEs whose normal curve varies."""
    import numpy as np
    import pandas as pd

    from possae.oscillation import oscillation_amplitude, pattern_kept, pattern_values

    pos = np.arange(1, 64)
    normal = pd.Series(np.sin(pos / 5.0) + pos / 40.0, index=pos)
    assert pattern_kept(normal + 7.0, normal) == pytest.approx(1.0)
    assert pattern_kept(0.3 * normal - 1.0, normal) == pytest.approx(1.0)
    assert pattern_kept(pd.Series(2.0, index=pos), normal) == 0.0
    noise = pd.Series(np.random.default_rng(0).normal(size=len(pos)), index=pos)
    assert abs(pattern_kept(noise, normal)) < 0.5
    shuffled = pd.Series(normal.to_numpy()[np.random.default_rng(1).permutation(len(pos))], index=pos)
    assert shuffled.std() == pytest.approx(normal.std()) and abs(pattern_kept(shuffled, normal)) < 0.5
    rows = []
    for sid, base in (("a", normal + 10.0), ("flat", pd.Series(10.0, index=pos))):
        for ablation, curve in (("normal", base), ("zero", noise + 9.0), ("shuffle", shuffled + 10.0)):
            rows.append(pd.DataFrame({"ablation": ablation, "sae_id": sid, "family": "ReLU", "layer": 0,
                                      "context_size": 64, "position": pos, "mean_act": curve.to_numpy()}))
    amp = oscillation_amplitude(pd.concat(rows, ignore_index=True))
    kept = amp.set_index(["ablation", "sae_id"])["pattern_kept"]
    assert kept[("zero", "a")] == pytest.approx(pattern_kept(noise, normal)) and kept[("normal", "a")] == pytest.approx(1.0)
    v = pattern_values(amp)
    assert v["osc_n_patterned"] == 1 and v["osc_kept_zero_values"] == [pytest.approx(kept[("zero", "a")])]
