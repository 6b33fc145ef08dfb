"""Tests of possae.positional: known answers on constructed SAEs and activations, exact vs brute force, errors."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from builders import make_sae as make_random_sae
from builders import make_weights
from possae import positional as P
from possae.hooks import LAYER0_INPUT as LAYER0_HOOK
from possae.layer0_stats import Layer0Stats, layer0_stats
from possae.metrics import PositionSums


def f64(x):
    return torch.as_tensor(x, dtype=torch.float64)


def make_sae(W_enc, b_enc, W_dec=None, b_dec=None, context_size=None):
    """Return a float64 layer-0 StandardSAE with the given weights."""
    W_enc = f64(W_enc)
    d, F = W_enc.shape
    cfg = StandardSAEConfig(d_in=d, d_sae=F, dtype="float64")
    cfg.metadata.hook_name = LAYER0_HOOK
    cfg.metadata.context_size = context_size
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(f64(b_enc))
        sae.W_dec.copy_(W_enc.T.clone() if W_dec is None else f64(W_dec))
        sae.b_dec.copy_(torch.zeros(d, dtype=torch.float64) if b_dec is None else f64(b_dec))
    return sae


def circle_model(V=30, n=8, seed=0):
    """Return (W_E, W_pos): tokens in dims 0-1, positions on the unit circle in dims 2-3 (45 degrees apart)."""
    g = torch.Generator().manual_seed(seed)
    W_E = torch.zeros(V, 4, dtype=torch.float64)
    W_E[:, :2] = torch.randn(V, 2, generator=g, dtype=torch.float64)
    theta = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    W_pos = torch.zeros(n, 4, dtype=torch.float64)
    W_pos[:, 2], W_pos[:, 3] = theta.cos(), theta.sin()
    return W_E, W_pos


def detector_sae(W_pos, peaks, n_token=1, n_dead=1):
    """Return an SAE with one pure detector per peak (fires only there), n_token token features and n_dead dead ones."""
    cols, bias = [], []
    for p in peaks:
        cols.append(torch.cat([torch.zeros(2, dtype=torch.float64), W_pos[p, 2:]]))
        bias.append(-0.9)  # cos(45 deg) = 0.71 < 0.9: fires (0.1) at its peak only, on every token
    for j in range(n_token):
        cols.append(f64([1.0, 0.0, 0.0, 0.0]) if j % 2 == 0 else f64([0.0, 1.0, 0.0, 0.0]))
        bias.append(0.0)
    for _ in range(n_dead):
        cols.append(f64([0.0, 0.0, 1.0, 0.0]))
        bias.append(-5.0)
    return make_sae(torch.stack(cols, 1), bias)


def brute_acts(W_E, W_pos, sae):
    """Return sae.encode(W_E[t] + W_pos[p]) as a (V, n, F) tensor."""
    x = W_E[:, None, :] + W_pos[None, :, :]
    return sae.encode(x.reshape(-1, x.shape[-1])).reshape(W_E.shape[0], W_pos.shape[0], -1).detach()


def hand_stats(mean, firing=None):
    """Return a Layer0Stats holding a hand-made (n_pos, d_sae) mean matrix (std 0, firing where mean > 0)."""
    mean = f64(mean)
    n, F = mean.shape
    fr = (mean > 0).double() if firing is None else f64(firing)
    z = torch.zeros(F, dtype=torch.float64)
    return Layer0Stats(positions=torch.arange(n), mean=mean, std=torch.zeros_like(mean), firing_rate=fr,
                       mean_preact=mean.clone(), positional_score=mean.amax(0), argmax_position=mean.argmax(0),
                       r2_pos=z.clone(), r2_tok=z.clone(), feature_mean=mean.mean(0), feature_var=z.clone(), path="hand")


# ----------------------------------------------------------------------------------------------
# Constructed SAEs with known answers
# ----------------------------------------------------------------------------------------------


def test_pure_position_detector_scores_one_and_token_feature_zero():
    W_E, W_pos = circle_model()
    sae = detector_sae(W_pos, peaks=[2, 5], n_token=2, n_dead=1)
    stats = layer0_stats(W_E, W_pos, sae, progress=False)
    scores = P.feature_scores(stats)
    # detectors: all variance is positional, they peak where built, one position wide, firing on every token there
    for f, p in ((0, 2), (1, 5)):
        assert scores.loc[f, "r2_pos"] == pytest.approx(1.0, abs=1e-12)
        assert scores.loc[f, "r2_tok"] == pytest.approx(0.0, abs=1e-12)
        assert scores.loc[f, "peak_position"] == p
        assert scores.loc[f, "peak_width"] == 1
        assert scores.loc[f, "max_mean"] == pytest.approx(0.1, abs=1e-12)
        assert scores.loc[f, "max_firing_rate"] == pytest.approx(1.0)
        assert scores.loc[f, "firing_rate"] == pytest.approx(1 / 8)
    # token features: no positional variance at all
    for f in (2, 3):
        assert scores.loc[f, "r2_pos"] == pytest.approx(0.0, abs=1e-12)
        assert scores.loc[f, "r2_tok"] == pytest.approx(1.0, abs=1e-12)
    assert scores.loc[4, "r2_pos"] == 0 and scores.loc[4, "peak_width"] == 0 and scores.loc[4, "max_firing_rate"] == 0
    assert P.fires_inside(stats).tolist() == [True, True, True, True, False]
    assert P.positional_features(stats, threshold=0.5).tolist() == [True, True, False, False, False]
    # threshold 0 is "fires at all": the dead feature is still excluded
    assert P.positional_features(stats, threshold=0.0).tolist() == [True, True, True, True, False]
    # restricted to positions < 5, the detector at 5 never fires and stops counting
    assert P.positional_features(stats, context_size=5, threshold=0.5).tolist() == [True, False, False, False, False]
    counts = P.threshold_counts(stats.r2_pos, P.fires_inside(stats), (0.0, 0.5, 1.0))
    assert counts["features"].tolist() == [4, 2, 0]
    assert counts.loc[0.5, "share of live features"] == pytest.approx(0.5)


def test_scores_inside_context_equal_stats_computed_on_positions_1_to_c_minus_1():
    W_E, W_pos = make_weights(V=60, n=12, seed=3)
    sae = make_random_sae(seed=3)
    full = layer0_stats(W_E, W_pos, sae, progress=False)
    inside = layer0_stats(W_E, W_pos, sae, positions=range(1, 7), progress=False)  # inside a context of 7: 1..6
    torch.testing.assert_close(P.r2_pos_inside(full, 7), inside.r2_pos, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(P.peak_positions(full, 7), P.peak_positions(inside))
    torch.testing.assert_close(P.peak_width(full, 7), P.peak_width(inside))
    torch.testing.assert_close(P.fires_inside(full, 7), P.fires_inside(inside))
    a = P.feature_scores(full, 7)
    b = P.feature_scores(inside)
    pd.testing.assert_series_equal(a["r2_pos"], b["r2_pos"], rtol=1e-9)
    pd.testing.assert_series_equal(a["peak_position"], b["peak_position"])


def test_feature_scores_match_brute_force():
    W_E, W_pos = make_weights(V=50, n=9, seed=1)
    sae = make_random_sae(seed=1)
    acts = brute_acts(W_E, W_pos, sae)  # (V, n, F)
    scores = P.feature_scores(layer0_stats(W_E, W_pos, sae, progress=False))
    mean_p = acts.mean(0)  # (n, F)
    var = acts.var(dim=(0, 1), unbiased=False)
    r2_pos = mean_p.var(0, unbiased=False) / var
    r2_tok = acts.mean(1).var(0, unbiased=False) / var
    live = var > 0
    np.testing.assert_allclose(scores["r2_pos"].to_numpy()[live], r2_pos[live].numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scores["r2_tok"].to_numpy()[live], r2_tok[live].numpy(), rtol=1e-9, atol=1e-12)
    assert (scores["peak_position"].to_numpy() == mean_p.argmax(0).numpy()).all()
    width = ((mean_p >= 0.5 * mean_p.amax(0)) & (mean_p.amax(0) > 0)).sum(0)
    assert (scores["peak_width"].to_numpy() == width.numpy()).all()
    np.testing.assert_allclose(scores["interaction"].to_numpy()[live],
                               (1 - r2_pos - r2_tok).clamp(min=0)[live].numpy(), atol=1e-9)


def test_peak_width_and_positions_on_hand_made_means():
    mean = [[0.0, 1.0, 0.0, 0.0],
            [2.0, 0.4, 0.0, 0.5],
            [1.0, 0.6, 0.0, 0.5],
            [0.9, 0.1, 0.0, 0.2]]
    stats = hand_stats(mean)
    assert P.peak_positions(stats).tolist() == [1, 0, 0, 1]
    assert P.peak_width(stats).tolist() == [2, 2, 0, 2]  # >= half of 2.0: 2.0, 1.0; of 1.0: 1.0, 0.6; of 0.5: both
    assert P.peak_width(stats, level=1.0).tolist() == [1, 1, 0, 2]
    assert P.peak_width(stats, context_size=2).tolist() == [1, 1, 0, 1]
    assert P.fires_inside(stats).tolist() == [True, True, False, True]
    row = P.sweep_row(hand_stats([[1.0, 0.0], [0.0, 1.0]]), threshold=0.0)
    assert set(row) == {"d_sae", "positional", "share", "distinct_peaks", "mean_peak_width"}
    assert row["positional"] == 2 and row["distinct_peaks"] == 2 and row["mean_peak_width"] == 1.0


def test_preact_profile_is_the_position_part_and_the_firing_floor():
    W_E, W_pos = make_weights(V=30, n=10, seed=2)
    sae = make_random_sae(seed=2)
    feats = torch.tensor([4, 0, 11])
    df = P.preact_profile_frame(W_E, W_pos, sae, feats, device="cpu")
    c = (W_pos - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach()
    a = W_E @ sae.W_enc.detach()
    for f in feats.tolist():
        d = df[df.feature == f]
        np.testing.assert_allclose(d["preact_pos"].to_numpy(), c[:, f].numpy(), rtol=1e-12, atol=1e-12)
        assert d["fire_some"].iloc[0] == pytest.approx(-float(a[:, f].max()))
        assert d["fire_all"].iloc[0] == pytest.approx(-float(a[:, f].min()))
        # brute force: some token fires at p exactly where c(p) > fire_some
        fires = (brute_acts(W_E, W_pos, sae)[:, :, f] > 0).any(0)
        assert fires.tolist() == (d["preact_pos"] > d["fire_some"]).tolist()


# ----------------------------------------------------------------------------------------------
# Peak histograms and ranges
# ----------------------------------------------------------------------------------------------


def test_peak_histogram_counts():
    assert P.peak_histogram(torch.tensor([0, 0, 1, 3]), 5).tolist() == [2, 1, 0, 1, 0]
    assert P.peak_histogram(torch.tensor([], dtype=torch.long), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="peaks must lie"):
        P.peak_histogram(torch.tensor([5]), 5)


def test_peak_range_labels_come_from_the_edges_and_the_context():
    # finding: "positions 1-7" was typed in the prose next to edges=(1, 8); the labels now come from the edges
    df = P.peak_range_frame(torch.tensor([1, 3, 3, 9, 11]), range(1, 12), edges=(8,))
    assert df["positions"].tolist() == ["1-7", "8-11"]
    assert df["n_positions"].tolist() == [7, 4]
    assert df["features"].tolist() == [3, 2]
    assert df["features_per_position"].tolist() == pytest.approx([3 / 7, 0.5])
    assert df["positions_with_a_feature"].tolist() == [2, 2]
    other = P.peak_range_frame(torch.tensor([2]), range(1, 10), edges=(4,))
    assert other["positions"].tolist() == ["1-3", "4-9"]
    text = P.range_sentence(other)
    assert "positions 1-3" in text and "positions 4-9" in text and "1-7" not in text
    # edges at or past the context are dropped: one group
    short = P.peak_range_frame(torch.tensor([2]), range(1, 5), edges=(8,))
    assert short["positions"].tolist() == ["1-4"] and short["features"].tolist() == [1]
    assert P.range_sentence(short) == ("Of the positional features, 1 peak at positions 1-4 (0.25 per position, covering 1 "
                                       "of those 4 positions).")
    assert P.range_table(df).shape[1] <= 7


def test_detector_peaks_fill_the_histogram():
    W_E, W_pos = circle_model()
    stats = layer0_stats(W_E, W_pos, detector_sae(W_pos, peaks=[1, 1, 6], n_token=1, n_dead=0), progress=False)
    mask = P.positional_features(stats)
    hist = P.peak_histogram(P.peak_positions(stats)[mask], 8)
    assert hist.tolist() == [0, 2, 0, 0, 0, 0, 1, 0]


# ----------------------------------------------------------------------------------------------
# Decoder directions and the W_pos helix
# ----------------------------------------------------------------------------------------------


def test_decoder_alignment_finds_the_written_row():
    g = torch.Generator().manual_seed(0)
    W_pos = torch.randn(10, 16, generator=g, dtype=torch.float64)
    mu = W_pos[1:8].mean(0)
    peaks = torch.tensor([2, 5, 7])
    W_dec = 3.0 * (W_pos[peaks] - mu)  # norm does not matter
    df = P.decoder_alignment(W_pos, W_dec, peaks, last=8, first=1)
    assert df["cos_at_peak"].to_numpy() == pytest.approx(1.0)
    assert df["best_position"].tolist() == [2, 5, 7]
    assert df["rank_of_peak"].tolist() == [0, 0, 0]
    flipped = P.decoder_alignment(W_pos, -W_dec, peaks, last=8, first=1)
    assert flipped["cos_at_peak"].to_numpy() == pytest.approx(-1.0)
    assert (flipped["rank_of_peak"] > 0).all()


def test_helix_projection_keeps_a_three_dimensional_curve():
    n = 20
    theta = torch.linspace(0, 3, n, dtype=torch.float64)
    curve = torch.stack([theta.cos(), theta.sin(), 0.3 * theta], 1)
    Q, _ = torch.linalg.qr(torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    W_pos = curve @ Q.T + 0.7  # a helix inside a random 3-D subspace of R^12, offset
    rows, dirs = P.helix_projection(W_pos, Q.T, first=1, last=n)
    centred = W_pos[1:] - W_pos[1:].mean(0)
    torch.testing.assert_close(rows.norm(dim=1), centred.norm(dim=1))  # nothing lost outside the top 3 PCs
    torch.testing.assert_close(torch.cdist(rows, rows), torch.cdist(centred, centred))
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(3, dtype=torch.float64))  # the subspace's axes stay unit
    _, _, shares = P.wpos_frame_pca(W_pos, 1, n)
    assert float(shares.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        P.wpos_frame_pca(W_pos, 3, 4)


def test_decoder_input_cosine():
    W_dec = f64([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cos = P.decoder_input_cosine(W_dec, f64([3.0, 1.0]), b_dec=f64([0.0, 1.0]))
    assert cos.tolist() == pytest.approx([1.0, 0.0, math.sqrt(0.5)])


# ----------------------------------------------------------------------------------------------
# Positional neurons
# ----------------------------------------------------------------------------------------------


def sums_of(acts):
    """Return PositionSums of windows of activations (batch, pos, units), as mlp_position_sums accumulates them."""
    acts = f64(acts)
    return PositionSums.empty(acts.shape[1]).add_windows(act=acts, act2=acts**2)


def test_neuron_r2_pos_hand_computation():
    acts = f64([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])[:, :, None]  # 2 windows x 3 positions x 1 unit
    m = sums_of(acts)
    # positions 0..2: means 2, 3, 4 around 3 -> SS_between 2*(1+0+1) = 4; SS_total 4+1+0+0+1+4 = 10
    assert float(P.neuron_r2_pos(m, range(0, 3))) == pytest.approx(0.4)
    # positions 1..2: values 2, 4 | 3, 5, means 3, 4 around 3.5 -> SS_between 1, SS_total 5
    assert float(P.neuron_r2_pos(m, range(1, 3))) == pytest.approx(0.2)
    assert float(P.neuron_r2_pos(m, range(0, 1))) == 0.0  # one position: nothing between positions
    frame = P.neuron_profile_frame(m, torch.tensor([0]), range(0, 3))
    assert frame["mean"].tolist() == pytest.approx([2.0, 3.0, 4.0]) and frame["std"].tolist() == pytest.approx([1.0] * 3)


def test_neuron_r2_pos_matches_scipy_anova_and_batches():
    from scipy.stats import f_oneway

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(11, 6, 4, generator=g, dtype=torch.float64) + torch.linspace(0, 1, 6, dtype=torch.float64)[None, :, None] * f64([0.0, 0.5, 2.0, 8.0])
    one = sums_of(acts)
    two = PositionSums.empty(6).add_windows(act=acts[:4], act2=acts[:4] ** 2).add_windows(act=acts[4:], act2=acts[4:] ** 2)
    share = P.neuron_r2_pos(one, range(6))
    torch.testing.assert_close(share, P.neuron_r2_pos(two, range(6)))
    k, N = 6, 66
    for u in range(4):
        F = f_oneway(*[acts[:, p, u].numpy() for p in range(6)]).statistic
        eta2 = F * (k - 1) / (F * (k - 1) + (N - k))
        assert float(share[u]) == pytest.approx(eta2, rel=1e-9)
    assert share[3] > 0.8 > 0.2 > share[0]


def test_chance_share_matches_simulation():
    assert P.chance_share(5, 20) == pytest.approx(4 / 19)
    g = torch.Generator().manual_seed(0)
    m = sums_of(torch.randn(4, 5, 4000, generator=g, dtype=torch.float64))
    assert float(P.neuron_r2_pos(m, range(5)).mean()) == pytest.approx(4 / 19, abs=0.005)
    with pytest.raises(ValueError):
        P.chance_share(5, 5)


def test_constant_unit_and_errors():
    m = sums_of(torch.ones(4, 3, 2, dtype=torch.float64))
    assert P.neuron_r2_pos(m, range(3)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="at least one sample"):
        P.neuron_r2_pos(sums_of(torch.ones(1, 3, 2)), range(0, 4))


def tiny_model(n_ctx=12, d_vocab=20, seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=n_ctx, d_head=8, n_heads=2, d_mlp=32, d_vocab=d_vocab,
                                  act_fn="gelu", positional_embedding_type="standard", device="cpu", seed=seed)
    return HookedTransformer(cfg)


def test_mlp_sums_match_a_direct_cache_and_position_only_model_scores_one():
    model = tiny_model()
    tokens = torch.randint(0, 20, (7, 12), generator=torch.Generator().manual_seed(0))
    m = P.mlp_position_sums(model, tokens, batch_size=3, progress=False)
    _, cache = model.run_with_cache(tokens)
    acts = cache["blocks.0.mlp.hook_post"].double()
    torch.testing.assert_close(m.mean("act"), acts.mean(0).double())
    torch.testing.assert_close(m.n, torch.full((12,), 7.0, dtype=torch.float64))
    share = P.neuron_r2_pos(m, range(1, 12))
    assert ((share >= 0) & (share <= 1)).all() and share.max() < 0.999
    # with W_E = 0 the residual stream, and so every neuron, is a function of the position alone
    with torch.no_grad():
        model.embed.W_E.zero_()
    share0 = P.neuron_r2_pos(P.mlp_position_sums(model, tokens, progress=False), range(1, 12))
    torch.testing.assert_close(share0, torch.ones_like(share0), atol=1e-6, rtol=0)
    frame = P.neuron_profile_frame(m, torch.tensor([3, 0]), range(1, 12))
    assert len(frame) == 2 * 11 and frame.position.min() == 1
    np.testing.assert_allclose(frame[frame.neuron == 3]["mean"].to_numpy(), acts[:, 1:, 3].mean(0).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="not a hook"):
        P.mlp_position_sums(model, tokens, layer=3)


# ----------------------------------------------------------------------------------------------
# Width sweep, extremes, sampling, fits
# ----------------------------------------------------------------------------------------------


def test_width_sweep_counts_detectors():
    W_E, W_pos = circle_model()
    model = SimpleNamespace(W_E=W_E, W_pos=W_pos, cfg=SimpleNamespace(n_ctx=8))
    saes = {"wide": detector_sae(W_pos, peaks=[0, 1, 1, 2, 6], n_token=4), "narrow": detector_sae(W_pos, peaks=[1], n_token=1)}
    for s in saes.values():
        s.cfg.metadata.context_size = 4  # only positions 0..3 count: the detector at 6 never fires there
    df = P.width_sweep_frame(model, saes, progress=False)
    assert df.index.tolist() == ["narrow", "wide"]  # sorted by d_sae
    # only positions 1..3 count: the detector at 0 (the BOS slot) and the one at 6 never fire there
    assert df.loc["narrow", "positional"] == 1 and df.loc["wide", "positional"] == 3
    assert df.loc["wide", "distinct_peaks"] == 2 and df.loc["wide", "mean_peak_width"] == 1.0
    assert df.loc["wide", "context_size"] == 4


def test_r2_extremes_and_errors():
    r2 = f64([0.0, 0.01, 0.5, 0.97, 1.0, 0.0])
    fires = torch.tensor([True, True, True, True, True, False])
    assert P.r2_extremes(r2, fires) == {"near_0": 0.4, "near_1": 0.4, "n_live": 5}
    with pytest.raises(ValueError):
        P.r2_extremes(r2, fires, low=0.9, high=0.1)
    with pytest.raises(ValueError, match="threshold"):
        P.positional_features(hand_stats([[1.0]]), threshold=1.5)
    with pytest.raises(ValueError, match="context_size must lie in 1.."):
        P.peak_positions(hand_stats([[1.0], [0.0]]), context_size=0)
    with pytest.raises(ValueError, match="no position inside the context"):
        P.peak_positions(hand_stats([[1.0]]), context_size=2)  # the stats hold position 0 only, the BOS slot


def test_scatter_sample_keeps_the_flagged_points():
    keep = torch.zeros(100, dtype=torch.bool)
    keep[[3, 50, 99]] = True
    idx = P.scatter_sample(100, 10, keep=keep)
    assert len(idx) == 10 and {3, 50, 99} <= set(idx.tolist()) and idx.unique().numel() == 10
    assert (idx.diff() > 0).all()
    assert P.scatter_sample(5, 10).tolist() == [0, 1, 2, 3, 4]


def test_loglog_fit():
    x = np.array([1024, 2048, 4096, 8192])
    fit = P.loglog_fit(x, 3 * x**1.5)
    assert fit["slope"] == pytest.approx(1.5) and fit["r2"] == pytest.approx(1.0) and fit["n"] == 4
    assert fit["intercept"] == pytest.approx(math.log(3))
    assert P.loglog_fit([1, 2, 4], [0, 2, 8])["slope"] == pytest.approx(2.0)  # the zero is left out
    assert math.isnan(P.loglog_fit([1, 2], [0, 5])["slope"])
    assert P.loglog_fit([1, 2, 4], [1, 4, 2])["r2"] < 1


def test_bos_slot_sentence_states_the_cosines_or_that_there_are_no_bos_slot_features():
    text = P.bos_slot_sentence(torch.tensor([0.2, 0.4]), torch.tensor([0.9, 1.0]), 0.5, 63)
    assert text.startswith("2 features would look positional") and "positions 0-63" in text
    assert "only 0.300" in text and "it is 0.950" in text
    empty = P.bos_slot_sentence(torch.tensor([]), torch.tensor([]), 0.5, 63)
    assert empty.startswith("No feature has") and "nan" not in empty


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def test_params_are_the_chapter_parameters_and_reject_bad_values():
    from pathlib import Path

    from possae.book import chapter_parameters
    from possae.params import ParameterError

    assert set(P.PositionalParams.names()) == chapter_parameters(Path("chapters/positional.py"))
    assert P.PositionalParams().threshold == P.POSITIONAL_R2
    params = P.PositionalParams.from_mapping({"width_sweep_ids": ["a", "b"], "threshold": 1})
    assert params.width_sweep_ids == ("a", "b") and params.threshold == 1.0
    with pytest.raises(ParameterError, match="no parameter 'treshold'"):
        P.PositionalParams.from_mapping({"treshold": 0.5})
    with pytest.raises(ParameterError, match="top_k"):
        P.PositionalParams.from_mapping({"top_k": "8"})
    with pytest.raises(ParameterError, match="threshold"):
        P.PositionalParams(threshold=1.5)
    with pytest.raises(ParameterError, match="n_heldout_tokens"):
        P.PositionalParams(n_heldout_tokens=0)


# ----------------------------------------------------------------------------------------------
# The whole chapter on a constructed model with known answers
# ----------------------------------------------------------------------------------------------


def circle_transformer(V=30, n=8):
    """Return a 1-layer float64 HookedTransformer whose W_E, W_pos are circle_model's, with a BOS id."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=4, n_ctx=n, d_head=2, n_heads=2, d_mlp=8, d_vocab=V,
                                  act_fn="gelu", positional_embedding_type="standard", device="cpu", seed=0,
                                  dtype=torch.float64)
    model = HookedTransformer(cfg)
    W_E, W_pos = circle_model(V, n)
    with torch.no_grad():
        model.embed.W_E.copy_(W_E)
        model.pos_embed.W_pos.copy_(W_pos)
    model.tokenizer = SimpleNamespace(bos_token_id=0, padding_side="right")
    return model, W_pos


@pytest.fixture
def fake_heldout(monkeypatch):
    """Replace the evaluation pack's held-out text by random token windows of the requested length."""
    import possae.heldout

    def windows(tokenizer, context_size, tokens_per_corpus=0, **_):
        return torch.randint(0, 30, (40, context_size), generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(possae.heldout, "heldout_windows", windows)


def chapter_result(peaks, threshold=0.5, context_size=4, n_token=2, sweep=True):
    model, W_pos = circle_transformer()
    sae = detector_sae(W_pos, peaks=peaks, n_token=n_token, n_dead=1)
    sae.cfg.metadata.context_size = context_size
    params = P.PositionalParams(model_name="m", sae_release="r", sae_id="s", device="cpu", threshold=threshold,
                                width_sweep_release="r", width_sweep_ids=("s",) if sweep else (), top_k=8)
    return P.analyze(model, sae, params), model, sae


def assert_displayable(result):
    """Every table the chapter shows is at most 7 columns wide and has no NaN; every prose value is finite."""
    from possae.glued import check_prose_values

    check_prose_values(result.glued())
    for name in ("threshold_table", "bench_table", "top_table", "range_table", "alignment_table", "extremes_table",
                 "neuron_table", "sweep_table"):
        table = getattr(result, name)()
        assert table.shape[1] <= 7, name
        assert not table.isna().any().any(), name
        assert "nan" not in table.to_string().lower(), name


def test_analyze_counts_only_the_positions_inside_the_context(fake_heldout):
    # finding: 24 positional features over positions 0..C-1 here against 11 over 1..C-1 in the semantic chapter.
    # Detectors at 0 (the BOS slot), 1, 2 and 6, context 4: inside the context (positions 1..3) exactly the detectors
    # at 1 and 2 are positional; the one at 0 would count only if position 0 did; the one at 6 never fires there.
    result, model, sae = chapter_result(peaks=[0, 1, 2, 6])
    assert result.positions == range(1, 4)
    assert result.n_positional == 2 and result.positional.tolist()[:4] == [False, True, True, False]
    assert P.count_positional(P.context_stats(model, sae)) == 2  # the semantic chapter's call gives the same count
    assert result.n_with_slot == 3 and result.bos_slot.nonzero().squeeze(1).tolist() == [0]
    g = result.glued()
    assert g["pos_n_positional"] == 2 and g["pos_first"] == 1 and g["pos_last"] == 3
    assert g["pos_slot_count_sentence"] == "Counting position 0 as well would give 3 instead."
    assert g["pos_bos_slot"].startswith("1 feature would look positional")
    hist = result.histograms()
    assert [h.tolist() for h in hist.values()] == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert result.ranges["positions"].tolist() == ["1-3"] and result.ranges["features"].tolist() == [2]
    assert result.alignment["peak_position"].tolist() == [1, 2]
    assert result.top.tolist() == [1, 2] and set(result.windows) == {1, 2}
    assert result.sweep["positional"].tolist() == [2]
    assert_displayable(result)


def test_analyze_without_positional_features_or_sweep_has_no_nan(fake_heldout):
    result, _, _ = chapter_result(peaks=[], n_token=3, sweep=False)
    assert result.n_positional == 0 and len(result.top) == 0
    g = result.glued()
    assert g["pos_width_sentence"].startswith("With no positional feature")
    assert g["pos_summary_peaks"].startswith("No feature is positional")
    assert g["pos_sweep_sentence"].startswith("No width sweep")
    assert g["pos_count_sentence"].startswith("No feature reaches")
    assert_displayable(result)
    from possae.figures.positional import profile_grid_figure, width_sweep_figure

    assert profile_grid_figure(result.profiles, result.preacts, result.windows).layout.height == 160
    assert width_sweep_figure(result.sweep, result.fit["slope"]).layout.height == 160


def test_profiles_are_zoomed_onto_early_peaks():
    # finding: the profiles spanned 256 positions, so a peak at positions 0-3 was a sliver
    mean = torch.zeros(256, dtype=torch.float64)
    mean[2], mean[3] = 1.0, 0.4
    assert P.profile_window(mean) == 15  # at least 16 positions, here 0..15
    mean[40] = 0.2
    assert P.profile_window(mean) == 81
    assert P.profile_window(torch.zeros(10, dtype=torch.float64)) == 9  # clamped to the profile
    from possae.figures.positional import profile_grid_figure

    profiles = pd.DataFrame({"feature": 7, "position": range(256), "mean": torch.exp(-(torch.arange(256.) - 2) ** 2),
                             "std": 0.0})
    preacts = pd.DataFrame({"feature": 7, "position": range(256), "preact_pos": 0.0, "fire_some": -1.0, "fire_all": 0.0})
    fig = profile_grid_figure(profiles, preacts, {7: P.profile_window(torch.tensor(profiles["mean"].to_numpy()))})
    assert fig.layout.xaxis.range[1] < 20 and max(fig.data[1].x) == 15


# ----------------------------------------------------------------------------------------------
# Sentences built from the numbers
# ----------------------------------------------------------------------------------------------


def sweep_frame(positional, peaks, widths, d_sae=(1024, 2048, 4096, 8192)):
    share = [p / d for p, d in zip(positional, d_sae)]
    return pd.DataFrame({"context_size": 64, "d_sae": d_sae, "positional": positional, "share": share,
                         "distinct_peaks": peaks, "mean_peak_width": widths},
                        index=pd.Index([f"w{d}" for d in d_sae], name="sae_id"))


def test_sweep_sentence_says_stays_when_nothing_changes():
    # finding: "go from 4 to 4 distinct peaks ... from 1.20 to 1.20 positions"
    sweep = sweep_frame([4, 4, 6, 9], [4, 4, 4, 4], [1.2, 1.2, 1.2, 1.2])
    text = P.sweep_sentence(sweep, P.loglog_fit(sweep.d_sae, sweep.positional),
                            P.loglog_fit(sweep.d_sae, sweep.distinct_peaks))
    assert "distinct peak positions stays at 4" in text and "mean peak width stays at 1.20 positions" in text
    assert "from 4 to 4" not in text and "from 1.20 to 1.20" not in text
    assert text.startswith("Between d_sae = 1024 and 8192 (4 widths) the number of positional features goes from 4 to 9")
    assert "`" not in text  # glued as plain text: no markdown
    assert text.endswith("pile onto positions that already have one rather than tiling new ones.")
    assert P.change_phrase(1, 2, "{:.0f}", " peaks") == "goes from 1 to 2 peaks"


def test_sweep_sentences_without_a_trend():
    none = P.loglog_fit([], [])
    assert P.sweep_sentence(sweep_frame([], [], [], d_sae=()), none, none).startswith("No width sweep")
    one = sweep_frame([3], [2], [1.0], d_sae=(1024,))
    assert P.sweep_sentence(one, none, none).startswith("The sweep holds one SAE only")
    zero = sweep_frame([0, 0, 1], [0, 0, 1], [float("nan"), float("nan"), 1.0], d_sae=(1024, 2048, 4096))
    fit = P.loglog_fit(zero.d_sae, zero.positional)
    text = P.sweep_sentence(zero, fit, fit)
    assert "no power law is fitted" in text and "nan" not in text
    assert P.sweep_summary(zero, fit).startswith("Across SAE widths, too few")
    assert P.sweep_verdict(1.0, 1.0) == "the extra features spread to new positions"
    assert P.sweep_verdict(-0.2, 0.0).startswith("the count does not grow")


def test_count_norm_and_extremes_sentences_follow_the_numbers():
    assert P.count_sentence(6, 11, 4096, 0.5).endswith("Either way positional features are a small minority of the dictionary.")
    assert P.count_sentence(300, 900, 1000, 0.5).endswith("admits 900 features, 90.0% of the dictionary.")
    assert "falls from 0.80 at position 1 to 0.40" in P.norm_sentence(0.8, 0.4, 0.9, 1, 63)
    assert "late positions move the input less" in P.norm_sentence(0.8, 0.4, 0.9, 1, 63)
    rises = P.norm_sentence(0.4, 0.8, 0.5, 1, 63)
    assert "rises" in rises and "less than the token" not in rises
    pos, tok = {"near_0": 0.3, "near_1": 0.2, "n_live": 10}, {"near_0": 0.5, "near_1": 0.1, "n_live": 10}
    text = P.extremes_sentence(pos, tok)
    assert not text.startswith("Position explains almost nothing") and "Token identity alone" not in text
    assert P.interaction_sentence(0.05, None).endswith("there is no positional feature to compare with.")
    assert P.peak_width_sentence(torch.tensor([1, 1, 3, 3])) == (
        "The 4 positional features have a mean peak width of 2.00 positions, and 50% of them are single-position "
        "detectors (width 1).")


def test_chapter_holds_no_logic_and_reads_no_sae_config():
    # finding: the chapter built tables, verdict rules and NaN fallbacks itself, and read the SAE's context size
    import jupytext

    cells = [c.source for c in jupytext.read("chapters/positional.py").cells if c.cell_type == "code"]
    code = "\n".join(line.split("#")[0] for cell in cells for line in cell.splitlines())
    for banned in ("if ", "for ", "else", "nan", "metadata", "context_size =", "glue(", "print(", "pd.DataFrame"):
        assert banned not in code, banned


def test_top_table_links_to_neuronpedia_on_gpt2_and_not_on_other_releases(fake_heldout):
    """Issue 14: on a gpt2-small-res-jb SAE the shown features' ids are anchors to their Neuronpedia pages, rendered
    unescaped; on a release Neuronpedia does not host they stay plain ids, and the prose says which."""
    import dataclasses

    from possae.neuronpedia import show

    result, _, _ = chapter_result(peaks=[1, 2, 3])
    plain = result.top_table()
    assert [type(i) for i in plain.index] == [int] * len(plain) and show(plain) is plain
    assert result.glued()["pos_links_sentence"] == "Neuronpedia hosts no pages for this SAE (r), so feature ids are plain numbers."
    result.params = dataclasses.replace(result.params, sae_release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")
    linked = result.top_table()
    assert linked.index.tolist() == [
        f'<a href="https://www.neuronpedia.org/gpt2-small/0-res-jb/{f}" target="_blank" rel="noopener">{f}</a>'
        for f in plain.index]
    assert (linked.to_numpy() == plain.to_numpy()).all() and list(linked.columns) == list(plain.columns)
    assert all(f'<th>{a}</th>' in show(linked)._repr_html_() for a in linked.index)
    assert "links to its page on Neuronpedia (gpt2-small/0-res-jb)" in result.glued()["pos_links_sentence"]


def test_profile_caption_says_when_no_feature_is_positional():
    # finding: on the gpt2 stand-in the caption read "For the 0 most positional features"
    assert P.top_lead(0).startswith("No feature is positional by the criterion above, so the figure has no panel.")
    assert P.top_lead(1).startswith("For the 1 most positional feature (at most")
    assert P.top_lead(6).startswith("For the 6 most positional features (at most two per peak position")
    assert "0 most" not in P.top_lead(0)


def test_coverage_counts_peaks_single_position_features_and_early_strength():
    import pandas as pd

    from possae.positional import coverage, coverage_sentence

    # 6 positional features over positions 1..16 (early: 1..2), 1 non-positional
    scores = pd.DataFrame({"peak_position": [1, 1, 2, 9, 12, 16, 3], "peak_width": [1, 1, 3, 1, 5, 2, 1],
                           "max_mean": [6.0, 5.0, 4.0, 2.0, 1.5, 1.0, 99.0]})
    positional = torch.tensor([True] * 6 + [False])
    c = coverage(scores, positional, range(1, 17))
    assert (c["peak_positions"], c["n_positions"], c["single"], c["single_early"]) == (5, 16, 3, 2)
    assert c["early_last"] == 2 and c["early_features"] == 3
    assert c["early_max_mean"] == 5.0 and c["later_max_mean"] == 1.5 and c["rho_peak_strength"] < -0.9
    assert "5 distinct positions of the 16" in coverage_sentence(c) and "3.33 times as strongly" in coverage_sentence(c)
    flat = coverage(scores.assign(max_mean=1.0), positional, range(1, 17))
    assert flat["early_max_mean"] == flat["later_max_mean"]
    assert coverage_sentence(coverage(scores, torch.zeros(7, dtype=torch.bool), range(1, 17))).startswith("No feature")


def test_geometry_coverage_rows_measure_winding_loudness_and_coverage_and_the_sentence_names_the_confound():
    """coverage_row: turns over rows 1..C-1 (a whole number of turns around the origin reads exactly), the row-norm
    ratio to W_E and the share of positions with a peak; the sentence says arcs are arcs and calls the cause a
    conjecture."""
    from types import SimpleNamespace

    from possae.positional import coverage_row, geometry_coverage_sentence

    def organism(name, C, turns, radius):
        angle = 2 * torch.pi * turns * torch.arange(C - 1, dtype=torch.float64) / (C - 1)
        W_pos = torch.zeros(C, 4, dtype=torch.float64)
        W_pos[1:, 0], W_pos[1:, 1] = radius * angle.cos(), radius * angle.sin()
        W_E = torch.zeros(10, 4, dtype=torch.float64)
        W_E[:, 2] = 2.0
        return SimpleNamespace(W_pos=W_pos, W_E=W_E, cfg=SimpleNamespace(model_name=name))

    cov = {"n_features": 12, "n_positions": 63, "peak_positions": 21, "single": 3}
    two = coverage_row(organism("helix", 64, 2, 8.0), 64, cov, "helix/relu")
    assert abs(two["W_pos turns (rows 1..C-1)"] - 2 * 62 / 63) < 1e-9  # 62 steps of 2 turns / 63
    assert abs(two["‖W_pos‖ / ‖W_E‖"] - 4.0) < 1e-12 and two["share of positions"] == 21 / 63
    arc = coverage_row(organism("arc", 64, 0.5, 1.0), 64, {**cov, "peak_positions": 2}, "arc/relu")
    wound = pd.DataFrame([two, arc])
    text = geometry_coverage_sentence(wound)
    assert "helix's W_pos is a helix of 2.0 turns over rows 1..63" in text and "peak at 21 of those 63 positions (33%)" in text
    assert 0.49 < arc["W_pos turns (rows 1..C-1)"] < 1  # around its centroid, an arc reads more than its share
    assert f"wind 1.97 and {arc['W_pos turns (rows 1..C-1)']:.2f} turns" in text and "4.00 and 0.50 times" in text and "conjecture" in text
    arcs = geometry_coverage_sentence(pd.DataFrame([arc, arc]))
    assert "both curves are arcs" in arcs
    assert geometry_coverage_sentence(wound.iloc[:1]).startswith("This model is not one of possae's organisms")
