"""Tests of possae.length: spurious firing and the example vs brute force, error accumulators, fixes, errors."""

import pandas as pd
import pytest
import torch

from builders import make_sae, make_weights
from possae import length as L
from possae import positional as P
from possae.semantic import token_activation_vs_position
from possae.layer0_stats import Layer0Stats, layer0_stats






def brute_acts(W_E, W_pos, sae):
    """Return sae.encode(W_E[t] + W_pos[p]) as a (V, n, F) tensor."""
    x = W_E[:, None, :] + W_pos[None, :, :]
    return sae.encode(x.reshape(-1, x.shape[-1])).reshape(W_E.shape[0], W_pos.shape[0], -1).detach()


def brute_spurious(W_E, W_pos, sae, C):
    """Return (activations, spurious mask (V, n, F)) by brute force."""
    acts = brute_acts(W_E, W_pos, sae)
    fired = acts > 0
    never = ~fired[:, :C].any(1)
    past = torch.arange(W_pos.shape[0]) >= C
    return acts, fired & never[:, None, :] & past[None, :, None]


# ----------------------------------------------------------------------------------------------
# spurious firing: exact == brute force
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("C", [1, 5, 9])
def test_spurious_counts_match_brute_force(kind, apply_b_dec, C):
    sae = make_sae(kind, seed=C, apply_b_dec_to_input=apply_b_dec)
    W_E, W_pos = make_weights(V=300, seed=C + 7)
    counts = L.spurious_counts(W_E, W_pos, sae, C, feature_chunk=4, progress=False)
    _, spur = brute_spurious(W_E, W_pos, sae, C)
    assert torch.equal(counts, spur.sum(0).long())
    assert int(counts.sum()) > 0 and int(counts[:C].sum()) == 0


def test_spurious_example_matches_brute_force():
    sae = make_sae("standard", F=20, seed=3)
    W_E, W_pos = make_weights(V=50, seed=3)
    C = 4
    acts, spur = brute_spurious(W_E, W_pos, sae, C)
    features = torch.arange(20) % 3 != 0
    tokens = torch.arange(50) % 4 != 1
    masked = torch.where(spur & tokens[:, None, None] & features[None, None, :], acts, torch.zeros_like(acts))
    t, p, i = (int(v) for v in torch.unravel_index(masked.argmax(), masked.shape))
    ex = L.spurious_example(W_E, W_pos, sae, C, features=features, tokens=tokens, feature_chunk=6)
    assert (ex.feature, ex.token, ex.position) == (i, t, p)
    assert ex.activation == pytest.approx(float(masked.max()), rel=1e-12)
    assert ex.n_positions == int(spur[t, :, i].sum())
    # and the profile that the chapter plots (sae.encode) agrees at that position
    prof = token_activation_vs_position(W_E, W_pos, sae, ex.token, [ex.feature], method="brute_force")
    assert float(prof.activation.iloc[ex.position]) == pytest.approx(ex.activation, rel=1e-12)
    assert float(prof.activation.iloc[:C].max()) == 0.0
    # unrestricted, the example is at least as strong
    assert L.spurious_example(W_E, W_pos, sae, C).activation >= ex.activation


def test_feature_top_tokens_match_brute_force():
    sae = make_sae("jumprelu", seed=5)
    W_E, W_pos = make_weights(seed=5)
    C = 6
    acts = brute_acts(W_E, W_pos, sae)
    i = int(acts[:, :C].amax((0, 1)).argmax())
    top = L.feature_top_tokens(W_E, W_pos, sae, i, C, k=5)
    ref_v, ref_t = acts[:, :C, i].max(1).values.topk(5)
    assert top.token.tolist() == ref_t.tolist()
    torch.testing.assert_close(torch.tensor(top.max_activation_inside.values), ref_v, rtol=1e-12, atol=1e-12)


def test_spurious_rejects_bad_input():
    W_E, W_pos = make_weights()
    with pytest.raises(ValueError, match="context_size"):
        L.spurious_counts(W_E, W_pos, make_sae(), 12)
    with pytest.raises(ValueError, match="context_size"):
        L.spurious_counts(W_E, W_pos, make_sae(), 0)
    with pytest.raises(ValueError, match="exact"):
        L.spurious_counts(W_E, W_pos, make_sae("topk", k=3), 4)
    with pytest.raises(ValueError, match="mask over the 40 tokens"):
        L.spurious_example(W_E, W_pos, make_sae(), 4, tokens=torch.ones(39, dtype=torch.bool))
    with pytest.raises(ValueError, match="no allowed"):
        L.spurious_example(W_E, W_pos, make_sae(), 4, features=torch.zeros(15, dtype=torch.bool))


def test_spurious_rate_frame_values():
    counts = torch.tensor([[0, 0, 0], [4, 2, 0], [8, 0, 6]])
    positional = torch.tensor([True, False, False])
    df = L.spurious_rate_frame(counts, d_vocab=4, positional=positional, l0=torch.tensor([1.0, 2.0, 7.0]))
    assert df.spurious_per_token.tolist() == [0.0, 1.5, 3.5]
    assert df.positional.tolist() == [0.0, 1.0, 2.0]
    assert df["non-positional"].tolist() == [0.0, 0.5, 1.5]
    assert df.spurious_share_of_l0.tolist() == [0.0, 0.75, 0.5]


# ----------------------------------------------------------------------------------------------
# error accumulators
# ----------------------------------------------------------------------------------------------


def test_error_frame_hand_worked():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    sums = L.ErrorSums.empty(2, 2).add(x, torch.tensor([0, 0, 1]), {"m": x - 1.0})
    df = L.error_frame(sums).set_index("position")
    # mean input (2, 2/3); position 0: sse 4 over 2 inputs of width 2, centred sum 2 * (1 + 4/9)
    assert df.loc[0, "mse"] == pytest.approx(1.0)
    assert df.loc[0, "nmse"] == pytest.approx(18 / 13)
    assert df.loc[0, "rel_err"] == pytest.approx(4 / 10)
    # position 1: sse 2, centred ||(0, 4/3)||^2 = 16/9
    assert df.loc[1, "nmse"] == pytest.approx(2 / (16 / 9))
    assert df.n.tolist() == [2.0, 1.0]


def test_error_frame_matches_direct_and_is_batch_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) + 2.0
    pos = torch.randint(0, 7, (300,), generator=g)
    recons = {"a": x + 0.1 * torch.randn(300, 5, generator=g, dtype=torch.float64), "b": torch.zeros_like(x)}
    one = L.error_frame(L.ErrorSums.empty(7, 5).add(x, pos, recons))
    sums = L.ErrorSums.empty(7, 5)
    for s in (slice(0, 100), slice(100, 250), slice(250, 300)):
        sums.add(x[s], pos[s], {k: v[s] for k, v in recons.items()})
    pd.testing.assert_frame_equal(one, L.error_frame(sums), rtol=1e-12)
    mu = x.mean(0)
    for p in range(7):
        at = pos == p
        err = (x[at] - recons["a"][at]).pow(2).sum(1)
        row = one[(one.method == "a") & (one.position == p)].iloc[0]
        assert row.mse == pytest.approx(float(err.mean() / 5), rel=1e-12)
        assert row.nmse == pytest.approx(float(err.sum() / (x[at] - mu).pow(2).sum()), rel=1e-12)
    # predicting zero: rel_err is exactly 1
    assert one[one.method == "b"].rel_err.tolist() == pytest.approx([1.0] * 7)


def test_error_sums_reject_bad_input():
    sums = L.ErrorSums.empty(3, 2)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="positions must lie"):
        sums.add(x, torch.tensor([0, 3]), {"m": x})
    with pytest.raises(ValueError, match="2 inputs but 1"):
        sums.add(x, torch.tensor([0]), {"m": x})
    sums.add(x, torch.tensor([0, 1]), {"m": x})
    with pytest.raises(ValueError, match="same methods"):
        sums.add(x, torch.tensor([0, 1]), {"other": x})
    with pytest.raises(ValueError, match="no inputs"):
        L.error_frame(L.ErrorSums.empty(3, 2))


def test_summary_and_restores():
    df = pd.DataFrame({"method": ["s"] * 4 + ["f"] * 4, "position": list(range(4)) * 2,
                       "nmse": [1.0, 3.0, 10.0, 30.0, 1.0, 1.0, 3.0, 5.0]})
    s = L.summary_frame(df, context_size=2)
    assert s.loc["s"].tolist() == [2.0, 20.0, 10.0]
    assert s.loc["f"].tolist() == [1.0, 4.0, 4.0]
    assert L.restores(s, "s") == {"s": False, "f": True}  # bound 2 x 2.0
    with pytest.raises(ValueError, match="reference"):
        L.restores(s, "missing")


def test_random_equal_norm():
    x_hat = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64).repeat(5000, 1)
    r = L.random_equal_norm(x_hat, torch.Generator().manual_seed(1))
    torch.testing.assert_close(r.norm(dim=1), x_hat.norm(dim=1), rtol=1e-12, atol=0)
    cos = torch.nn.functional.cosine_similarity(r, x_hat, dim=1)
    assert abs(float(cos.mean())) < 0.03 and float(cos.abs().max()) < 1.0  # random directions, not x_hat's
    assert torch.equal(r, L.random_equal_norm(x_hat, torch.Generator().manual_seed(1)))


def test_sample_tokens():
    assert torch.equal(L.sample_tokens(10, 10), torch.arange(10))
    assert torch.equal(L.sample_tokens(10, 50), torch.arange(10))
    s = L.sample_tokens(100, 20, seed=3)
    assert len(s.unique()) == 20 and torch.equal(s, s.sort().values) and int(s.max()) < 100
    assert torch.equal(s, L.sample_tokens(100, 20, seed=3)) and not torch.equal(s, L.sample_tokens(100, 20, seed=4))
    with pytest.raises(ValueError):
        L.sample_tokens(100, 0)


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_all_token_errors_exact_matches_brute_force_and_direct(kind):
    sae = make_sae(kind, seed=11)
    W_E, W_pos = make_weights(V=30, n=9, seed=11)
    ex = L.all_token_position_errors(W_E, W_pos, sae, seed=2, batch_rows=64, method="exact", progress=False)
    bf = L.all_token_position_errors(W_E, W_pos, sae, seed=2, batch_rows=64, method="brute_force", progress=False)
    pd.testing.assert_frame_equal(ex, bf, rtol=1e-9)
    x = W_E[:, None, :] + W_pos[None]
    err = (x - L.sae_reconstruct(sae, x.reshape(-1, 6)).reshape(x.shape)).pow(2).sum(-1)  # (V, n)
    got = ex[ex.method == L.SAE_LABEL].mse.to_numpy()
    torch.testing.assert_close(torch.tensor(got), err.mean(0) / 6, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# positional features, fixes, held-out pass
# ----------------------------------------------------------------------------------------------


def test_r2_pos_inside_matches_restricted_stats():
    sae = make_sae("standard", seed=13)
    W_E, W_pos = make_weights(seed=13)
    full = layer0_stats(W_E, W_pos, sae, progress=False)
    inside = layer0_stats(W_E, W_pos, sae, positions=range(5), progress=False)
    torch.testing.assert_close(P.r2_pos_inside(full, 5), inside.r2_pos, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(P.r2_pos_inside(full, 5), full.r2_pos)


def fake_stats(mean):
    """Return Layer0Stats with the given (n_pos, d_sae) mean activations and no within-position variance."""
    n, F = mean.shape
    z = torch.zeros(n, F, dtype=torch.float64)
    return Layer0Stats(torch.arange(n), mean, z, (mean > 0).double(), z, mean.max(0).values, mean.argmax(0),
                       torch.zeros(F, dtype=torch.float64), torch.zeros(F, dtype=torch.float64), mean.mean(0),
                       mean.var(0, unbiased=False), "exact")


def test_positional_selection_and_past_context_summary():
    mean = torch.zeros(8, 5, dtype=torch.float64)
    mean[0, 0], mean[0, 1] = 2.0, 1.0  # features 0, 1 peak at position 0; 1 grows past the context
    mean[6, 1] = 3.0
    mean[1, 2] = 1.0  # feature 2 peaks at 1, silent past
    mean[:, 3] = 1.0  # feature 3 is constant: R2 0, not positional
    mean[2, 4], mean[7, 4] = 1.0, 0.5  # feature 4 peaks at 2, still fires past
    stats = fake_stats(mean)
    C = 4
    assert P.positional_features(stats, C).tolist() == [True, True, True, False, True]
    assert P.peak_positions(stats, C)[[0, 1, 2, 4]].tolist() == [0, 0, 1, 2]
    assert set(P.top_positional_features(stats, C, k=10).tolist()) == {0, 1, 2, 4}
    assert len(P.top_positional_features(stats, C, k=10, per_peak=1)) == 3  # one of features 0, 1
    frame = L.past_context_frame(stats, torch.tensor([0, 1, 2, 4]), C)
    assert frame.max_mean_past.tolist() == [0.0, 3.0, 0.0, 0.5]
    summ = L.past_context_summary(frame)
    assert summ.loc["all", "features"] == 4
    assert summ.loc["all", "silent"] == pytest.approx(0.5)  # features 0 and 2
    assert summ.loc["all", "overshoot"] == pytest.approx(0.25)  # feature 1
    assert summ.loc[0, "features"] == 2
    by_kind = L.firing_by_kind_frame(stats, P.positional_features(stats, C))
    assert by_kind["non-positional"].tolist() == [1.0] * 8


def test_nearest_inside():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2], [0.0, 0.0]])
    df = L.nearest_inside(W, 2)
    assert df.nearest_inside.tolist() == [0, 1, 0, 1, 0]
    assert df.cosine.iloc[2] == pytest.approx(2**-0.5)
    assert df.cosine.iloc[3] == pytest.approx(0.2 / (1.04**0.5))
    assert df.cosine.iloc[4] == 0.0


def tiny_model(V=25, d=6, n=10, seed=0):
    """Return a randomly initialised 1-layer float64 HookedTransformer (no download)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=1, d_model=d, n_ctx=n, d_head=3, n_heads=2, d_mlp=12, d_vocab=V,
                                  act_fn="gelu", normalization_type="LN", dtype=torch.float64, device="cpu")
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.W_pos.mul_(40.0)  # make position matter
        model.W_E.mul_(40.0)
    return model


def test_heldout_errors_and_fixes_against_direct_computation():
    model = tiny_model()
    V, n, d = model.cfg.d_vocab, model.cfg.n_ctx, model.cfg.d_model
    sae, control = make_sae("standard", d=d, F=15, seed=21), make_sae("standard", d=d, F=15, seed=22)
    C = 4
    tokens = torch.randint(0, V, (6, n), generator=torch.Generator().manual_seed(0))
    assert L.layer0_input_gap(model, tokens) < 1e-12  # hook_resid_pre(0) == hook_embed + hook_pos_embed
    stats = layer0_stats(model.W_E, model.W_pos, sae, progress=False)
    fixes = L.length_fixes(stats, sae, model.W_E, C)
    fixes.positional = torch.arange(15) % 4 == 0  # a fixed set, so that (b) is exercised whatever R2 says
    df = L.heldout_position_errors(model, sae, tokens, fixes=fixes, control=control, batch_size=4, progress=False)

    W_E, W_pos = model.W_E.detach(), model.W_pos.detach()
    x = (W_E[tokens] + W_pos[None]).reshape(-1, d)
    pos = torch.arange(n).repeat(len(tokens))
    tok = tokens.flatten()
    past = (pos >= C)[:, None]
    f = sae.encode(x)
    sem = f * ~fixes.positional
    direct = {
        L.SAE_LABEL: sae.decode(f),
        L.TOKEN_ONLY_LABEL: L.sae_reconstruct(sae, W_E[tok]) + W_pos[pos],
        L.CLAMP_LABEL: torch.where(past, L.sae_reconstruct(sae, W_E[tok] + W_pos[C - 1]) - W_pos[C - 1] + W_pos[pos],
                                   sae.decode(f)),
        L.SWAP_LABEL: torch.where(past, sae.decode(sem) - fixes.offset + W_pos[pos], sae.decode(f)),
        L.CONTROL_LABEL: L.sae_reconstruct(control, x),
    }
    for method, x_hat in direct.items():
        err = (x - x_hat).pow(2).sum(1).detach()
        ref = torch.zeros(n, dtype=torch.float64).index_add_(0, pos, err) / (len(tokens) * d)
        got = torch.tensor(df[df.method == method].sort_values("position").mse.to_numpy())
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12, msg=method)
    # (a') past the context is the SAE's own error at position C - 1, token by token; (b) changes something
    assert not torch.allclose(direct[L.SWAP_LABEL], direct[L.SAE_LABEL])
    with pytest.raises(ValueError, match="n_ctx"):
        L.heldout_position_errors(model, sae, torch.zeros(1, n + 1, dtype=torch.long))


def test_token_part_offset_is_unbiased_inside_the_context():
    sae = make_sae("standard", seed=31)
    W_E, W_pos = make_weights(V=35, seed=31)
    C = 6
    stats = layer0_stats(W_E, W_pos, sae, progress=False)
    positional = torch.arange(15) % 3 == 0
    kappa = L.token_part_offset(stats, sae, W_E, C, positional)
    acts = brute_acts(W_E, W_pos[:C], sae) * ~positional  # (V, C, F)
    token_part = sae.decode(acts).detach() - kappa  # estimates W_E[t]
    torch.testing.assert_close(token_part.mean((0, 1)), W_E.mean(0), rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def test_error_figure_grid_and_spurious_figure():
    from possae.figures.length import error_vs_position_figure, spurious_rate_figure

    df = pd.DataFrame({"method": ["s"] * 4 + ["r"] * 4, "position": list(range(4)) * 2,
                       "mse": [1.0, 2, 3, 4, 5, 6, 7, 8], "nmse": [0.1, 0.2, 3, 4, 1, 1, 5, 6]})
    fig = error_vs_position_figure({"text": df, "all": df[df.method == "s"]}, 2, metrics=("mse", "nmse"))
    # rows mse / nmse x columns text / all: 2 + 1 traces per row, each method in the legend once
    assert len(fig.data) == 6
    assert sorted(t.name for t in fig.data if t.showlegend) == ["r", "s"]
    assert [list(t.y) for t in fig.data if t.name == "s"][1] == [1.0, 2, 3, 4]  # row 1, column 2: mse
    assert [list(t.y) for t in fig.data if t.name == "s"][2] == [0.1, 0.2, 3, 4]  # row 2: nmse
    assert [s.x0 for s in fig.layout.shapes] == [1.5] * 4  # the context marked in every panel
    rates = L.spurious_rate_frame(torch.tensor([[0, 0], [3, 1]]), 4, torch.tensor([True, False]), torch.tensor([1.0, 2.0]))
    fig = spurious_rate_figure(rates, 1)
    assert [t.name for t in fig.data] == ["non-positional features", "positional features", "spurious / L0"]
    assert list(fig.data[2].y) == [0.0, 0.5]


def test_bos_slot_firing_sentence_reports_position0_or_says_there_is_none():
    import pandas as pd

    from possae.length import bos_slot_firing_sentence

    frame = pd.DataFrame({"features": [2.0, 5.0], "firing_rate_inside": [0.5, 0.2], "firing_rate_past": [0.25, 0.1]},
                         index=pd.Index([0, "all"], dtype=object))
    assert bos_slot_firing_sentence(frame).endswith("the 2 features that peak there fire on 50.0% of the inputs inside "
                                                    "the context and on 25.0% past it.")
    for empty in (None, frame.drop(index=0)):
        assert bos_slot_firing_sentence(empty).startswith("No positional feature peaks at position 0")
