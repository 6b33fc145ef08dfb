"""Tests of possae.semantic: hand-built SAEs with known answers, exact vs sae.encode, token lookup errors."""

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from builders import make_sae, make_weights
from possae.hooks import LAYER0_INPUT as LAYER0_HOOK
from possae.layer0_stats import layer0_stats, layer0_stats_from_model, token_feature_mean_matrix
from possae.hooks import in_context_positions
from possae.semantic import (
    chosen_token_means,
    most_invariant_features,
    pair_profiles,
    position_invariance_frame,
    scores_frame,
    semantic_counts,
    semantic_features,
    single_token_ids,
    sorted_scores_frame,
    token_activation_vs_position,
    token_top_features_frame,
    top_tokens_by_mean,
    variation_over_positions,
)






def hand_built():
    """Return (W_E, W_pos, SAE): tokens write dims 0-1, positions dims 2-3; b_dec is applied to the input.

    Feature 0 reads dim 0 (token only), feature 1 dim 2 (position only), feature 2 dims 1 + 3 (both, never clipped),
    feature 3 reads nothing with a negative bias (dead). b_dec lies in dims 0-3 but only shifts each feature by a
    constant, since W_enc[:, i] . b_dec is the same at every input.
    """
    W_E = torch.tensor([[1.0, 1.0, 0, 0], [2.0, 2.0, 0, 0], [5.0, 3.0, 0, 0], [0.5, 4.0, 0, 0], [3.0, 1.5, 0, 0]],
                       dtype=torch.float64)
    W_pos = torch.tensor([[0, 0, 0.5, 1.0], [0, 0, 1.0, 2.0], [0, 0, 3.0, 2.0], [0, 0, 2.0, 1.0], [0, 0, 4.0, 3.0],
                          [0, 0, 2.5, 2.5]], dtype=torch.float64)
    cfg = StandardSAEConfig(d_in=4, d_sae=4, dtype="float64", apply_b_dec_to_input=True)
    cfg.metadata.hook_name = LAYER0_HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        W = torch.zeros(4, 4, dtype=torch.float64)
        W[0, 0] = 1.0
        W[2, 1] = 1.0
        W[1, 2] = W[3, 2] = 1.0
        sae.W_enc.copy_(W)
        sae.b_dec.copy_(torch.tensor([0.25, 0.0, 0.5, 0.0], dtype=torch.float64))
        sae.b_enc.copy_(torch.tensor([0.25, 0.5, 0.0, -1.0], dtype=torch.float64))
    return W_E, W_pos, sae


def organism_tokenizer():
    """Return the organism's shipped tokenizer (a transformers PreTrainedTokenizerFast)."""
    from possae.organism.recipe import ARTIFACTS
    from possae.tokenizer import load_hf_tokenizer

    folder = ARTIFACTS / "tokenizer"
    if not folder.is_dir():
        pytest.skip(f"the organism's tokenizer is missing from {folder}")
    return load_hf_tokenizer(folder)


# ----------------------------------------------------------------------------------------------
# Hand-built SAE: known answers
# ----------------------------------------------------------------------------------------------


def test_hand_built_token_feature_is_flat_over_positions():
    W_E, W_pos, sae = hand_built()
    V, n = W_E.shape[0], W_pos.shape[0]
    prof = pair_profiles(W_E, W_pos, sae, list(range(V)) * 3, [0] * V + [1] * V + [2] * V)
    # feature 0: relu(W_E[t, 0] - 0.25 + 0.25) = W_E[t, 0] at every position
    torch.testing.assert_close(prof[:, :V], W_E[:, 0].expand(n, V), rtol=0, atol=1e-15)
    # feature 1: relu(W_pos[p, 2] - 0.5 + 0.5) = W_pos[p, 2], whatever the token
    torch.testing.assert_close(prof[:, V : 2 * V], W_pos[:, 2:3].expand(n, V), rtol=0, atol=1e-15)
    # feature 2: W_E[t, 1] + W_pos[p, 3]
    torch.testing.assert_close(prof[:, 2 * V :], W_E[:, 1][None] + W_pos[:, 3:4], rtol=0, atol=1e-15)
    cv = variation_over_positions(prof)
    assert torch.equal(cv[:V], torch.zeros(V, dtype=torch.float64))  # a token-only feature does not vary at all
    p = W_pos[:, 2]
    torch.testing.assert_close(cv[V : 2 * V], (p.std(correction=0) / p.mean()).expand(V))
    assert bool((cv[2 * V :] > 0).all())


def test_hand_built_scores_counts_and_invariance():
    W_E, W_pos, sae = hand_built()
    stats = layer0_stats(W_E, W_pos, sae, positions=range(1, 5), progress=False)
    assert torch.allclose(stats.r2_tok[:2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(stats.r2_pos[:2], torch.tensor([0.0, 1.0], dtype=torch.float64))
    # feature 2 is additive and never clipped: its variance splits into token and position parts exactly
    e1, p3 = W_E[:, 1], W_pos[1:5, 3]
    var_t, var_p = e1.var(correction=0), p3.var(correction=0)
    assert float(stats.r2_tok[2]) == pytest.approx(float(var_t / (var_t + var_p)), rel=1e-12)
    assert float(stats.r2_tok[2]) > 0.5  # token variance 1.05 beats position variance 0.25
    assert semantic_features(stats, 0.5).tolist() == [True, False, True, False]
    assert semantic_features(stats, 0.9).tolist() == [True, False, False, False]
    c = semantic_counts(stats, 0.5)
    assert (c["n_features"], c["n_alive"], c["n_semantic"], c["n_positional"], c["n_both"]) == (4, 3, 2, 1, 0)
    assert c["semantic_share"] == 0.5 and c["semantic_share_alive"] == pytest.approx(2 / 3)
    assert c["n_neither_alive"] == 0
    curve = sorted_scores_frame(stats)
    assert curve.index[0] == 1 and curve["r2_tok"].is_monotonic_decreasing and curve["r2_pos"].is_monotonic_decreasing
    assert scores_frame(stats)["alive"].tolist() == [True, True, True, False]

    frame = position_invariance_frame(W_E, W_pos, sae, stats, n_top_tokens=2, progress=False)
    # top tokens by mean activation: feature 0 by W_E[:, 0] (5, 3, ...), feature 2 by W_E[:, 1] (4, 3, ...)
    assert frame.loc[0, "top_tokens"] == [2, 4] and frame.loc[2, "top_tokens"] == [3, 2]
    assert frame.loc[0, "top_mean"] == pytest.approx(5.0) and frame.loc[0, "cv"] == 0.0
    assert frame.loc[0, "cv_top_n"] == 0.0 and bool(frame.loc[0, "fires_everywhere"])
    assert frame.loc[2, "top_mean"] == pytest.approx(4.0 + float(p3.mean()))
    assert frame.loc[2, "cv"] == pytest.approx(float(p3.std(correction=0) / (4.0 + p3.mean())))
    assert frame.loc[3, "top_mean"] == 0.0 and math.isnan(frame.loc[3, "cv"])  # dead: no cv
    best = most_invariant_features(frame, 0.5)
    assert best.index.tolist() == [0, 2]  # the positional and the dead feature are left out
    assert most_invariant_features(frame, 0.9, n=5).index.tolist() == [0]


def test_token_activation_vs_position_frame():
    W_E, W_pos, sae = hand_built()
    df = token_activation_vs_position(W_E, W_pos, sae, token=3, features=[2, 0])
    assert len(df) == 2 * W_pos.shape[0] and df.token.eq(3).all()
    assert df[df.feature == 0].activation.tolist() == [0.5] * W_pos.shape[0]
    assert df[df.feature == 2].activation.tolist() == pytest.approx((4.0 + W_pos[:, 3]).tolist())
    assert df[df.feature == 2].position.tolist() == list(range(W_pos.shape[0]))


# ----------------------------------------------------------------------------------------------
# Small pure functions
# ----------------------------------------------------------------------------------------------


def test_variation_over_positions_by_hand():
    prof = torch.tensor([[2.0, 1.0, 0.0, 0.0], [2.0, 3.0, 0.0, 4.0]])
    cv = variation_over_positions(prof)
    assert cv[0] == 0.0 and cv[1] == pytest.approx(0.5) and math.isnan(cv[2]) and cv[3] == pytest.approx(1.0)


def test_token_top_features_frame_by_hand():
    means = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]])
    df = token_top_features_frame(means, [7, 9], k=2)
    assert df.token.tolist() == [7, 7, 9, 9] and df["rank"].tolist() == [1, 2, 1, 2]
    assert df.feature.tolist() == [1, 2, 0, 2] and df.mean_activation.tolist() == [3.0, 2.0, 5.0, 4.0]
    with pytest.raises(ValueError, match="2 rows but 3 tokens"):
        token_top_features_frame(means, [1, 2, 3], k=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        token_top_features_frame(means, [7, 9], k=0)


def test_in_context_positions_and_threshold_checks():
    assert in_context_positions(64, 256) == range(1, 64)
    assert in_context_positions(128, 128, first=0) == range(0, 128)
    with pytest.raises(ValueError, match="context_size"):
        in_context_positions(300, 256)
    with pytest.raises(ValueError, match="first"):
        in_context_positions(1, 256)  # no position besides BOS's
    W_E, W_pos, sae = hand_built()
    stats = layer0_stats(W_E, W_pos, sae, progress=False)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="share of variance"):
            semantic_features(stats, bad)


def test_pair_profiles_bad_input():
    W_E, W_pos, sae = hand_built()
    with pytest.raises(ValueError, match="pair up"):
        pair_profiles(W_E, W_pos, sae, [0, 1], [0])
    with pytest.raises(ValueError, match="feature ids"):
        pair_profiles(W_E, W_pos, sae, [0], [4])
    with pytest.raises(ValueError, match="token ids"):
        pair_profiles(W_E, W_pos, sae, [5], [0])
    with pytest.raises(ValueError, match="beyond W_pos"):
        pair_profiles(W_E, W_pos, sae, [0], [0], positions=[6])


# ----------------------------------------------------------------------------------------------
# Exact == sae.encode
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_pair_profiles_match_encode(kind):
    V, n, d, F = 40, 9, 8, 14
    W_E, W_pos = make_weights(V, d, n, seed=1)
    sae = make_sae(kind, d, F, seed=2, **({"k": 4} if kind == "topk" else {}))
    g = torch.Generator().manual_seed(3)
    tokens, features = torch.randint(V, (60,), generator=g), torch.randint(F, (60,), generator=g)
    pos = [7, 1, 3, 4]
    got = pair_profiles(W_E, W_pos, sae, tokens, features, positions=pos, pair_chunk=16, batch_size=10)
    acts = sae.encode(W_E[tokens][:, None, :] + W_pos[pos][None]).detach()  # (60, n_pos, F)
    ref = acts[torch.arange(60), :, features].T
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert 0.1 < (ref > 0).double().mean() < 0.95  # not degenerate
    if kind != "topk":  # and the exact path agrees with the brute-force path
        bf = pair_profiles(W_E, W_pos, sae, tokens, features, positions=pos, method="brute_force", batch_size=10)
        torch.testing.assert_close(got, bf, rtol=1e-12, atol=1e-12)


def test_pair_profiles_on_a_tiny_model_match_the_hook():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=11, n_ctx=5,
                                  act_fn="gelu", seed=0, dtype=torch.float64)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.W_pos.normal_()
    sae = make_sae("jumprelu", 8, 12, seed=13)
    toks = (torch.arange(11)[:, None] + torch.arange(5)[None, :]) % 11  # every token at every position once
    _, cache = model.run_with_cache(toks, names_filter=LAYER0_HOOK)
    acts = sae.encode(cache[LAYER0_HOOK]).detach()  # (batch, pos, d_sae)
    t, f = 6, 9
    got = pair_profiles(model.W_E, model.W_pos, sae, [t], [f])[:, 0]
    b = (t - torch.arange(5)) % 11  # the sequence holding token t at position p
    torch.testing.assert_close(got, acts[b, torch.arange(5), f], rtol=1e-12, atol=1e-12)
    # the chosen-token means are the means over positions of the hook's activations on that token
    means = chosen_token_means(model.W_E, model.W_pos, sae, [t, 2], positions=range(1, 5))
    for row, tok in enumerate((t, 2)):
        b = (tok - torch.arange(1, 5)) % 11
        torch.testing.assert_close(means[row], acts[b, torch.arange(1, 5)].mean(0), rtol=1e-12, atol=1e-12)
    stats = layer0_stats_from_model(model, sae, positions=range(1, 5), progress=False)
    frame = position_invariance_frame(model.W_E, model.W_pos, sae, stats, n_top_tokens=3, progress=False)
    # the top token's mean is the mean of its profile, and the cv its std / mean over the same positions
    for i in range(12):
        row = frame.loc[i]
        prof = acts[(row.top_token - torch.arange(1, 5)) % 11, torch.arange(1, 5), i]
        assert row.top_mean == pytest.approx(float(prof.mean()), abs=1e-12)
        if prof.mean() > 0:
            assert row.cv == pytest.approx(float(prof.std(correction=0) / prof.mean()), rel=1e-9)
            assert bool(row.fires_everywhere) == bool((prof > 0).all())


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_top_tokens_by_mean_matches_full_matrix(kind):
    V, n, d, F = 70, 8, 8, 16
    W_E, W_pos = make_weights(V, d, n, seed=8)
    sae = make_sae(kind, d, F, seed=9, **({"k": 5} if kind == "topk" else {}))
    vals, toks = top_tokens_by_mean(W_E, W_pos, sae, k=4, positions=range(1, 7), token_chunk=16, progress=False)
    full = token_feature_mean_matrix(W_E, W_pos, sae, positions=range(1, 7), method="brute_force", progress=False)
    ref_vals, _ = full.topk(4, dim=0)
    torch.testing.assert_close(vals, ref_vals.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.T.gather(1, toks), ref_vals.T, rtol=1e-12, atol=1e-12)
    assert (vals[:, 0] > 0).sum() >= F // 2  # most features fire on some token
    chosen = chosen_token_means(W_E, W_pos, sae, [5, 0, 69], positions=range(1, 7))
    torch.testing.assert_close(chosen, full[[5, 0, 69]], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Token lookup
# ----------------------------------------------------------------------------------------------


def test_single_token_ids_on_the_organism_tokenizer():
    tok = organism_tokenizer()
    ids = single_token_ids(tok, [" the", " and", "."], d_vocab=8192)
    assert ids == [tok.convert_tokens_to_ids(tok.tokenize(s))[0] for s in (" the", " and", ".")]
    assert [tok.decode([i]) for i in ids] == [" the", " and", "."]
    # the `tokenizers` backend gives the same ids
    assert single_token_ids(tok.backend_tokenizer, [" the", " and", "."]) == ids


def test_single_token_ids_errors():
    tok = organism_tokenizer()
    with pytest.raises(ValueError, match=r"' hello world' is not a single token.*3 tokens"):
        single_token_ids(tok, [" the", " hello world"])
    # a word that is one token only with its leading space: the error says so
    word = next(w[1:] for w in (tok.decode([i]) for i in range(len(tok)))
                if w.startswith(" ") and w[1:].isalpha() and len(tok(w[1:], add_special_tokens=False)["input_ids"]) > 1)
    with pytest.raises(ValueError, match=f"'{word}' is not a single token.*' {word}', with a leading space"):
        single_token_ids(tok, [word])
    with pytest.raises(ValueError, match="list of token strings"):
        single_token_ids(tok, " the")
    with pytest.raises(ValueError, match="non-empty"):
        single_token_ids(tok, [""])
    with pytest.raises(ValueError, match="at least one"):
        single_token_ids(tok, [])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        single_token_ids(tok, [" said"], d_vocab=100)
    with pytest.raises(ValueError, match="no tokenizer"):
        single_token_ids(None, [" the"])


# ----------------------------------------------------------------------------------------------
# Figures (smoke: they build from the frames the chapter passes)
# ----------------------------------------------------------------------------------------------


def test_figures_build():
    import plotly.graph_objects as go

    from possae.figures.semantic import (
        invariant_profiles_figure,
        score_curve_figure,
        token_profiles_figure,
        variation_figure,
    )

    W_E, W_pos, sae = hand_built()
    stats = layer0_stats(W_E, W_pos, sae, positions=range(1, 5), progress=False)
    fig = score_curve_figure(sorted_scores_frame(stats), scores_frame(stats), 0.5, max_points=3)
    assert isinstance(fig, go.Figure) and list(fig.data[0].x) == [1, 3, 4]  # every 2nd rank, and the last
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert sum(map(sum, heat.customdata)) == 3  # the three live features, binned
    prof = pd_concat([token_activation_vs_position(W_E, W_pos, sae, t, [0, 2]) for t in (1, 3, 4)])
    fig = token_profiles_figure(prof, {1: "one", 3: "three"}, context_size=5)
    assert len(fig.data) == 6 and fig.layout.annotations[0].text == "one"
    frame = position_invariance_frame(W_E, W_pos, sae, stats, n_top_tokens=2, progress=False)
    names = [t.name for t in variation_figure(frame, 0.5).data]  # features 0, 2 semantic; 1 positional; 3 dead
    assert names == ["semantic (R²_tok ≥ 0.5): 2", "other: 1"]
    assert len(invariant_profiles_figure(prof[prof.token == 1], {0: "f0"}, 5).data) == 2


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)
