"""Tests of possae.matching: permuted and orthogonal dictionaries, chunked top-k cosines against a dense reference,
Hungarian matching, containment of a small dictionary in a large one, normalisation and sign, group resolution."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from possae.matching import (
    Dictionary,
    all_pairs,
    as_ref,
    best_match_stats,
    column_potentials,
    containment,
    cosine_matrix,
    default_groups,
    dictionary_from_sae,
    hungarian_match,
    layer_matrix,
    match_pair,
    match_pairs,
    one_to_one_match,
    random_directions,
    resolve_ids,
    resolve_pairs,
    sparse_match,
    top_cosines,
    top_cosines_long,
    unit_rows,
    width_pairs,
)


def dictionary(label, dec, enc=None, hook="blocks.2.hook_resid_pre"):
    """Return a Dictionary from raw rows (normalised here)."""
    return Dictionary(label, "test", label, hook, "standard", unit_rows(dec), unit_rows(dec if enc is None else enc))


def test_permuted_copy_matches_fully_and_hungarian_recovers_permutation():
    a = torch.randn(300, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    b = a[perm] * torch.rand(300, 1, generator=torch.Generator().manual_seed(2)).add(0.1)  # rescaled rows
    top = top_cosines(a, b, k=4, chunk_size=64, device="cpu")
    assert torch.allclose(top.best("ab"), torch.ones(300), atol=1e-5)
    inverse = torch.argsort(perm)
    assert torch.equal(top.a_indices[:, 0], inverse)  # a's row i sits at b's row inverse[i]
    assert torch.equal(top.b_indices[:, 0], perm)
    stats = best_match_stats(top, 0.7)
    assert stats["share_ab"] == stats["share_ba"] == 1.0
    assert stats["mmcs"] == pytest.approx(1.0, abs=1e-5)
    m = hungarian_match(a, b, chunk_size=100, device="cpu")
    assert np.array_equal(m.rows, np.arange(300))
    assert np.array_equal(m.cols, inverse.numpy())
    assert np.allclose(m.cosines, 1.0, atol=1e-5)


def test_orthogonal_dictionaries_match_nothing():
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))
    a, b = dictionary("a", q[:32]), dictionary("b", q[32:])
    row, top = match_pair(a, b, threshold=0.7, chunk_size=5, device="cpu")
    assert row["dec_share_ab"] == row["dec_share_ba"] == row["enc_share"] == row["hungarian_share"] == 0.0
    assert abs(row["dec_mmcs"]) < 1e-5 and abs(row["hungarian_mean"]) < 1e-5
    assert top.a_values.abs().max() < 1e-5


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1000])
def test_chunked_topk_equals_dense_reference(chunk_size):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(50, 16, generator=g), torch.randn(37, 16, generator=g)
    top = top_cosines(a, b, k=4, chunk_size=chunk_size, device="cpu")
    dense = unit_rows(a) @ unit_rows(b).T
    va, ia = dense.topk(4, dim=1)
    vb, ib = dense.T.topk(4, dim=1)
    assert torch.allclose(top.a_values, va, atol=1e-6) and torch.equal(top.a_indices, ia)
    assert torch.allclose(top.b_values, vb, atol=1e-6) and torch.equal(top.b_indices, ib)
    full = cosine_matrix(a, b, chunk_size=chunk_size, device="cpu")
    assert full.dtype == np.float64 and np.allclose(full, dense.numpy(), atol=1e-6)


def test_k_larger_than_the_other_dictionary_is_clipped():
    g = torch.Generator().manual_seed(5)
    top = top_cosines(torch.randn(10, 8, generator=g), torch.randn(3, 8, generator=g), k=4, chunk_size=4, device="cpu")
    assert top.a_values.shape == (10, 3) and top.b_values.shape == (3, 4)
    assert (top.a_values[:, :-1] >= top.a_values[:, 1:]).all()  # descending


def test_hungarian_matches_brute_force_on_a_small_rectangular_problem():
    from itertools import permutations

    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(4, 5, generator=g), torch.randn(6, 5, generator=g)
    cos = (unit_rows(a) @ unit_rows(b).T).numpy()
    best = max(sum(cos[i, p[i]] for i in range(4)) for p in permutations(range(6), 4))
    m = hungarian_match(a, b, device="cpu")
    assert len(m.rows) == 4 and m.cosines.sum() == pytest.approx(best, abs=1e-6)
    m2 = hungarian_match(b, a, device="cpu")  # the larger dictionary first: rows are b's features, sorted
    assert np.all(np.diff(m2.rows) > 0) and m2.cosines.sum() == pytest.approx(best, abs=1e-6)
    assert np.allclose(m2.cosines, cos.T[m2.rows, m2.cols], atol=1e-6)


def test_containment_of_a_small_dictionary_in_a_large_one():
    g = torch.Generator().manual_seed(7)
    large = unit_rows(torch.randn(400, 64, generator=g))
    small = large[torch.randperm(400, generator=g)[:100]] + 0.05 * torch.randn(100, 64, generator=g) / 8
    dicts = {"small": dictionary("small", small), "large": dictionary("large", large)}
    pairs = width_pairs(dicts, ["large", "small"])
    assert pairs == [("small", "large")]
    res = match_pairs(pairs, dicts, threshold=0.7, chunk_size=33, device="cpu", progress=False)
    c = containment(res.table).iloc[0]
    assert c["small in large"] == 1.0
    # each large feature either is one of the 100 copied ones or is random (|cos| << 0.7 in 64 dims)
    assert c["large in small"] == pytest.approx(100 / 400)
    assert c["Hungarian share"] == 1.0  # one-to-one: all 100 small features keep their partner
    # the same table with the pair given the other way round reads the same
    flipped = containment(match_pairs([("large", "small")], dicts, chunk_size=50, device="cpu", progress=False).table)
    assert flipped.iloc[0]["small in large"] == 1.0 and flipped.iloc[0]["large in small"] == pytest.approx(0.25)


def test_decoder_rows_are_normalised_and_sign_matters():
    g = torch.Generator().manual_seed(8)
    cfg = StandardSAEConfig(d_in=16, d_sae=48)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(48, 16, generator=g) * torch.linspace(0.01, 10, 48)[:, None])
        sae.W_enc.copy_(torch.randn(16, 48, generator=g) * 3)
    d = dictionary_from_sae(sae, "x")
    assert torch.allclose(d.decoder.norm(dim=1), torch.ones(48), atol=1e-6)
    assert torch.allclose(d.encoder.norm(dim=1), torch.ones(48), atol=1e-6)
    assert torch.allclose(d.encoder, unit_rows(sae.W_enc.T))
    # a scaled copy matches fully; a negated copy (every feature reads the opposite direction) matches nothing
    same = best_match_stats(top_cosines(sae.W_dec, 7.0 * sae.W_dec, device="cpu"), 0.7)
    neg = best_match_stats(top_cosines(sae.W_dec, -sae.W_dec, device="cpu"), 0.7)
    assert same["share"] == 1.0 and neg["share_ab"] < 0.1
    # zero rows (e.g. a pruned feature) stay zero and match nothing instead of producing NaN
    z = torch.zeros(2, 16)
    top = top_cosines(torch.cat([z, sae.W_dec]), sae.W_dec, device="cpu")
    assert torch.isfinite(top.a_values).all() and (top.best("ab")[:2] == 0).all()


def test_match_pair_on_saes_encoder_and_decoder_differ():
    torch.manual_seed(9)
    a = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4))
    b = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[torch.randperm(32)])  # same decoder, fresh encoder
        b.W_enc.copy_(torch.randn(16, 32))
    row, _ = match_pair(dictionary_from_sae(a, "a"), dictionary_from_sae(b, "b"), device="cpu")
    assert row["dec_share"] == 1.0 and row["hungarian_share"] == 1.0
    assert row["enc_share"] < 0.5
    with pytest.raises(ValueError, match="same space"):
        match_pair(dictionary("p", torch.randn(4, 8)), dictionary("q", torch.randn(4, 9)), device="cpu")


def test_hungarian_limit_and_best_match_overstates():
    # b holds two copies of one of a's directions: best match says both of a's... features found; one-to-one cannot
    e = torch.eye(8)
    a = dictionary("a", e[:2])
    b = dictionary("b", torch.stack([e[0], e[0] + 0.01 * e[5]]))
    row, _ = match_pair(a, b, device="cpu")
    assert row["dec_share_ba"] == 1.0 and row["dec_share_ab"] == 0.5 and row["hungarian_share"] == 0.5
    row, _ = match_pair(a, b, device="cpu", hungarian_max_features=1)
    assert np.isnan(row["hungarian_mean"])


def test_layer_matrix_is_square_with_unit_diagonal_and_reads_resid_post_as_next_layer():
    g = torch.Generator().manual_seed(10)
    base = torch.randn(20, 12, generator=g)
    dicts = {f"L{i}": dictionary(f"L{i}", base + i * 0.3 * torch.randn(20, 12, generator=g),
                                 hook=f"blocks.{i}.hook_resid_pre") for i in range(3)}
    dicts["post"] = dictionary("post", base, hook="blocks.2.hook_resid_post")
    assert dicts["post"].layer == 3
    m = layer_matrix(dicts, ["L0", "L1", "L2"], device="cpu", progress=False)
    assert len(m) == 9 and (m[m["layer_a"] == m["layer_b"]]["share"] == 1.0).all()
    adj = layer_matrix(dicts, ["L0", "L1", "L2"], device="cpu", adjacent_only=True, progress=False)
    assert len(adj) == 3 + 4
    # the adjacent pairs' top cosines from match_pairs (k > 1) stand in for its own pass, with the same figures
    tops = match_pairs([("L0", "L1"), ("L1", "L2")], dicts, k=4, device="cpu", progress=False).top
    pd.testing.assert_frame_equal(layer_matrix(dicts, ["L0", "L1", "L2"], device="cpu", progress=False, tops=tops), m)
    pair = m[(m["layer_a"] == 0) & (m["layer_b"] == 2)].iloc[0]
    dense = (dicts["L0"].decoder @ dicts["L2"].decoder.T).max(dim=1).values
    assert pair["mmcs"] == pytest.approx(float(dense.mean()), abs=1e-6)


def test_top_cosines_long_has_one_row_per_feature_and_rank():
    g = torch.Generator().manual_seed(11)
    dicts = {"a": dictionary("a", torch.randn(10, 8, generator=g)), "b": dictionary("b", torch.randn(6, 8, generator=g))}
    res = match_pairs([("a", "b")], dicts, device="cpu", progress=False)
    long = top_cosines_long(res.top)
    assert len(long) == 10 * 4 and set(long["rank"]) == {1, 2, 3, 4}
    assert len(top_cosines_long(res.top, "ba")) == 6 * 4
    first = long[long["rank"] == 1]["cosine"].to_numpy()
    assert np.allclose(first, res.top[("a", "b")].best("ab").numpy())


def test_random_baseline_is_far_below_threshold():
    a, b = random_directions(512, 128, seed=0), random_directions(512, 128, seed=1)
    s = best_match_stats(top_cosines(a, b, device="cpu"), 0.7)
    assert s["share"] == 0.0 and 0.15 < s["mmcs"] < 0.45


def test_group_resolution_drops_missing_saes_and_rejects_bad_entries(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, the registry alone decides
    assert as_ref("x", "organism") == ("organism", "x") and as_ref(("r", "y"), "organism") == ("r", "y")
    with pytest.raises(ValueError):
        as_ref(("a", "b", "c"), "organism")
    assert resolve_ids(["no-such-sae", ("organism", "also-missing")], "organism") == []
    assert resolve_pairs([("no-such-sae", "relu-short")], "organism") == []
    assert resolve_ids(None, "organism") == []
    # a sae_lens release: ids come from its registry (no download needed to decide)
    ok = resolve_ids(["blocks.8.hook_resid_pre", "blocks.99.hook_resid_pre"], "gpt2-small-res-jb")
    assert ok == [("gpt2-small-res-jb", "blocks.8.hook_resid_pre")]
    gpt2 = default_groups("gpt2-small-res-jb")
    assert gpt2["dataset_ids"] == [] and len(resolve_ids(gpt2["width_ids"], "gpt2-small-res-jb")) == 4
    assert len(resolve_ids(gpt2["layer_ids"]["ReLU (jb)"], "gpt2-small-res-jb")) == 12
    assert len(resolve_ids(gpt2["architecture_ids"], "gpt2-small-res-jb")) == 2
    assert default_groups("some/other")["width_ids"] == []


def test_offline_resolution_keeps_only_saes_in_the_hub_cache(monkeypatch, tmp_path):
    """Offline, a registry SAE the hub cache lacks cannot load, so it is dropped like an unknown id."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()["gpt2-small-res-jb"]
    snap = tmp_path / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / "abc"
    (snap / entry.saes_map["blocks.3.hook_resid_pre"]).mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = [f"blocks.{i}.hook_resid_pre" for i in (2, 3)]
    assert resolve_ids(ids, "gpt2-small-res-jb") == [("gpt2-small-res-jb", "blocks.3.hook_resid_pre")]
    assert resolve_ids(default_groups("gpt2-small-res-jb")["width_ids"], "gpt2-small-res-jb") == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert len(resolve_ids(ids, "gpt2-small-res-jb")) == 2


def test_local_folder_release(tmp_path):
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(tmp_path / "one")
    assert resolve_ids(["one", "two"], str(tmp_path)) == [(str(tmp_path), "one")]


def test_hungarian_never_exceeds_best_match_of_the_smaller_dictionary():
    g = torch.Generator().manual_seed(12)
    shared = torch.randn(40, 10, generator=g)
    for n_a, n_b in [(60, 60), (45, 90), (90, 45)]:
        a = torch.cat([shared, torch.randn(n_a - 40, 10, generator=g)])
        b = torch.cat([shared + 0.3 * torch.randn(40, 10, generator=g), torch.randn(n_b - 40, 10, generator=g)])
        row, _ = match_pair(dictionary("a", a), dictionary("b", b), threshold=0.7, device="cpu")
        assert 0 < row["hungarian_share"] <= row["dec_share_small"] + 1e-12
        assert row["dec_share_small"] == (row["dec_share"] if n_a == n_b else
                                          row["dec_share_ab"] if n_a < n_b else row["dec_share_ba"])


def test_figures_build():
    from possae.figures.matching import comparison_figure, layer_heatmap_figure, top_cosine_figure

    g = torch.Generator().manual_seed(13)
    dicts = {f"L{i}": dictionary(f"L{i}", torch.randn(30, 8, generator=g), hook=f"blocks.{i}.hook_resid_pre")
             for i in range(3)}
    res = match_pairs(all_pairs(list(dicts)), dicts, device="cpu", progress=False)
    fig = top_cosine_figure(top_cosines_long(res.top))
    assert len(fig.data) == 3 * 4  # pairs x ranks
    m = layer_matrix(dicts, list(dicts), device="cpu", progress=False).assign(family="F")
    heat = layer_heatmap_figure(m)
    assert heat.data[0].z.shape == (3, 3) and np.allclose(np.diag(heat.data[0].z), 1.0)
    comp = comparison_figure(res.table.assign(comparison="datasets"), 0.7, {"datasets": (0.06, 0.3)})
    assert len(comp.data) == 2 and len(comp.layout.shapes) == 1


# ---------------------------------------------------------------- the chapter's result (issue 13)

from pathlib import Path  # noqa: E402

from possae.book import chapter_parameters  # noqa: E402
from possae.glued import check_prose_values  # noqa: E402
from possae.matching import (  # noqa: E402
    MatchingParams,
    analyze,
    architecture_frame,
    architecture_sentence,
    block_changes,
    dictionary_from_sae,
    live_pair_frame,
)
from possae.params import ParameterError  # noqa: E402


def test_params_are_the_chapter_cell_and_reject_bad_values():
    assert set(MatchingParams.names()) == chapter_parameters(Path("chapters/matching.py"))
    assert "model_name" not in MatchingParams.names()  # read by no one: removed
    with pytest.raises(ParameterError, match="no parameter"):
        MatchingParams.from_mapping({"model_name": "organism"})
    with pytest.raises(ParameterError, match="threshold"):
        MatchingParams.from_mapping({"threshold": "high"})
    with pytest.raises(ParameterError, match="threshold"):
        MatchingParams(threshold=1.5)
    with pytest.raises(ParameterError, match="chunk_size"):
        MatchingParams(chunk_size=0)
    p = MatchingParams.from_mapping({"seed_pairs": [["a", "b"]], "layer_ids": {"F": ["x", "y"]}})
    assert p.seed_pairs == (["a", "b"],) and p.layer_ids == {"F": ["x", "y"]}


def tiny_model(n_layers=2, d_model=16, zero_blocks=False):
    """Return a tiny random attention+MLP HookedTransformer (blocks writing nothing when zero_blocks)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_ctx=8, d_head=4, n_heads=2, d_mlp=32,
                                  d_vocab=20, act_fn="relu", normalization_type=None, device="cpu")
    model = HookedTransformer(cfg)
    if zero_blocks:
        with torch.no_grad():
            for block in model.blocks:
                for name in ("W_O", "b_O"):
                    getattr(block.attn, name).zero_()
                block.mlp.W_out.zero_()
                block.mlp.b_out.zero_()
    return model


def test_block_changes_identity_blocks_and_agrees_with_a_dense_computation():
    tokens = torch.randint(0, 20, (6, 8), generator=torch.Generator().manual_seed(1))
    same = block_changes(tiny_model(zero_blocks=True), tokens, [0, 1], batch_size=4)
    assert np.allclose(same["cos"], 1.0, atol=1e-5) and np.allclose(same["ratio"], 0.0, atol=1e-6)
    assert np.allclose(same["explained_variance"], 1.0, atol=1e-6)
    model = tiny_model()
    got = block_changes(model, tokens, [0, 1], batch_size=4).set_index("block")
    _, cache = model.run_with_cache(tokens)
    for L, out in [(0, "blocks.1.hook_resid_pre"), (1, "blocks.1.hook_resid_post")]:
        x, y = cache[f"blocks.{L}.hook_resid_pre"][:, 1:].reshape(-1, 16), cache[out][:, 1:].reshape(-1, 16)
        ev = 1 - ((y - x) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert got.loc[L, "explained_variance"] == pytest.approx(float(ev), abs=1e-5)
        assert got.loc[L, "cos"] == pytest.approx(float(torch.cosine_similarity(x, y, dim=1).mean()), abs=1e-5)
        assert got.loc[L, "ratio"] == pytest.approx(float(((y - x).norm(dim=1) / x.norm(dim=1)).median()), abs=1e-5)


def half_dead(label, live_dirs, dead_dec, dead_enc, hook="blocks.1.hook_resid_pre"):
    """Return a Dictionary whose first features fire (encoder = decoder) and whose others never do."""
    d = dictionary(label, torch.cat([live_dirs, dead_dec]), torch.cat([live_dirs, dead_enc]), hook=hook)
    d.decoder_norm = torch.cat([torch.ones(len(live_dirs)), torch.full((len(dead_dec),), 0.05)])
    d.firing = torch.cat([torch.full((len(live_dirs),), 0.1), torch.zeros(len(dead_dec))])
    return d


def test_silent_features_explain_a_near_zero_encoder_and_decoder_share():
    """The JumpReLU finding: most features never fire, their encoders are orthogonal to their decoders."""
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(20)))
    live = q[:4]
    full = dictionary("full", q[:16])
    full.firing, full.decoder_norm = torch.full((16,), 0.2), torch.ones(16)
    jr = half_dead("jr", live, q[16:28], q[40:52])  # 4 of 16 fire; silent ones: encoder orthogonal to decoder
    frame = architecture_frame({"full": full, "jr": jr}, ["full", "jr"]).set_index("SAE")
    assert frame.loc["jr", "n_live"] == 4 and frame.loc["jr", "live_share"] == 0.25
    # L0 on held-out text is the sum of the features' firing shares: 16 x 0.2 and 4 x 0.1
    assert frame.loc["full", "l0"] == pytest.approx(3.2) and frame.loc["jr", "l0"] == pytest.approx(0.4)
    assert frame.loc["jr", "cos_live"] == pytest.approx(1.0) and frame.loc["jr", "cos_dead"] == pytest.approx(0.0, abs=1e-6)
    assert frame.loc["jr", "norm_dead"] == pytest.approx(0.05) and np.isnan(frame.loc["full", "cos_dead"])
    live_frame = live_pair_frame([("full", "jr")], {"full": full, "jr": jr}, device="cpu").iloc[0]
    matched = match_pairs([("full", "jr")], {"full": full, "jr": jr}, device="cpu", progress=False).table
    pd.testing.assert_series_equal(live_pair_frame([("full", "jr")], {"full": full, "jr": jr}, device="cpu",
                                                   matched=matched).iloc[0], live_frame)  # its shares, read not redone
    # over all features: 4 of 16 match each way; over firing features only: all of jr's 4, 4 of full's 16
    assert live_frame["dec_all"] == pytest.approx(0.25) and live_frame["enc_all"] == pytest.approx(0.25)
    assert live_frame["dec_live"] == pytest.approx((1.0 + 0.25) / 2)
    text = architecture_sentence(frame.reset_index(), live_pair_frame([("full", "jr")], {"full": full, "jr": jr},
                                                                     device="cpu"), "test")
    assert "Only 4 of the 16 features of jr (25.0%)" in text and "nan" not in text.lower()


def save_sae(folder, name, dec, enc, hook):
    """Save a standard sae_lens SAE with these decoder rows and encoder columns under folder/name."""
    sae = StandardSAE(StandardSAEConfig(d_in=dec.shape[1], d_sae=dec.shape[0]))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.context_size = 8
    with torch.no_grad():
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(enc.T)
    sae.save_model(folder / name)
    return sae


def test_analyze_layer0_control_and_skipped_sections(tmp_path):
    """The layer-0 finding: nothing matches across block 0 while the positive control at layer 0 matches fully; the
    sections without SAEs say so; no prose value or table cell is NaN and no table is wider than 7 columns."""
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(21)))
    g = torch.Generator().manual_seed(22)
    perm = torch.randperm(8, generator=g)
    saes = {"L0a": save_sae(tmp_path, "L0a", q[:8], q[:8], "blocks.0.hook_resid_pre"),
            "L0b": save_sae(tmp_path, "L0b", q[:8][perm] * 3, q[:8][perm], "blocks.0.hook_resid_pre"),
            "L1": save_sae(tmp_path, "L1", q[8:], q[8:], "blocks.1.hook_resid_pre"),
            "A1": save_sae(tmp_path, "A1", q[8:], q[8:], "blocks.1.hook_resid_pre")}
    params = MatchingParams(sae_release=str(tmp_path), sae_id="L0a", dataset_ids=[], seed_pairs=[], width_ids=[],
                            k_ids=[], architecture_ids=["L1", "A1"], layer_ids={"F": ["L0a", "L1"]},
                            control_pairs=[["L0a", "L0b"]], device="cpu", chunk_size=3)
    dicts = {k: dictionary_from_sae(s, k, str(tmp_path), k) for k, s in saes.items()}
    for k in ("L1", "A1"):
        dicts[k].firing = torch.full((8,), 0.5)
    tokens = torch.randint(0, 20, (4, 8), generator=g)
    res = analyze(tiny_model(), dicts, tokens, params)
    adj = res.frames["adjacent"].iloc[0]
    assert adj["layers"] == "0→1" and adj["dec_share"] == 0.0 and adj["hungarian_share"] == 0.0
    ctrl = res.frames["controls"].iloc[0]
    assert ctrl["dec_share"] == 1.0 and ctrl["hungarian_share"] == 1.0 and ctrl["layer"] == 0
    values = res.glued()
    check_prose_values(values)
    assert "property of the stream" in values["match_layers_sentence"]
    assert "Across block 0" in values["match_layers_sentence"]
    assert values["match_architectures_sentence"].startswith("Across architectures, 100.0%")
    for name in ("datasets", "seeds", "widths", "k"):
        assert "skipped" in values[f"match_{name}_sentence"] and name not in res.tables
    assert res.frames["blocks"]["block"].tolist() == [0]
    for name, t in res.tables.items():
        assert t.shape[1] <= 7, name
        assert not t.isna().any().any() and "nan" not in t.astype(str).to_string().lower(), name
    assert "—" in res.tables["overview"]["study (best match)"].tolist()  # layers have no study range
    assert res.frames["architecture_info"]["SAE"].tolist() == ["L1", "A1"]


def test_analyze_with_one_architecture_glues_no_share(tmp_path):
    """The finding: on the gpt2 stand-in the architectures group held one SAE (the others are not in the cache), so it
    had no pair, and the architectures' info frame, filed under the comparison's own name, broke glued() (KeyError
    'dec_share_small')."""
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(23)))
    saes = {"B": save_sae(tmp_path, "B", q[:8], q[:8], "blocks.0.hook_resid_pre"),
            "C": save_sae(tmp_path, "C", q[8:], q[8:], "blocks.0.hook_resid_pre")}
    params = MatchingParams(sae_release=str(tmp_path), sae_id="B", dataset_ids=[], seed_pairs=[["B", "C"]],
                            width_ids=[], k_ids=[], architecture_ids=["B"], layer_ids={}, control_pairs=[],
                            device="cpu", chunk_size=3)
    dicts = {k: dictionary_from_sae(s, k, str(tmp_path), k) for k, s in saes.items()}
    dicts["B"].firing = torch.full((8,), 0.5)
    tokens = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(24))
    values = analyze(tiny_model(), dicts, tokens, params).glued()
    check_prose_values(values)
    assert values["match_seeds_mean"] == 0.0 and "match_architectures_mean" not in values


def test_figure_legends_stay_clear_of_the_subplot_titles():
    from possae.figures.matching import comparison_figure, top_cosine_figure

    g = torch.Generator().manual_seed(23)
    dicts = {f"D{i}": dictionary(f"D{i}", torch.randn(30, 8, generator=g)) for i in range(3)}
    res = match_pairs(all_pairs(list(dicts)), dicts, device="cpu", progress=False)
    comp = comparison_figure(res.table.assign(comparison=["datasets", "datasets", "seeds"]), 0.7)
    from possae.figures.lint import lint_figure

    top = top_cosine_figure(top_cosines_long(res.top))
    for fig in (comp, top):  # below the axes and their titles, and clean of every figure defect
        assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top" and fig.layout.legend.orientation == "h"
        assert lint_figure(fig) == []
    assert [b.orientation for b in comp.data] == ["h"] * 4  # pairs as rows: their names read horizontally


# ---------------------------------------------------------------- one-to-one matching: sparse against dense


def dense_optimum(a, b):
    """Return (the cosine matrix, scipy's optimal total cosine) for the one-to-one problem, rows a, columns b."""
    cos = (unit_rows(a) @ unit_rows(b).T).double().numpy()
    r, c = linear_sum_assignment(cos, maximize=True)
    return cos, float(cos[r, c].sum())


def assert_optimal(m, a, b, certified=True):
    """Assert m is a one-to-one matching of min(n_a, n_b) pairs whose total cosine is scipy's optimum."""
    cos, best = dense_optimum(a, b)
    assert len(m.rows) == min(cos.shape) and len(set(m.rows)) == len(m.rows) and len(set(m.cols)) == len(m.cols)
    assert np.all(np.diff(m.rows) > 0)
    assert np.allclose(m.cosines, cos[m.rows, m.cols], atol=1e-6)
    assert cos[m.rows, m.cols].sum() == pytest.approx(best, abs=1e-5)
    assert m.certified is certified and 0 <= m.gap_bound <= 1e-4


def rows_(n, d, seed):
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("n_a,n_b,d,k", [(300, 300, 32, 2), (600, 600, 64, 4), (1000, 1000, 768, 8),
                                         (400, 700, 32, 4), (700, 400, 32, 2), (2000, 2000, 96, 4)])
def test_sparse_matching_of_random_dictionaries_is_the_dense_optimum(n_a, n_b, d, k):
    a, b = rows_(n_a, d, 10), rows_(n_b, d, 11)
    m = sparse_match(a, b, k=k, chunk_size=128, device="cpu")
    assert m.method == "sparse"
    assert_optimal(m, a, b)


def test_sparse_matching_of_a_noisy_permutation_needs_one_solve():
    a = rows_(1500, 64, 12)
    perm = torch.randperm(1500, generator=torch.Generator().manual_seed(13))
    b = unit_rows(a[perm] + 0.3 * rows_(1500, 64, 14))
    m = sparse_match(a, b, k=4, device="cpu")
    assert_optimal(m, a, b)
    assert m.rounds == 1 and m.gap_bound == 0.0  # the top-k bound proves every row: no scan, no second solve
    assert np.array_equal(m.cols, torch.argsort(perm).numpy())
    dense = hungarian_match(a, b, device="cpu")
    assert np.array_equal(dense.cols, m.cols) and dense.method == "dense" and dense.certified


def test_sparse_matching_grows_k_when_the_top_k_graph_has_no_full_matching():
    # ten near-copies of e0 in a, four in b; every other row lies in e0's orthogonal complement and has a near-copy
    # on the other side: a's e0 copies only reach b's four e0 rows through their top-4, which b's other rows ignore
    g = torch.Generator().manual_seed(15)
    e0 = torch.eye(32)[0]
    rest = torch.randn(60, 32, generator=g)
    rest[:, 0] = 0
    a = torch.cat([e0 + 1e-3 * torch.randn(10, 32, generator=g), rest[:50]])
    b = torch.cat([e0 + 1e-3 * torch.randn(4, 32, generator=g), rest[:56] + 0.05 * torch.randn(56, 32, generator=g)])
    top = top_cosines(a, b, k=4, device="cpu")
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_bipartite_matching

    r = np.concatenate([np.repeat(np.arange(60), 4), top.b_indices.numpy().ravel()])
    c = np.concatenate([top.a_indices.numpy().ravel(), np.repeat(np.arange(60), 4)])
    graph = csr_array((np.ones(len(r)), (r, c)), shape=(60, 60))
    assert (maximum_bipartite_matching(graph) >= 0).sum() < 60  # the premise: no full matching on the top-4 graph
    m = sparse_match(a, b, k=4, device="cpu")
    assert m.k > 4
    assert_optimal(m, a, b)


def test_sparse_matching_adds_edges_when_the_first_sparse_optimum_is_not_the_dense_one():
    a, b = rows_(300, 32, 10), rows_(300, 32, 11)
    top = top_cosines(a, b, k=4, device="cpu")
    first = sparse_match(a, b, device="cpu", top=top, max_rounds=1)  # one solve on the top-4 graph, no more
    cos, best = dense_optimum(a, b)
    gap = best - cos[first.rows, first.cols].sum()
    assert gap > 1e-3 and not first.certified  # the premise: the top-4 optimum is not the dense one
    assert first.gap_bound >= gap - 1e-6  # and the dual bound covers the true shortfall
    m = sparse_match(a, b, device="cpu", top=top)
    assert m.rounds > 1 and m.n_edges > first.n_edges
    assert_optimal(m, a, b)


def test_column_potentials_are_bellman_ford_shortest_paths():
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import bellman_ford

    g = np.random.default_rng(16)
    n, e = 40, 200
    src, dst = g.integers(0, n, e), g.integers(0, n, e)
    keep = src != dst
    key = np.unique(src[keep] * n + dst[keep])
    src, dst = key // n, key % n
    p = g.uniform(0, 2, n)  # positive lengths shifted by p[src] - p[dst]: many negative arcs, no negative cycle
    w = g.uniform(0.05, 1.0, len(src)) + p[src] - p[dst]
    assert (w < 0).sum() > 20
    d = column_potentials(n, src, dst, w)
    # independent: scipy's Bellman-Ford from a virtual source joined to every node at length 0 (csgraph drops
    # explicit zeros, so the source arcs weigh 1 and every distance is shifted by 1)
    s = np.concatenate([src, np.full(n, n)]), np.concatenate([dst, np.arange(n)])
    graph = csr_array((np.concatenate([w, np.ones(n)]), s), shape=(n + 1, n + 1))
    ref = bellman_ford(graph, indices=n)[:n] - 1.0
    assert np.allclose(d, np.minimum(ref, 0.0), atol=1e-12)
    with pytest.raises(RuntimeError, match="negative cycle"):
        column_potentials(2, np.array([0, 1]), np.array([1, 0]), np.array([-1.0, 0.5]))


def test_one_to_one_match_routes_by_size_and_rejects_bad_input():
    a, b = rows_(200, 16, 17), rows_(250, 16, 18)
    assert one_to_one_match(a, b, device="cpu").method == "dense"  # 50,000 pairs: dense
    m = one_to_one_match(a, b, device="cpu", dense_max_cells=200 * 250 - 1)
    assert m.method == "sparse"
    assert_optimal(m, a, b)
    assert one_to_one_match(a, b, method="sparse", device="cpu", k=3).method == "sparse"
    with pytest.raises(ValueError, match="method"):
        one_to_one_match(a, b, method="auction")
    with pytest.raises(ValueError, match="same d"):
        one_to_one_match(a, rows_(5, 8, 0), method="sparse")
    with pytest.raises(ValueError, match="at least one row"):
        sparse_match(a[:0], b)
    with pytest.raises(ValueError, match="positive"):
        sparse_match(a, b, k=0)
    with pytest.raises(ValueError, match="tol"):
        sparse_match(a, b, tol=float("nan"))


def test_match_pair_reports_the_one_to_one_solver(monkeypatch):
    import possae.matching

    a, b = dictionary("a", rows_(300, 32, 19)), dictionary("b", rows_(300, 32, 20))
    row, _ = match_pair(a, b, device="cpu")
    assert row["one_to_one_method"] == "dense" and row["one_to_one_certified"] and row["one_to_one_gap"] == 0.0
    _, best = dense_optimum(a.decoder, b.decoder)
    assert row["hungarian_mean"] == pytest.approx(best / 300, abs=1e-8)
    monkeypatch.setattr(possae.matching, "DENSE_MAX_CELLS", 300 * 300 - 1)  # as a gpt2-size pair: sparse, from top-4
    sparse_row, _ = match_pair(a, b, device="cpu")
    assert sparse_row["one_to_one_method"] == "sparse" and sparse_row["one_to_one_certified"]
    assert sparse_row["hungarian_mean"] == pytest.approx(best / 300, abs=1e-8)
    assert sparse_row["hungarian_share"] == row["hungarian_share"]
    row, _ = match_pair(a, b, device="cpu", hungarian_max_features=1)
    assert row["one_to_one_method"] == "skipped" and np.isnan(row["hungarian_share"])


# ---------------------------------------------------------------- wording on the gpt2 profile (issue 14)

GPT2_REL = "gpt2-small-res-jb"


def test_skipped_comparisons_say_whether_none_was_named_or_the_named_ones_are_not_cached(monkeypatch):
    """gpt2 names no dataset SAEs (say so, no markdown backticks); it names width SAEs, which offline and uncached are
    dropped: say that, not 'none are given'."""
    from possae.matching import skipped_sentence

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert skipped_sentence("datasets", GPT2_REL) == (
        "No SAEs trained on different datasets are given for this release (gpt2-small-res-jb): this comparison is "
        "skipped. Pass dataset_ids to add some.")
    assert skipped_sentence("widths", GPT2_REL) == (
        "The SAEs of different widths this release (gpt2-small-res-jb) names are not in the local Hugging Face cache "
        "and the hub is offline (HF_HUB_OFFLINE), so this comparison is skipped here; with a network, or with them "
        "cached, it runs.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert skipped_sentence("widths", GPT2_REL).startswith("No SAEs of different widths are given")


def test_one_architecture_makes_no_claim_across_architectures(monkeypatch):
    """Offline, gpt2's OpenAI TopK SAE is dropped and the jb ReLU SAE stays alone: no 'every architecture' claim."""
    import pandas as pd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    frame = pd.DataFrame([{"SAE": "blocks.8.hook_resid_pre", "architecture": "standard", "d_sae": 24576, "l0": np.nan,
                           "n_live": 12288, "live_share": 0.5}])
    live = pd.DataFrame(columns=["a", "b", "dec_all", "dec_live", "enc_all", "enc_live"])
    assert architecture_sentence(frame, live, GPT2_REL) == (
        "Only one architecture (standard: blocks.8.hook_resid_pre) is available here (the others this release names "
        "are not in the local Hugging Face cache), so nothing is compared across architectures; 50.0% of its "
        "features fire on held-out text.")


def test_distance_sentence_with_adjacent_pairs_only_and_with_all_pairs():
    """all_layer_pairs False: no 'farthest apart (1 apart)'; all pairs: the adjacent and farthest shares."""
    import pandas as pd

    from possae.matching import distance_sentence

    rows = [(a, b, s) for a, b, s in [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0), (0, 1, 0.2), (1, 0, 0.4), (1, 2, 0.6),
                                      (2, 1, 0.8)]]
    adjacent = pd.DataFrame(rows, columns=["layer_a", "layer_b", "share"])
    assert distance_sentence(adjacent, GPT2_REL) == (
        "Averaged over families and directions, the share matched between adjacent layers is 50.0%; only adjacent "
        "layers were matched here (all_layer_pairs is False), so how the share falls with the distance between "
        "layers is not measured.")
    far = pd.concat([adjacent, pd.DataFrame([(0, 2, 0.1), (2, 0, 0.3)], columns=adjacent.columns)])
    assert distance_sentence(far, GPT2_REL) == (
        "Averaged over families and directions, the share matched is 50.0% between adjacent layers and 20.0% between "
        "the layers farthest apart (2 apart).")
    assert distance_sentence(adjacent[adjacent.layer_a == adjacent.layer_b], "/tmp/saes").startswith(
        "No per-layer SAE families are given for this release (/tmp/saes)")


def test_layer_sentence_names_layers_not_the_family_when_there_is_one():
    """One family (gpt2's 'ReLU (jb)'): 'layers 0→1' after naming the family once; one pair: says it is the only one;
    several families keep the family in each label."""
    import pandas as pd

    from possae.matching import layer_sentence

    adjacent = pd.DataFrame({"family": ["ReLU (jb)"] * 2, "layers": ["0→1", "1→2"], "layer_a": [0, 1],
                             "dec_share": [0.25, 0.75], "dec_mmcs": [0.3, 0.6]})
    blocks = pd.DataFrame(columns=["block", "cos", "ratio", "explained_variance"])
    assert layer_sentence(adjacent, blocks, None, 0.1, GPT2_REL) == (
        "Among adjacent layers of the ReLU (jb) SAEs, 75.0% of features match for layers 1→2, against 25.0% for "
        "layers 0→1, whose MMCS of 0.300 compares with the random baseline's 0.100.")
    assert layer_sentence(adjacent.iloc[:1], blocks, None, 0.1, GPT2_REL) == (
        "Among adjacent layers of the ReLU (jb) SAEs, 25.0% of features match for layers 0→1 (the only pair), with an "
        "MMCS of 0.300 against the random baseline's 0.100.")
    two = adjacent.assign(family=["ReLU", "TopK"])
    assert layer_sentence(two, blocks, None, 0.1, "organism").startswith(
        "Among adjacent layers, 75.0% of features match for TopK 1→2, against 25.0% for ReLU 0→1")


def test_firing_rates_from_shared_hook_inputs_equal_a_brute_force_count():
    """firing_rates: each feature's share of in-context tokens (BOS slot left out) on which it fires, the same whether
    it runs its own forward pass or reads inputs another SAE at its hook already gathered."""
    from builders import make_sae, make_tiny_model

    from possae.matching import firing_rates, hook_inputs

    model = make_tiny_model(n_layers=2, n_ctx=10)
    hook = "blocks.1.hook_resid_pre"
    sae = make_sae(d=6, F=15, hook=hook)
    sae.cfg.metadata.context_size = 6
    tokens = torch.randint(1, 500, (7, 10), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    x = cache[hook][:, 1:6].reshape(-1, 6)  # positions 1..C-1 of the SAE's context C = 6
    expected = (sae.encode(x) > 0).double().mean(0)
    assert 0 < float(expected.mean()) < 1
    own = firing_rates(model, sae, tokens, batch_size=3)
    shared = firing_rates(model, sae, tokens, inputs=hook_inputs(model, hook, tokens, range(1, 6)))
    assert torch.allclose(own.double(), expected, atol=1e-6) and torch.equal(own, shared)


def test_the_shipped_seed_curve_is_recorded_on_the_shipped_pair():
    """The seed curve's own budget reads the shipped seed pair: a retrained pair needs the record rewritten."""
    from possae.organism.recipe import ARTIFACTS, seed_curve_saes
    from possae.organism.seed_curve import shipped_fingerprint
    from possae.sae_files import read_seed_curve

    record = read_seed_curve(ARTIFACTS)
    assert record is not None, "no seed curve is shipped: run `possae organism seed-curve`"
    own = [(t, [a.sae_id, b.sae_id]) for t, a, b in seed_curve_saes() if str(t) in record["ids"]
           and record["ids"][str(t)] == [a.sae_id, b.sae_id]]
    assert len(own) == len(record["ids"]) == len(record["rows"])  # every budget of the recipe, under its ids
    ids = record["ids"][str(record["shipped_tokens"])]
    assert record["shipped_sha256"] == shipped_fingerprint(ids), "stale: run `possae organism seed-curve` again"
    assert [r["tokens"] for r in record["rows"]] == sorted(int(t) for t in record["ids"])
