"""Tests of possae.length: params, error summaries (possae.metrics), spurious firing vs brute force, fixes, sentences,
and analyze end to end on a tiny model whose answers are computed directly."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from builders import make_sae, make_tiny_model, make_weights
from possae import length as L
from possae import positional as P
from possae.book import chapter_parameters
from possae.glued import check_prose_values
from possae.layer0_stats import Layer0Stats, layer0_stats
from possae.metrics import PositionSums, pooled_nmse, reconstruction_sums
from possae.params import ParameterError
from possae.semantic import token_activation_vs_position

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "length_generalization.py"


def brute_acts(W_E, W_pos, sae):
    """Return sae.encode(W_E[t] + W_pos[p]) as a (V, n, F) tensor."""
    x = W_E[:, None, :] + W_pos[None, :, :]
    return sae.encode(x.reshape(-1, x.shape[-1])).reshape(W_E.shape[0], W_pos.shape[0], -1).detach()


def brute_spurious(W_E, W_pos, sae, C):
    """Return (activations, spurious mask (V, n, F)) by brute force; inside the context = positions 1..C-1."""
    acts = brute_acts(W_E, W_pos, sae)
    fired = acts > 0
    never = ~fired[:, 1:C].any(1)
    past = torch.arange(W_pos.shape[0]) >= C
    return acts, fired & never[:, None, :] & past[None, :, None]


# ----------------------------------------------------------------------------------------------
# parameters and the chapter's source
# ----------------------------------------------------------------------------------------------


def test_params_are_the_chapter_cell_and_reject_bad_values():
    assert set(L.LengthParams.names()) == chapter_parameters(CHAPTER)
    with pytest.raises(ParameterError, match="no parameter 'n_heldout_token'"):
        L.LengthParams.from_mapping({"n_heldout_token": 10})
    with pytest.raises(ParameterError, match="'n_vocab_sample' must be int"):
        L.LengthParams(n_vocab_sample="many")
    with pytest.raises(ParameterError, match="'control_sae_id' must be str or None"):
        L.LengthParams(control_sae_id=3)
    with pytest.raises(ParameterError, match="n_heldout_tokens must be >= 1"):
        L.LengthParams(n_heldout_tokens=0)
    assert L.LengthParams.from_mapping({"n_vocab_sample": 8, "device": None}).n_vocab_sample == 8


def test_chapter_code_prints_nothing_and_reads_no_sae_or_hook_facts():
    """The chapter printed debug lines and read cfg.metadata / hook names itself: its code cells may not."""
    import jupytext

    code = "\n".join(c.source for c in jupytext.read(CHAPTER).cells if c.cell_type == "code")
    for banned in ("print(", "cfg.metadata", "hook_", "context_size =", "n_ctx =", "d_model", "glue(", "\nif ",
                   "\nfor "):
        assert banned not in code, banned
    prose = "\n".join(c.source for c in jupytext.read(CHAPTER).cells if c.cell_type == "markdown")
    assert "rel_err" not in prose and "per dimension" not in prose and "When the sweep runs" not in prose


# ----------------------------------------------------------------------------------------------
# error summaries: one definition (possae.metrics)
# ----------------------------------------------------------------------------------------------


def hand_sums():
    """Return PositionSums over 4 positions (C = 2: inside = {1}, past = {2, 3}) with known answers."""
    x = torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [0.0, 4.0]], dtype=torch.float64)
    pos = torch.tensor([0, 1, 1, 2, 3])
    return x, pos, PositionSums.empty(4).add(pos, **reconstruction_sums(x, {"m": x - 1.0}))


def test_error_summary_hand_worked():
    _, _, sums = hand_sums()
    s = L.error_summary(sums, "m", context_size=2)
    # inside: inputs (1, 0), (3, 0): mean (2, 0), total variance 1; each error ||(1, 1)||^2 = 2
    assert (s.mse_in, s.nmse_in) == (pytest.approx(2.0), pytest.approx(2.0))
    assert (s.mse_past, s.nmse_past) == (pytest.approx(2.0), pytest.approx(2.0))  # same error, same variance
    assert s.ratio == pytest.approx(1.0)
    curves = L.error_curves(sums, 2).set_index("position")
    assert curves.index.tolist() == [0, 1, 2, 3] and curves.loc[1, "inputs"] == 2
    assert curves.nmse.tolist() == pytest.approx([2.0] * 4)


def test_curve_weighted_mean_inside_is_the_pooled_nmse():
    """Finding: the per-position nMSE and the pooled in-context figure disagreed; now one is the other's mean."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64) + torch.arange(5.0, dtype=torch.float64)
    pos = torch.randint(0, 9, (400,), generator=g)
    x = x + 0.3 * pos[:, None]
    x_hat = x + 0.2 * torch.randn(400, 5, generator=g, dtype=torch.float64) * (1 + pos[:, None])
    sums = PositionSums.empty(9).add(pos, **reconstruction_sums(x, {"m": x_hat}))
    C = 4
    s = L.error_summary(sums, "m", C)
    curves = L.error_curves(sums, C)
    inside, past = curves[curves.position.between(1, C - 1)], curves[curves.position >= C]
    assert (inside.nmse * inside.inputs).sum() / inside.inputs.sum() == pytest.approx(s.nmse_in, rel=1e-12)
    assert (past.nmse * past.inputs).sum() / past.inputs.sum() == pytest.approx(s.nmse_past, rel=1e-12)
    direct_in = (pos >= 1) & (pos < C)
    xi = x[direct_in]
    ev = 1 - (xi - x_hat[direct_in]).pow(2).sum() / (xi - xi.mean(0)).pow(2).sum()
    assert s.nmse_in == pytest.approx(float(1 - ev), rel=1e-12)
    assert s.nmse_in == pytest.approx(pooled_nmse(sums, "m", sums.mask(1, C)), rel=1e-15)
    at = pos >= C
    assert s.mse_past == pytest.approx(float((x[at] - x_hat[at]).pow(2).sum(1).mean()), rel=1e-12)


def test_error_and_fix_tables_are_formatted_and_narrow():
    summ = {("held-out text", L.SAE_LABEL): L.ErrorSummary(0.5, 12345.0, 0.061, 9373.0),
            ("held-out text", L.RANDOM_LABEL): L.ErrorSummary(2.0, 12000.0, 2.4, 9000.0)}
    t = L.error_table(summ, 64, 256)
    assert list(t.columns) == ["MSE, positions 1–63", "MSE, positions 64–255", "nMSE, positions 1–63",
                               "nMSE, positions 64–255", "past / inside"]
    assert t.loc[("held-out text", L.SAE_LABEL)].tolist() == ["0.5", "12,345", "0.061", "9,373", "153,656"]
    f = L.fix_table({m: s for (_, m), s in summ.items()}, 64, 256)
    assert f["restores"].tolist() == ["no", "no"] and f.shape[1] <= 7


# ----------------------------------------------------------------------------------------------
# spurious firing: exact == brute force
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("C", [2, 5, 9])
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
    assert float(prof.activation.iloc[1:C].max()) == 0.0
    # unrestricted, the example is at least as strong; with no allowed feature there is none
    assert L.spurious_example(W_E, W_pos, sae, C).activation >= ex.activation
    assert L.spurious_example(W_E, W_pos, sae, C, features=torch.zeros(20, dtype=torch.bool)) is None


def test_feature_top_tokens_match_brute_force():
    sae = make_sae("jumprelu", seed=5)
    W_E, W_pos = make_weights(seed=5)
    C = 6
    acts = brute_acts(W_E, W_pos, sae)
    i = int(acts[:, 1:C].amax((0, 1)).argmax())
    top = L.feature_top_tokens(W_E, W_pos, sae, i, C, k=5)
    ref_v, ref_t = acts[:, 1:C, i].max(1).values.topk(5)
    assert top.token.tolist() == ref_t.tolist()
    torch.testing.assert_close(torch.tensor(top.max_activation_inside.values), ref_v, rtol=1e-12, atol=1e-12)
    assert 1 <= int(top.at_position.iloc[0]) < C


def test_spurious_rejects_bad_input():
    W_E, W_pos = make_weights()
    for C in (12, 1, 0):
        with pytest.raises(ValueError, match="context_size"):
            L.spurious_counts(W_E, W_pos, make_sae(), C)
    with pytest.raises(ValueError, match="exact"):
        L.spurious_counts(W_E, W_pos, make_sae("topk", k=3), 4)
    with pytest.raises(ValueError, match="mask over the 40 tokens"):
        L.spurious_example(W_E, W_pos, make_sae(), 4, tokens=torch.ones(39, dtype=torch.bool))


def test_spurious_rate_frame_and_summary_values():
    counts = torch.tensor([[0, 0, 0], [0, 0, 0], [4, 2, 0], [8, 0, 6]])
    positional = torch.tensor([True, False, False])
    df = L.spurious_rate_frame(counts, d_vocab=4, positional=positional, l0=torch.tensor([0.0, 1.0, 2.0, 7.0]))
    assert df.spurious_per_token.tolist() == [0.0, 0.0, 1.5, 3.5]
    assert df.positional.tolist() == [0.0, 0.0, 1.0, 2.0]
    assert df["non-positional"].tolist() == [0.0, 0.0, 0.5, 1.5]
    assert df.spurious_share_of_l0.tolist() == [0.0, 0.0, 0.75, 0.5]  # 0 where L0 is 0, not NaN
    s = L.spurious_summary(df, context_size=2)
    assert (s.mean, s.max, s.max_position, s.share_of_l0, s.non_positional) == (2.5, 3.5, 3, 0.625, 0.4)
    table = L.spurious_table(df, 2)
    assert table.index.tolist() == [1, 2, 3] and "nan" not in table.to_string()


# ----------------------------------------------------------------------------------------------
# all-token pass, positional features past the context
# ----------------------------------------------------------------------------------------------


def test_random_equal_norm():
    x_hat = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64).repeat(5000, 1)
    r = L.random_equal_norm(x_hat, torch.Generator().manual_seed(1))
    torch.testing.assert_close(r.norm(dim=1), x_hat.norm(dim=1), rtol=1e-12, atol=0)
    cos = torch.nn.functional.cosine_similarity(r, x_hat, dim=1)
    assert abs(float(cos.mean())) < 0.03 and float(cos.abs().max()) < 1.0  # random directions, not x_hat's
    assert torch.equal(r, L.random_equal_norm(x_hat, torch.Generator().manual_seed(1)))


def test_sample_tokens():
    assert torch.equal(L.sample_tokens(10, 10), torch.arange(10))
    assert torch.equal(L.sample_tokens(10, 50, exclude=[0, 3]), torch.tensor([1, 2, 4, 5, 6, 7, 8, 9]))
    s = L.sample_tokens(100, 20, seed=3, exclude=[0])
    assert len(s.unique()) == 20 and torch.equal(s, s.sort().values) and 0 not in s.tolist()
    assert torch.equal(s, L.sample_tokens(100, 20, seed=3, exclude=[0]))
    assert not torch.equal(s, L.sample_tokens(100, 20, seed=4, exclude=[0]))
    with pytest.raises(ValueError):
        L.sample_tokens(100, 0)


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_all_token_sums_exact_matches_brute_force_and_direct(kind):
    sae = make_sae(kind, seed=11)
    W_E, W_pos = make_weights(V=30, n=9, seed=11)
    ex = L.all_token_position_sums(W_E, W_pos, sae, seed=2, batch_rows=64, method="exact", progress=False)
    bf = L.all_token_position_sums(W_E, W_pos, sae, seed=2, batch_rows=64, method="brute_force", progress=False)
    pd.testing.assert_frame_equal(L.error_curves(ex, 4), L.error_curves(bf, 4), rtol=1e-9)
    x = W_E[:, None, :] + W_pos[None]
    err = (x - L.sae_reconstruct(sae, x.reshape(-1, 6)).reshape(x.shape)).pow(2).sum(-1)  # (V, n)
    curves = L.error_curves(ex, 4)
    got = curves[curves.method == L.SAE_LABEL]
    assert got.position.tolist() == list(range(1, 9))  # position 0 (BOS's slot) is left out
    torch.testing.assert_close(torch.tensor(got.mse.to_numpy()), err.mean(0)[1:], rtol=1e-10, atol=1e-12)


def fake_stats(mean):
    """Return Layer0Stats with the given (n_pos, d_sae) mean activations and no within-position variance."""
    n, F = mean.shape
    z = torch.zeros(n, F, dtype=torch.float64)
    return Layer0Stats(torch.arange(n), mean, z, (mean > 0).double(), z, mean.max(0).values, mean.argmax(0),
                       torch.zeros(F, dtype=torch.float64), torch.zeros(F, dtype=torch.float64), mean.mean(0),
                       mean.var(0, unbiased=False), "exact")


def test_past_context_behaviour_and_table():
    mean = torch.zeros(8, 5, dtype=torch.float64)
    mean[1, 0], mean[1, 1] = 2.0, 1.0  # features 0, 1 peak at position 1; 1 grows past the context
    mean[6, 1] = 3.0
    mean[2, 2] = 1.0  # feature 2 peaks at 2, silent past
    mean[:, 3] = 1.0  # feature 3 is constant: R2 0, not positional
    mean[3, 4], mean[7, 4] = 1.0, 0.5  # feature 4 peaks at 3, still fires past
    stats = fake_stats(mean)
    C = 4
    positional = P.positional_features(stats, C)
    assert positional.tolist() == [True, True, True, False, True]
    frame = L.past_context_frame(stats, positional.nonzero().squeeze(1), C)
    assert frame.max_mean_past.tolist() == [0.0, 3.0, 0.0, 0.5]
    total, table = L.past_behaviour(frame)
    assert (total.features, total.silent, total.overshoot) == (4, 0.5, 0.25)  # silent: 0 and 2; overshoot: 1
    assert table.loc["all"].tolist() == ["4", "50%", "25%", "33.3%", "12.5%"]  # rates: 1/3 inside each; 1/4 past for 1 and 4
    assert table.loc["1", "features"] == "2" and table.shape[1] <= 7
    none, empty = L.past_behaviour(frame.iloc[:0])
    assert none is None and "nan" not in empty.to_string().lower()
    by_kind = L.firing_by_kind_frame(stats, positional)
    assert by_kind["non-positional"].tolist() == [1.0] * 8


def test_nearest_inside_uses_rows_inside_the_context():
    W = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2], [0.0, 0.0]])
    df = L.nearest_inside(W, 3)  # inside: rows 1, 2 (row 0 holds BOS)
    assert df.nearest_inside.tolist() == [1, 1, 2, 1, 2, 1]
    assert df.cosine.iloc[3] == pytest.approx(2**-0.5)
    assert df.cosine.iloc[4] == pytest.approx(0.2 / (1.04**0.5))
    assert df.cosine.iloc[5] == 0.0
    assert L.nearest_table(df, 3).index.tolist() == [2, 3, 4, 5]


def test_token_part_offset_is_unbiased_inside_the_context():
    sae = make_sae("standard", seed=31)
    W_E, W_pos = make_weights(V=35, seed=31)
    C = 6
    stats = layer0_stats(W_E, W_pos, sae, progress=False)
    positional = torch.arange(15) % 3 == 0
    kappa = L.token_part_offset(stats, sae, W_E, C, positional)
    acts = brute_acts(W_E, W_pos[1:C], sae) * ~positional  # (V, C - 1, F)
    token_part = sae.decode(acts).detach() - kappa  # estimates W_E[t]
    torch.testing.assert_close(token_part.mean((0, 1)), W_E.mean(0), rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# sentences: wording follows the numbers
# ----------------------------------------------------------------------------------------------


def test_sentences_follow_the_numbers():
    assert L.times_phrase(9373.0, 0.061) == "153,656 times its value inside"
    assert L.times_phrase(1.02, 1.0) == "about its value inside"
    assert (L.pct(0.99996), L.pct(0.00002), L.pct(0.5)) == ("more than 99.9%", "less than 0.1%", "50.0%")
    assert "more than 99.9% of the spurious pairs" in L.spurious_sentence(L.SpuriousSummary(1.0, 2.0, 70, 0.8, 0.99996))
    assert "within 10%" in L.random_sentence(9373.0, 9367.0)
    assert "keeps part of the input's direction" in L.random_sentence(1.0, 5.0)
    assert L.positional_sentence(0, None, 64).startswith("This SAE has no feature")
    assert L.spurious_sentence(L.SpuriousSummary(0.0, 0.0, 64, 0.0, 0.0)).startswith("No feature fires")
    assert L.example_sentence(None, "", "", 0.0, 10).startswith("No non-positional feature")
    near = pd.DataFrame({"nearest_inside": [1, 1, 1, 1], "cosine": [1.0, 1.0, 0.9, 0.8]})
    assert L.nearest_sentence(near, 2).startswith("Every row of W_pos past the context")


def fix_summaries(a_in, a_past, b_past, c_past, control=True):
    s = {L.SAE_LABEL: L.ErrorSummary(1, 1e5, 0.06, 9373.0), L.RANDOM_LABEL: L.ErrorSummary(1, 1e5, 2.4, 9367.0),
         L.TOKEN_ONLY_LABEL: L.ErrorSummary(1, 1, a_in, a_past), L.CLAMP_LABEL: L.ErrorSummary(1, 1, 0.06, b_past),
         L.SWAP_LABEL: L.ErrorSummary(1, 1, 0.06, c_past)}
    if control:
        s[L.CONTROL_LABEL] = L.ErrorSummary(1, 1, 0.079, 0.074)
    return s


def test_fix_a_says_the_bare_token_is_off_distribution_only_when_its_inside_error_is_large():
    """Finding: fix (a) has nMSE ~1,343 inside the context too; the sentence must say so, and only when true."""
    big = L.fix_sentences(fix_summaries(1343.0, 1584.0, 0.063, 9323.0), 0.9999, 256, 256)
    assert "1,343 inside it" in big["a"] and "a bare token embedding is itself an input it never saw" in big["a"]
    assert "is what (a) lacked" in big["b"] and "restores" in big["b"] and "does not restore" in big["a"]
    assert "bulk of the error" in big["c"] and "it has no outside" in big["d"]
    small = L.fix_sentences(fix_summaries(0.07, 0.08, 0.063, 0.1), 0.2, 128, 256)
    assert "never saw" not in small["a"] and "lacked" not in small["b"] and "bulk" not in small["c"]
    assert "it too stops at position 127" in small["d"]
    skipped = L.fix_sentences(fix_summaries(0.07, 0.08, 0.063, 0.1, control=False), 0.2, None, 256)
    assert skipped["d"].startswith("Fix (d) is skipped")
    assert L.fix_summary_sentence(fix_summaries(1.0, 2.0, 3.0, 4.0, control=False)).endswith(
        "(a) 2, (b) 3, (c) 4; (d) not available on this profile.")


# ----------------------------------------------------------------------------------------------
# fixes and analyze end to end on a tiny model (n_ctx 10, context 4: nothing organism-sized)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """Return (model, sae, control, result): a 1-layer float64 model with the organism's tokenizer, analysed."""
    model = make_tiny_model(n_layers=1)
    with torch.no_grad():
        model.W_pos.mul_(40.0)  # make position matter
        model.W_E.mul_(40.0)
    sae, control = make_sae("standard", d=6, F=15, seed=21), make_sae("standard", d=6, F=15, seed=22)
    sae.cfg.metadata.context_size = 4
    params = L.LengthParams(n_heldout_tokens=40, n_vocab_sample=50, control_sae_id="any")
    return model, sae, control, params, L.analyze(model, sae, params, control)


def test_analyze_prints_nothing(tiny, capsys):
    model, sae, control, params, _ = tiny
    L.analyze(model, sae, params.replace(n_vocab_sample=5), control)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_analyze_cites_the_setup_figure_from_the_setup_call(tiny):
    """Finding: "as in the setup chapter" cited a different number; it must be sae_quality on the setup's windows."""
    from possae.heldout import heldout_windows
    from possae.metrics import sae_quality

    model, sae, _, params, result = tiny
    setup = sae_quality(model, sae, heldout_windows(model.tokenizer, 4, params.n_heldout_tokens))  # setup.py's call
    v = result.glued()
    assert v["len_setup_explained_variance"] == setup["explained_variance"]
    assert v["len_setup_nmse"] == setup["nmse"] and v["len_setup_tokens"] == setup["tokens"]


def test_analyze_heldout_numbers_against_direct_computation(tiny):
    from possae.heldout import heldout_windows

    model, sae, control, params, result = tiny
    v = result.glued()
    assert (v["len_context"], v["len_n_ctx"], v["len_inside"], v["len_past"]) == (4, 10, "1–3", "4–9")
    tokens = heldout_windows(model.tokenizer, 10, params.n_heldout_tokens)
    keep = tokens != model.tokenizer.bos_token_id  # special tokens (BOS) are left out, as in sae_lens
    x = (model.W_E[tokens] + model.W_pos[None]).detach()
    x_hat = L.sae_reconstruct(sae, x.reshape(-1, 6)).reshape(x.shape).detach()
    pos = torch.arange(10).expand_as(tokens)
    inside, past = keep & (pos >= 1) & (pos < 4), keep & (pos >= 4)
    xi = x[inside]
    var = (xi - xi.mean(0)).pow(2).sum(1).mean()
    assert v["len_heldout_inputs"] == int(keep.sum())
    assert v["len_heldout_in"] == pytest.approx(float((xi - x_hat[inside]).pow(2).sum(1).mean() / var), rel=1e-9)
    assert v["len_heldout_past"] == pytest.approx(float((x[past] - x_hat[past]).pow(2).sum(1).mean() / var), rel=1e-9)
    assert v["len_input_gap"] < 1e-12  # hook_resid_pre(0) == hook_embed + hook_pos_embed
    curves = result.heldout_curves
    sae_in = curves[(curves.method == L.SAE_LABEL) & curves.position.between(1, 3)]
    assert (sae_in.nmse * sae_in.inputs).sum() / sae_in.inputs.sum() == pytest.approx(v["len_heldout_in"], rel=1e-12)
    assert 0 not in curves.position.tolist()
    # fix (b) past the context: the SAE's error on the same token at position C - 1, moved to p
    W_E, W_pos = model.W_E.detach(), model.W_pos.detach()
    clamp = L.sae_reconstruct(sae, W_E[tokens] + W_pos[3]) - W_pos[3] + W_pos[None]
    ref = (x[past] - clamp[past]).pow(2).sum(1).mean() / var
    assert v["len_fix_b_past"] == pytest.approx(float(ref), rel=1e-9)
    ctrl = L.sae_reconstruct(control, x.reshape(-1, 6)).reshape(x.shape).detach()
    assert v["len_fix_d_past"] == pytest.approx(float((x[past] - ctrl[past]).pow(2).sum(1).mean() / var), rel=1e-9)


def test_analyze_glues_clean_prose_and_display_ready_tables(tiny):
    """Findings: template leftovers ("from X to X") and NaN cells; every value is clean and every table narrow."""
    *_, result = tiny
    v = result.glued()
    check_prose_values(v)
    for name, text in v.items():
        if isinstance(text, str):
            assert not re.search(r"from (\S+) to \1(\W|$)", text), (name, text)
            assert "nan" not in text.lower().split(), (name, text)
    for table in (result.error_table, result.fix_table, result.behaviour_table, result.nearest_table,
                  result.spurious_table, result.example_top_tokens):
        assert table.shape[1] <= 7 and "nan" not in table.to_string().lower()
    assert set(result.fix_summaries()) == {L.SAE_LABEL, L.RANDOM_LABEL, *L.FIX_LABELS.values()}


def test_analyze_refuses_an_sae_with_nothing_past_its_context(tiny):
    model, sae, _, params, _ = tiny
    full = make_sae("standard", d=6, F=15, seed=21)
    full.cfg.metadata.context_size = 10
    with pytest.raises(ValueError, match="nothing lies past its context"):
        L.analyze(model, full, params)
    with pytest.raises(ValueError, match="studies layer-0 SAEs"):
        L.analyze(model, make_sae("standard", d=6, F=15, hook="blocks.1.hook_resid_pre"), params)


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def test_error_figure_grid_and_spurious_and_empty_figures():
    from possae.figures.length import (error_vs_position_figure, example_profile_figure, positional_profiles_figure,
                                       spurious_rate_figure)

    df = pd.DataFrame({"method": ["s"] * 4 + ["r"] * 4, "position": list(range(4)) * 2,
                       "mse": [1.0, 2, 3, 4, 5, 6, 7, 8], "nmse": [0.1, 0.2, 3, 4, 1, 1, 5, 6]})
    fig = error_vs_position_figure({"text": df, "all": df[df.method == "s"]}, 2, metrics=("mse", "nmse"))
    # rows mse / nmse x columns text / all: 2 + 1 traces per row, each method in the legend once
    assert len(fig.data) == 6
    assert sorted(t.name for t in fig.data if t.showlegend) == ["r", "s"]
    assert [list(t.y) for t in fig.data if t.name == "s"][1] == [1.0, 2, 3, 4]  # row 1, column 2: mse
    assert [list(t.y) for t in fig.data if t.name == "s"][2] == [0.1, 0.2, 3, 4]  # row 2: nmse
    assert [s.x0 for s in fig.layout.shapes] == [1.5] * 4  # the context marked in every panel
    assert fig.layout.yaxis.title.text == "MSE"
    rates = L.spurious_rate_frame(torch.tensor([[0, 0], [3, 1]]), 4, torch.tensor([True, False]), torch.tensor([1.0, 2.0]))
    fig = spurious_rate_figure(rates, 1)
    assert [t.name for t in fig.data] == ["non-positional features", "positional features", "spurious / L0"]
    assert list(fig.data[2].y) == [0.0, 0.5]
    empty = pd.DataFrame(columns=["token", "feature", "position", "activation", "label"])
    assert "no spurious example found" in [a.text for a in example_profile_figure(empty, 4).layout.annotations]
    no_features = pd.DataFrame(columns=["position", "mean", "feature"])
    assert "no positional feature" in [a.text for a in positional_profiles_figure(no_features, 4).layout.annotations]
