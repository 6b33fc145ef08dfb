"""Tests of possae.matching: permuted and orthogonal dictionaries, chunked top-k cosines against a dense reference,
Hungarian matching, containment of a small dictionary in a large one, normalisation and sign, group resolution."""

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from possae.matching import (
    Dictionary,
    all_pairs,
    as_ref,
    best_match_stats,
    containment,
    cosine_matrix,
    default_groups,
    dictionary_from_sae,
    hungarian_match,
    layer_matrix,
    match_pair,
    match_pairs,
    random_directions,
    resolve_ids,
    resolve_pairs,
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


def test_group_resolution_drops_missing_saes_and_rejects_bad_entries():
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


def test_local_folder_release(tmp_path):
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(tmp_path / "one")
    assert resolve_ids(["one", "two"], str(tmp_path)) == [(str(tmp_path), "one")]
    from possae.matching import load_dictionaries

    d = load_dictionaries([(str(tmp_path), "one")], str(tmp_path), device="cpu")
    assert list(d) == ["one"] and d["one"].layer == 1 and d["one"].d_sae == 16


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
    comp = comparison_figure(res.table.assign(comparison="datasets"), {"datasets": (0.06, 0.3)})
    assert len(comp.data) == 2 and len(comp.layout.shapes) == 1


def test_dictionary_table_reads_l0_from_metadata():
    from possae.matching import dictionary_table

    sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    with_l0 = dictionary_from_sae(sae, "a")
    sae.cfg.metadata.l0 = 2.0
    d = {"a": with_l0, "b": dictionary_from_sae(sae, "b")}
    t = dictionary_table(d, ["a", "b"])
    assert t["d_sae"].tolist() == [16, 16] and np.isnan(t["L0"].iloc[0]) and t["L0"].iloc[1] == 2.0
    assert t["architecture"].iloc[0] == "topk"
