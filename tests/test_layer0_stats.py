"""Tests of possae.layer0_stats: exact path vs brute force, hand-worked answers, TopK, method choice, errors."""

import math

import pytest
import torch

from builders import KINDS, make_sae, make_weights
from possae.hooks import LAYER0_INPUT as LAYER0_HOOK
from possae.layer0_stats import (
    choose_method,
    input_scale,
    layer0_stats,
    layer0_stats_from_model,
    token_feature_mean_matrix,
    token_feature_means,
    token_top_features,
)

STATS = ("mean", "std", "firing_rate", "mean_preact", "positional_score", "r2_pos", "r2_tok", "feature_mean", "feature_var")




def assert_same_stats(a, b, rtol=1e-7, atol=1e-9):
    """Assert two Layer0Stats agree on every statistic."""
    for k in STATS:
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.argmax_position, b.argmax_position)


# ----------------------------------------------------------------------------------------------
# exact == brute force
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["dense", "entries"])
def chunk_path(request, monkeypatch):
    """Run the exact path on every chunk's whole product (_dense_chunk_stats) or on its entry list (firing_entries)."""
    import possae.layer0_stats as L0

    monkeypatch.setattr(L0, "DENSE_SHARE", 0.0 if request.param == "dense" else 2.0)
    return request.param


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "gated"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("shape", [(40, 7, 6, 9), (150, 13, 10, 33)])
@pytest.mark.parametrize("weighted,positions", [(False, None), (True, None), (True, [11, 2, 5, 0]), (False, range(2, 6))])
def test_exact_matches_brute_force(kind, apply_b_dec, shape, weighted, positions, chunk_path):
    V, n, d, F = shape
    sae = make_sae(kind, d, F, seed=V + F, apply_b_dec_to_input=apply_b_dec)
    W_E, W_pos = make_weights(V, d, n, seed=F)
    w = torch.rand(V, generator=torch.Generator().manual_seed(3)) ** 3 if weighted else None
    if weighted:
        w[::5] = 0.0  # some tokens never count
    positions = [p for p in positions if p < n] if isinstance(positions, list) else positions
    ex = layer0_stats(W_E, W_pos, sae, positions=positions, token_weights=w, feature_chunk=4, progress=False)
    bf = layer0_stats(W_E, W_pos, sae, positions=positions, token_weights=w, method="brute_force", batch_size=37, progress=False)
    assert ex.path == "exact" and bf.path == "brute_force"
    assert_same_stats(ex, bf)
    # the statistics are not degenerate: features fire at some inputs and not at others
    assert 0.05 < ex.firing_rate.mean() < 0.95
    assert (ex.r2_pos > 0.05).any() and (ex.r2_tok > 0.05).any()


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_exact_matches_brute_force_with_scalar_normalisation(kind):
    V, n, d, F = 60, 9, 8, 15
    W_E, W_pos = make_weights(V, d, n, seed=1)
    sae = make_sae(kind, d, F, seed=2)
    sae.run_time_activation_norm_fn_in = lambda x: 0.37 * x  # a fixed scalar rescaling of every input
    assert input_scale(sae) == pytest.approx(0.37)
    ex = layer0_stats(W_E, W_pos, sae, progress=False)
    bf = layer0_stats(W_E, W_pos, sae, method="brute_force", progress=False)
    assert ex.path == "exact"
    assert_same_stats(ex, bf)
    # and the rescaling matters: the unscaled SAE gives other numbers
    sae.run_time_activation_norm_fn_in = lambda x: x
    other = layer0_stats(W_E, W_pos, sae, progress=False)
    assert (other.mean - ex.mean).abs().max() > 1e-2


def test_expected_average_only_in_is_identity_at_inference_and_exact():
    V, n, d, F = 50, 6, 8, 10
    W_E, W_pos = make_weights(V, d, n, seed=4)
    sae = make_sae("standard", d, F, seed=5, normalize_activations="expected_average_only_in")
    assert input_scale(sae) == 1.0
    ex = layer0_stats(W_E, W_pos, sae, progress=False)
    bf = layer0_stats(W_E, W_pos, sae, method="brute_force", progress=False)
    assert ex.path == "exact"
    assert_same_stats(ex, bf)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "gated"])
def test_exact_matches_brute_force_float32(kind, chunk_path):
    V, n, d, F = 120, 10, 12, 20
    W_E, W_pos = make_weights(V, d, n, seed=6, dtype=torch.float32)
    sae = make_sae(kind, d, F, seed=7, dtype="float32")
    ex = layer0_stats(W_E, W_pos, sae, feature_chunk=6, progress=False)
    bf = layer0_stats(W_E, W_pos, sae, method="brute_force", progress=False)
    assert_same_stats(ex, bf, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "gated", "topk"])
def test_token_means_exact_matches_brute_force(kind):
    V, n, d, F = 70, 8, 8, 16
    W_E, W_pos = make_weights(V, d, n, seed=8)
    kw = {"k": 4} if kind == "topk" else {}
    sae = make_sae(kind, d, F, seed=9, **kw)
    chunks = list(token_feature_means(W_E, W_pos, sae, positions=range(1, 7), token_chunk=16, progress=False))
    bounds = [(s.start, s.stop) for s, _ in chunks]
    assert bounds[0][0] == 0 and bounds[-1][1] == V and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    if kind != "topk":
        assert bounds[:2] == [(0, 16), (16, 32)]
    got = torch.cat([m for _, m in chunks])
    brute = token_feature_mean_matrix(W_E, W_pos, sae, positions=range(1, 7), method="brute_force", batch_size=24, progress=False)
    # reference: the mean over positions 1..6 of sae.encode, input by input
    x = W_E[:, None, :] + W_pos[None, 1:7, :]
    ref = sae.encode(x.reshape(-1, d)).reshape(V, 6, F).mean(1).detach()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(brute, ref, rtol=1e-9, atol=1e-10)
    vals, idx = token_top_features(W_E, W_pos, sae, k=3, positions=range(1, 7), progress=False)
    ref_vals, _ = ref.topk(3, dim=1)
    torch.testing.assert_close(vals, ref_vals, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ref.gather(1, idx), ref_vals, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Hand-built SAEs with known answers
# ----------------------------------------------------------------------------------------------


def hand_built(kind="standard"):
    """Return (W_E, W_pos, SAE) with a positional, a token, an additive mixed and a dead feature.

    Tokens write dims 0-1, positions dims 2-3. Feature 0 reads dim 2 (position only), feature 1
    dim 0 (token only), feature 2 dims 1 + 3 (token + position, never clipped), feature 3 nothing
    with a negative bias (never fires).
    """
    W_E = torch.tensor([[-1.0, 1.0, 0, 0], [2.0, 2.0, 0, 0], [5.0, 3.0, 0, 0]], dtype=torch.float64)
    W_pos = torch.tensor([[0, 0, 0.0, 0.0], [0, 0, 1.0, 0.0], [0, 0, 3.0, 2.0], [0, 0, 2.0, 2.0]], dtype=torch.float64)
    cls, cfg_cls = KINDS[kind]
    cfg = cfg_cls(d_in=4, d_sae=4, dtype="float64", apply_b_dec_to_input=False)
    cfg.metadata.hook_name = LAYER0_HOOK
    sae = cls(cfg)
    with torch.no_grad():
        W = torch.zeros(4, 4, dtype=torch.float64)
        W[2, 0] = 1.0
        W[0, 1] = 1.0
        W[1, 2] = W[3, 2] = 1.0
        sae.W_enc.copy_(W)
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
        sae.b_dec.zero_()
        if kind == "jumprelu":
            sae.threshold.copy_(torch.tensor([0.0, 2.5, 0.0, 0.0]))
    return W_E, W_pos, sae


@pytest.mark.parametrize("method", ["exact", "brute_force"])
def test_hand_built_known_answers(method):
    W_E, W_pos, sae = hand_built()
    st = layer0_stats(W_E, W_pos, sae, method=method, progress=False)
    # feature 0 = W_pos[p, 2] = [0, 1, 3, 2] at every token: purely positional
    torch.testing.assert_close(st.mean[:, 0], torch.tensor([0.0, 1.0, 3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(st.std[:, 0], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(st.firing_rate[:, 0], torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert st.positional_score[0].item() == pytest.approx(3.0)
    assert st.argmax_position[0].item() == 2
    assert st.r2_pos[0].item() == pytest.approx(1.0) and st.r2_tok[0].item() == pytest.approx(0.0, abs=1e-12)
    assert st.feature_var[0].item() == pytest.approx(1.25)  # Var of [0, 1, 3, 2]
    # feature 1 = relu(W_E[t, 0]) = [0, 2, 5] at every position: purely a token feature
    torch.testing.assert_close(st.mean[:, 1], torch.full((4,), 7 / 3, dtype=torch.float64))
    torch.testing.assert_close(st.std[:, 1], torch.full((4,), math.sqrt(38) / 3, dtype=torch.float64))
    torch.testing.assert_close(st.firing_rate[:, 1], torch.full((4,), 2 / 3, dtype=torch.float64))
    torch.testing.assert_close(st.mean_preact[:, 1], torch.full((4,), 2.0, dtype=torch.float64))
    assert st.positional_score[1].item() == pytest.approx(7 / 3)
    assert st.argmax_position[1].item() == 0  # ties go to the first position
    assert st.r2_tok[1].item() == pytest.approx(1.0) and st.r2_pos[1].item() == pytest.approx(0.0, abs=1e-12)
    # feature 2 = W_E[t, 1] + W_pos[p, 3] = [1, 2, 3] + [0, 0, 2, 2]: Var_t = 2/3, Var_p = 1
    assert st.r2_pos[2].item() == pytest.approx(0.6) and st.r2_tok[2].item() == pytest.approx(0.4)
    assert st.positional_score[2].item() == pytest.approx(4.0) and st.argmax_position[2].item() == 2
    # feature 3 never fires: Var(f) = 0, so both shares are defined as 0
    assert st.feature_var[3].item() == 0.0
    assert st.r2_pos[3].item() == 0.0 and st.r2_tok[3].item() == 0.0
    assert st.firing_rate[:, 3].sum().item() == 0.0
    torch.testing.assert_close(st.mean_preact[:, 3], torch.full((4,), -1.0, dtype=torch.float64))
    df = st.feature_frame()
    assert list(df.index) == [0, 1, 2, 3]
    assert df.loc[0, "positional_score"] == pytest.approx(3.0) and df.loc[0, "argmax_position"] == 2
    assert df.loc[1, "r2_tok"] == pytest.approx(1.0)
    assert df.loc[0, "firing_rate"] == pytest.approx(0.75)
    pf = st.position_frame(0)
    assert list(pf.index) == [0, 1, 2, 3] and pf.loc[2, "mean"] == pytest.approx(3.0)


@pytest.mark.parametrize("method", ["exact", "brute_force"])
def test_hand_built_weights_positions_and_jumprelu(method):
    W_E, W_pos, sae = hand_built("jumprelu")
    st = layer0_stats(W_E, W_pos, sae, positions=[3, 1], token_weights=[1.0, 1.0, 2.0], method=method, progress=False)
    assert st.positions.tolist() == [3, 1]
    # feature 0 over positions 3 and 1 only: values 2 and 1
    torch.testing.assert_close(st.mean[:, 0], torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert st.positional_score[0].item() == pytest.approx(2.0) and st.argmax_position[0].item() == 3
    # feature 1 with threshold 2.5: only token 2 (h = 5) fires; it has weight 1/2
    torch.testing.assert_close(st.mean[:, 1], torch.full((2,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(st.firing_rate[:, 1], torch.full((2,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(st.std[:, 1], torch.full((2,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(st.mean_preact[:, 1], torch.full((2,), 2.75, dtype=torch.float64))  # (-1 + 2 + 10) / 4
    assert st.r2_tok[1].item() == pytest.approx(1.0)
    # feature 2: token part [1, 2, 3] weighted [1/4, 1/4, 1/2] (Var 11/16), positional part [2, 0] (Var 1)
    assert st.r2_pos[2].item() == pytest.approx(1 / (1 + 11 / 16))
    assert st.r2_tok[2].item() == pytest.approx((11 / 16) / (1 + 11 / 16))


def test_hand_built_token_means():
    W_E, W_pos, sae = hand_built()
    (ts, m), = list(token_feature_means(W_E, W_pos, sae, progress=False))
    assert (ts.start, ts.stop) == (0, 3)
    expected = torch.tensor(
        [[1.5, 0.0, 2.0, 0.0], [1.5, 2.0, 3.0, 0.0], [1.5, 5.0, 4.0, 0.0]], dtype=torch.float64
    )  # feature 2: token part + mean of [0, 0, 2, 2]
    torch.testing.assert_close(m, expected)
    vals, idx = token_top_features(W_E, W_pos, sae, k=2, progress=False)
    assert idx.tolist() == [[2, 0], [2, 1], [1, 2]]
    torch.testing.assert_close(vals, torch.tensor([[2.0, 1.5], [3.0, 2.0], [5.0, 4.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# TopK through brute force vs a naive per-input loop
# ----------------------------------------------------------------------------------------------


def naive_topk_stats(W_E, W_pos, sae, positions, weights):
    """Return per-(position, feature) mean/std/rate/preact and per-feature R2s from plain Python loops."""
    k = sae.cfg.k
    W, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    V, F, n = W_E.shape[0], W.shape[1], len(positions)
    wts = [float(x) / sum(weights) for x in weights]
    f = [[[0.0] * F for _ in range(n)] for _ in range(V)]
    pre = [[[0.0] * F for _ in range(n)] for _ in range(V)]
    for t in range(V):
        for qi, p in enumerate(positions):
            x = W_E[t] + W_pos[p]
            h = [float(v) for v in (x - b_dec) @ W + b_enc]
            top = sorted(range(F), key=lambda i: -h[i])[:k]
            for i in top:
                f[t][qi][i] = max(h[i], 0.0)
            pre[t][qi] = h
    out = {k_: torch.zeros(n, F, dtype=torch.float64) for k_ in ("mean", "std", "firing_rate", "mean_preact")}
    r2_pos, r2_tok = torch.zeros(F, dtype=torch.float64), torch.zeros(F, dtype=torch.float64)
    for i in range(F):
        m_p = []
        for qi in range(n):
            m = sum(wts[t] * f[t][qi][i] for t in range(V))
            m2 = sum(wts[t] * f[t][qi][i] ** 2 for t in range(V))
            out["mean"][qi, i] = m
            out["std"][qi, i] = math.sqrt(max(m2 - m * m, 0.0))
            out["firing_rate"][qi, i] = sum(wts[t] for t in range(V) if f[t][qi][i] > 0)
            out["mean_preact"][qi, i] = sum(wts[t] * pre[t][qi][i] for t in range(V))
            m_p.append(m)
        mu = sum(m_p) / n
        var = sum(wts[t] * (f[t][qi][i] - mu) ** 2 for t in range(V) for qi in range(n)) / n
        g = [sum(f[t][qi][i] for qi in range(n)) / n for t in range(V)]
        if var > 0:
            r2_pos[i] = sum((m - mu) ** 2 for m in m_p) / n / var
            r2_tok[i] = sum(wts[t] * (g[t] - mu) ** 2 for t in range(V)) / var
    return out, r2_pos, r2_tok


@pytest.mark.parametrize("weighted", [False, True])
def test_topk_brute_force_matches_naive_loop(weighted):
    V, n, d, F = 7, 5, 6, 10
    W_E, W_pos = make_weights(V, d, n, seed=11)
    sae = make_sae("topk", d, F, seed=12, k=3)
    weights = [1.0 + t % 3 for t in range(V)] if weighted else [1.0] * V
    positions = [4, 0, 2]
    st = layer0_stats(W_E, W_pos, sae, positions=positions, token_weights=weights if weighted else None, batch_size=5, progress=False)
    assert st.path == "brute_force"
    out, r2_pos, r2_tok = naive_topk_stats(W_E, W_pos, sae, positions, weights)
    for key, ref in out.items():
        torch.testing.assert_close(getattr(st, key), ref, rtol=1e-9, atol=1e-12, msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(st.r2_pos, r2_pos, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(st.r2_tok, r2_tok, rtol=1e-9, atol=1e-12)
    # at most k features are active per input (fewer where some of the top k pre-activations are <= 0)
    assert (st.l0_by_position() <= 3 + 1e-12).all() and (st.l0_by_position() > 0).all()


# ----------------------------------------------------------------------------------------------
# Method choice
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,cfg_kw,expected",
    [
        ("standard", {}, "exact"),
        ("jumprelu", {}, "exact"),
        ("gated", {}, "exact"),
        ("standard", {"apply_b_dec_to_input": False}, "exact"),
        ("topk", {"k": 2}, "brute_force"),
        ("standard", {"normalize_activations": "layer_norm"}, "brute_force"),
        ("jumprelu", {"normalize_activations": "constant_norm_rescale"}, "brute_force"),
    ],
)
def test_auto_picks_path(kind, cfg_kw, expected):
    V, n, d, F = 12, 4, 6, 5
    W_E, W_pos = make_weights(V, d, n)
    sae = make_sae(kind, d, F, **cfg_kw)
    assert choose_method(sae) == expected
    st = layer0_stats(W_E, W_pos, sae, progress=False)
    assert st.path == expected
    if expected == "brute_force":  # per-input normalisation / TopK: the brute-force numbers are sae.encode's
        x = (W_E[:, None, :] + W_pos[None, :, :]).reshape(-1, d)
        ref = sae.encode(x).reshape(V, n, F).mean(0).detach()
        torch.testing.assert_close(st.mean, ref, rtol=1e-9, atol=1e-12)


def test_hooks_attached_force_brute_force():
    sae = make_sae("standard", 6, 5)
    sae.hook_sae_acts_post.add_hook(lambda x, hook: x * 2)
    assert choose_method(sae) == "brute_force"
    with pytest.raises(ValueError, match="not available.*hooks"):
        choose_method(sae, "exact")


def test_exact_refused_for_topk():
    sae = make_sae("topk", 6, 5, k=2)
    with pytest.raises(ValueError, match="method='exact' is not available.*TopKSAE"):
        layer0_stats(*make_weights(10, 6, 3), sae, method="exact")
    with pytest.raises(ValueError, match="method must be one of"):
        layer0_stats(*make_weights(10, 6, 3), sae, method="fast")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_error_sae_not_at_layer0_resid_pre():
    W_E, W_pos = make_weights(10, 6, 3)
    for hook in ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", None):
        sae = make_sae("standard", 6, 5, hook=hook)
        with pytest.raises(ValueError, match=r"Exact layer-0 statistics \(possae.layer0_stats\) studies layer-0 SAEs.*Pass a layer-0 SAE"):
            layer0_stats(W_E, W_pos, sae)
        with pytest.raises(ValueError, match="studies layer-0 SAEs at 'blocks.0.hook_resid_pre'"):
            token_feature_means(W_E, W_pos, sae)  # validated at the call, not at the first next()


def test_error_d_in_mismatch():
    W_E, W_pos = make_weights(10, 6, 3)
    sae = make_sae("standard", 8, 5)
    with pytest.raises(ValueError, match="SAE d_in is 8 but the model's d_model is 6"):
        layer0_stats(W_E, W_pos, sae)
    with pytest.raises(ValueError, match="W_pos has 7"):
        layer0_stats(W_E, torch.zeros(3, 7, dtype=torch.float64), make_sae("standard", 6, 5))


def test_error_positions_beyond_w_pos():
    W_E, W_pos = make_weights(10, 6, 3)
    sae = make_sae("standard", 6, 5)
    with pytest.raises(ValueError, match=r"position 3 is beyond W_pos, which has 3 rows"):
        layer0_stats(W_E, W_pos, sae, positions=[0, 3])
    with pytest.raises(ValueError, match=">= 0"):
        layer0_stats(W_E, W_pos, sae, positions=[-1, 0])
    with pytest.raises(ValueError, match="duplicates"):
        layer0_stats(W_E, W_pos, sae, positions=[1, 1])


def test_error_bad_token_weights():
    W_E, W_pos = make_weights(10, 6, 3)
    sae = make_sae("standard", 6, 5)
    with pytest.raises(ValueError, match="must be >= 0"):
        layer0_stats(W_E, W_pos, sae, token_weights=[1.0] * 9 + [-0.5])
    with pytest.raises(ValueError, match="has 9 entries but d_vocab is 10"):
        layer0_stats(W_E, W_pos, sae, token_weights=[1.0] * 9)
    with pytest.raises(ValueError, match="sum to 0"):
        layer0_stats(W_E, W_pos, sae, token_weights=[0.0] * 10)
    with pytest.raises(ValueError, match="NaN or inf"):
        layer0_stats(W_E, W_pos, sae, token_weights=[1.0] * 9 + [math.nan])


# ----------------------------------------------------------------------------------------------
# Model entry point: the premise x = W_E[t] + W_pos[p] at blocks.0.hook_resid_pre
# ----------------------------------------------------------------------------------------------


def test_from_model_matches_hook_resid_pre_activations():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=11, n_ctx=5, act_fn="gelu", seed=0, dtype=torch.float64)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.W_pos.normal_()
    sae = make_sae("jumprelu", 8, 12, seed=13)
    st = layer0_stats_from_model(model, sae, progress=False)
    assert st.path == "exact"
    # every token at every position once: sequence b holds token (b + p) % d_vocab at position p
    toks = (torch.arange(11)[:, None] + torch.arange(5)[None, :]) % 11
    _, cache = model.run_with_cache(toks, names_filter=LAYER0_HOOK)
    acts = sae.encode(cache[LAYER0_HOOK]).detach()  # (batch, pos, d_sae)
    torch.testing.assert_close(st.mean, acts.mean(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(st.firing_rate, (acts > 0).double().mean(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("token_block", [1, 7, 300])
def test_firing_entries_in_token_blocks_are_the_dense_ones(token_block):
    """Forming W @ E.T a block of tokens at a time finds exactly the entries above each row's lowest threshold, in row
    order, and counts the thresholds below each (ties included) as searchsorted does."""
    from possae.layer0_stats import firing_entries

    g = torch.Generator().manual_seed(3)
    W, E = torch.randn(9, 8, generator=g), torch.randn(300, 8, generator=g)
    tau = (torch.randint(-8, 3, (9, 13), generator=g).float() / 2).sort(1).values  # many ties
    rows, cols, vals, j = firing_entries(W, E, tau, token_block)
    A = W @ E.T
    assert torch.equal(torch.stack([rows, cols], 1), (A > tau[:, :1]).nonzero())
    torch.testing.assert_close(vals, A[rows, cols])  # a one-token block is a matrix-vector product: rounding may differ
    want = torch.stack([torch.searchsorted(tau[r], v.view(1))[0] for r, v in zip(rows, vals)])
    assert torch.equal(j, want) and j.min() >= 1 and j.max() == 13


def test_exact_features_firing_almost_everywhere_match_brute_force(chunk_path):
    """Features that fire on nearly every input (the histograms' far end) agree with brute force, in feature chunks."""
    from possae.layer0_stats import exact_stats, resolve_token_weights

    V, n, d, F = 300, 11, 8, 14
    W_E, W_pos = make_weights(V, d, n, seed=21)
    sae = make_sae("jumprelu", d, F, seed=22)
    with torch.no_grad():
        sae.b_enc[:4] += 30.0
    w = resolve_token_weights(torch.rand(V, generator=torch.Generator().manual_seed(1)), V)
    ex = exact_stats(W_E, W_pos, sae, w, torch.arange(n), torch.device("cpu"), feature_chunk=5)
    bf = layer0_stats(W_E, W_pos, sae, token_weights=w, method="brute_force", progress=False)
    assert ex.firing_rate[:, :4].min() > 0.9
    assert_same_stats(ex, bf)


def test_benchmark_frame_reads_the_recorded_run(tmp_path):
    import json

    from possae.benchmark_results import LAYER0_BENCHMARK, layer0_benchmark_frame

    recorded = json.loads(LAYER0_BENCHMARK.read_text())
    frame = layer0_benchmark_frame()
    assert len(frame) == len(recorded["sections"])
    cpu = next(s for s in recorded["sections"] if s["device"] == "cpu")  # the CPU row comes first: the chapter cites it
    assert frame.loc[0, "exact (s)"] == cpu["exact_seconds"]
    assert frame.loc[0, "speed-up vs brute force"] == cpu["speedup_vs_brute_force"]
    with pytest.raises(FileNotFoundError, match="bench_layer0_stats.py"):
        layer0_benchmark_frame(tmp_path / "missing.json")


def test_gpu_benchmark_sentence_and_table_from_a_constructed_record(tmp_path):
    import json

    from possae.benchmark_results import layer0_benchmark_frame
    from possae.positional import DASH, bench_table, gpu_bench_sentence

    common = {"brute_force_seconds_subsample": 0.0, "speedup_vs_brute_force": 1.0, "exact_seconds_cold": 1.0,
              "peak_rss_mb": {"exact": 2048.0, "brute_force": 1024.0},
              "brute_vs_exact_max_abs_diff_on_subsample": {"mean": 1e-7}}
    gpu = {**common, "device": "cuda", "device_name": "GPU X", "matmul_seconds": 0.04, "exact_seconds": 0.5,
           "exact_seconds_on_device": 0.07, "brute_force_seconds_extrapolated": 80.0,
           "brute_force_inputs_subsample": 12, "ratio_exact_over_matmul": 12.5,
           "cuda_peak_mb": {"exact": 4096.0, "brute_force": 512.0}}
    cpu = {**common, "device": "cpu", "device_name": "cpu (2 cores)", "matmul_seconds": 10.0, "exact_seconds": 12.0,
           "brute_force_seconds_extrapolated": 9000.0, "brute_force_inputs_subsample": 4, "ratio_exact_over_matmul": 1.2}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"shapes": {"d_vocab": 3, "n_ctx": 4, "d_model": 2, "d_sae": 5}, "inputs_total": 12,
                                "sections": [gpu, cpu]}))
    frame = layer0_benchmark_frame(path)
    assert list(frame["device"]) == ["cpu (2 cores)", "GPU X"]
    assert list(frame["brute force timed on"]) == ["4 inputs, extrapolated", "all inputs"]
    assert list(frame["exact peak memory (GB)"]) == [2.0, 4.0]  # RSS on the CPU, the GPU's allocations on the GPU
    assert bench_table(frame).loc["exact, statistics left on the GPU (s)", "cpu (2 cores)"] == DASH
    assert gpu_bench_sentence(frame) == (
        "On the GPU X, brute force over all inputs took 80.0 s. The exact path took 0.070 s with its statistics left on "
        "the GPU, 1.75 times its matmul (0.040 s), and 0.50 s when they were copied to newly allocated host memory, as "
        "the table's timing does: there the copy, not the computation, is the cost.")
    assert gpu_bench_sentence(frame.iloc[:1]) == "No GPU run of the benchmark is recorded."
