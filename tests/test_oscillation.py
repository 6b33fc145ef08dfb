"""Tests of possae.oscillation: W_pos ablation hooks, streamed per-position statistics vs brute force, spectral
estimators on planted frequencies, per-feature quantiles, and the figure builders."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from possae.oscillation import (
    DECILES,
    dominant_frequencies,
    dominant_frequency,
    frequency_table,
    oscillation_amplitude,
    per_feature_quantiles,
    pos_embed_ablation,
    position_pass,
    position_permutation,
    spliced_loss,
)

N_CTX, D, V = 32, 16, 50


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


def make_sae(kind, layer, F=64, seed=0):
    """Return a random in-memory SAE reading blocks.<layer>.hook_resid_pre."""
    cls, cfg_cls, kw = {"relu": (StandardSAE, StandardSAEConfig, {}), "topk": (TopKSAE, TopKSAEConfig, {"k": 4})}[kind]
    cfg = cfg_cls(d_in=D, d_sae=F, **kw)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_pre"
    cfg.metadata.context_size = 8 if kind == "relu" else N_CTX
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, F, generator=g) / math.sqrt(D))
        sae.W_dec.copy_(torch.randn(F, D, generator=g) / math.sqrt(F))
        sae.b_enc.copy_(torch.randn(F, generator=g) * 0.3 - 0.3)
    return sae


def tokens(n=6, seed=1):
    return torch.randint(0, V, (n, N_CTX), generator=torch.Generator().manual_seed(seed))


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


# ---------------------------------------------------------------- streamed pass vs brute force


def test_position_pass_matches_brute_force(model):
    toks = tokens(5)
    saes = {"r0": make_sae("relu", 0), "t1": make_sae("topk", 1, seed=2)}
    res = position_pass(model, toks, saes, "normal", feature_ids=["r0"], batch_size=2)
    logits, cache = model.run_with_cache(toks)
    for sid, sae in saes.items():
        x = cache[sae.cfg.metadata.hook_name]
        f = sae.encode(x).detach()
        got = res.positions[res.positions["sae_id"] == sid].sort_values("position")
        np.testing.assert_allclose(got["mean_act"], f.mean((0, 2)).numpy(), rtol=1e-5)
        nz = torch.where(f > 0, f, torch.nan)
        np.testing.assert_allclose(got["mean_nonzero"], nz.nanmean((0, 2)).numpy(), rtol=1e-5)
        np.testing.assert_allclose(got["l0"], (f > 0).sum(-1).double().mean(0).numpy(), rtol=1e-6)
        rel_err = (sae.decode(f) - x).pow(2).sum((0, 2)) / x.pow(2).sum((0, 2))
        np.testing.assert_allclose(got["rel_err"], rel_err.detach().numpy(), rtol=1e-4)
        assert got["layer"].iloc[0] == int(sae.cfg.metadata.hook_name.split(".")[1])
    assert set(res.positions["family"]) == {"ReLU", "TopK"}
    ce = model.loss_fn(logits, toks, per_token=True).mean(0)
    np.testing.assert_allclose(res.loss["ce"], ce.detach().numpy(), rtol=1e-5)
    # per-feature statistics of the ReLU SAE
    f = saes["r0"].encode(cache["blocks.0.hook_resid_pre"]).detach().flatten(0, 1)
    feats = res.features["r0"]
    np.testing.assert_allclose(feats["mean"], f.mean(0).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(feats["std"], f.std(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(feats["density"], (f > 0).double().mean(0).numpy())
    j = int((f > 0).sum(0).argmax())
    np.testing.assert_allclose(feats.loc[j, "q50"], f[f[:, j] > 0, j].median().item(), rtol=1e-5)
    assert list(res.features) == ["r0"]


def test_zero_ablation_flattens_layer0_curve(model):
    toks = torch.full((3, N_CTX), 7)  # every position sees the same token: only W_pos varies along positions
    saes = {"r0": make_sae("relu", 0)}
    normal = position_pass(model, toks, saes, "normal").positions
    zero = position_pass(model, toks, saes, "zero").positions
    amp = oscillation_amplitude(pd.concat([normal, zero])).set_index("ablation")["amplitude"]
    assert amp["zero"] < 1e-6 < 1e-2 < amp["normal"]


def test_spliced_loss(model):
    toks = tokens(4)
    clean = spliced_loss(model, toks, None, batch_size=3)
    np.testing.assert_allclose(clean["ce"], position_pass(model, toks, {}).loss["ce"], rtol=1e-6)
    spliced = spliced_loss(model, toks, make_sae("relu", 1), batch_size=3)
    assert len(spliced) == N_CTX - 1 and not np.allclose(spliced["ce"], clean["ce"])


# ---------------------------------------------------------------- frequency estimators


@pytest.mark.parametrize("cycles", [3.0, 7.3, 18.6])
def test_dominant_frequency_recovers_planted(cycles):
    n = 255
    t = torch.arange(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    curve = 2.0 + torch.sin(2 * math.pi * cycles * t / n + 0.4) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    assert abs(dominant_frequency(curve) * n - cycles) < 0.25
    peaks = dominant_frequencies(curve, n_ctx=n, top=2)
    assert abs(peaks["cycles_per_n_ctx"].iloc[0] - round(cycles)) <= 1 and peaks["power_share"].iloc[0] > 0.5
    # a steep trend hides the peak from mean removal, but not from linear detrending
    trended = curve + 0.05 * t
    assert abs(dominant_frequency(trended, "linear") * n - cycles) < 0.5
    assert dominant_frequency(trended, "mean") * n < 2


def test_frequency_table_finds_doubling():
    n_ctx, rows = 128, []
    t = np.arange(n_ctx)
    for layer, mult in [(0, 1), (1, 2), (2, 3)]:
        rows.append(pd.DataFrame({"family": "ReLU", "sae_id": f"r{layer}", "layer": layer, "context_size": n_ctx,
                                  "position": t, "mean_act": 1 + np.cos(2 * np.pi * 5 * mult * t / n_ctx)}))
    table = frequency_table(pd.concat(rows), n_ctx, first=1)
    np.testing.assert_allclose(table["ratio_to_base"], [1, 2, 3], atol=0.05)
    np.testing.assert_allclose(table["dominant_cycles_per_n_ctx"], [5, 10, 15], atol=0.2)
    np.testing.assert_allclose(table["dominant_period"], [25.6, 12.8, 128 / 15], rtol=0.03)


# ---------------------------------------------------------------- quantiles


def test_per_feature_quantiles_match_torch():
    g = torch.Generator().manual_seed(0)
    F = 7
    feats = torch.randint(0, F - 1, (500,), generator=g)  # the last feature never fires
    vals = torch.rand(500, generator=g) * (feats + 1)
    q = per_feature_quantiles(vals, feats, F)
    assert q.shape == (F, len(DECILES)) and torch.isnan(q[-1]).all()
    for j in range(F - 1):
        torch.testing.assert_close(q[j], torch.quantile(vals[feats == j].double(), torch.tensor(DECILES).double()))


# ---------------------------------------------------------------- figures


def test_figures_build(model):
    from possae.figures.oscillation import (
        amplitude_figure,
        decile_figure,
        feature_scatter_figure,
        loss_by_position_figure,
        position_curves_figure,
        spectrum_figure,
    )

    toks = tokens(3)
    saes = {"r0": make_sae("relu", 0), "t0": make_sae("topk", 0), "r1": make_sae("relu", 1)}
    res = {a: position_pass(model, toks, saes, a, feature_ids=["r0"] if a == "normal" else ()) for a in ("normal", "zero")}
    pos = pd.concat([r.positions for r in res.values()])
    fig = position_curves_figure(pos, first=1)
    assert len(fig.data) == 2 * 3 and len(fig.layout.shapes) == 2  # two ReLU panels get a training-context line
    assert len(spectrum_figure(res["normal"].positions, N_CTX).data) == 3
    assert len(amplitude_figure(oscillation_amplitude(pos)).data) == 2
    assert len(loss_by_position_figure(pd.concat([r.loss for r in res.values()])).data) == 2
    assert len(feature_scatter_figure(res["normal"].features, {"r0": 0}).data) == 1
    assert len(decile_figure(res["normal"].features, {"r0": 0}).data) == 1


def _freq_rows(rows):
    import pandas as pd

    return pd.DataFrame([{"family": "ReLU", "sae_id": f"s{l}", "layer": l, "positions": "1..63",
                          "dominant_cycles_per_n_ctx": c * 256 / 63, "cycles_in_window": c,
                          "resolved": c >= 1.5, "dominant_period": 63 / c, "ratio_to_base": r} for l, c, r in rows])


def test_a_trend_in_the_lowest_bin_is_not_reported_as_a_period():
    import pandas as pd

    from possae.oscillation import frequency_sentence, frequency_table

    # a pure straight trend plus a bend: no oscillation; its peak sits in the lowest bin
    pos = torch.arange(0, 64, dtype=torch.float64)
    frame = pd.DataFrame({"family": "ReLU", "sae_id": "s0", "layer": 0, "position": pos.numpy(), "context_size": 64,
                          "mean_act": (0.01 * (pos - 30) ** 2).numpy()})
    table = frequency_table(frame, 256, first=1, within_context=True, detrend="linear")
    assert not table.loc[0, "resolved"] and table.loc[0, "cycles_in_window"] < 1.5
    text = frequency_sentence(table, "ReLU")
    assert "no resolved oscillation" in text and "cannot be tested" in text
    # a real period of 16 positions inside the window is resolved and reported
    frame["mean_act"] = torch.sin(2 * torch.pi * pos / 16).numpy()
    table = frequency_table(frame, 256, first=1, within_context=True, detrend="linear")
    assert table.loc[0, "resolved"] and abs(table.loc[0, "dominant_period"] - 16) < 0.5


def test_frequency_sentence_gives_ratios_of_resolved_layers_only():
    from possae.oscillation import frequency_sentence

    text = frequency_sentence(_freq_rows([(0, 4.0, 1.0), (1, 8.0, 2.0), (2, 7.6, 1.9), (3, 1.0, 0.25)]), "ReLU")
    assert "a period of 15.8 positions" in text and "Layers 1, 2 peak at 1.90 to 2.00 times" in text
    assert text.endswith("Layer 3 has no resolved peak (lowest bin).")
    text = frequency_sentence(_freq_rows([(0, 1.0, 1.0), (1, 3.0, 3.0)]), "ReLU")
    assert "no resolved oscillation" in text and "1 (period 21.0 positions)" in text
