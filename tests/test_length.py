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
    acts, spur = brute_spurious(W_E, W_pos, sae, C)
    assert torch.equal(counts, spur.sum(0).long())
    assert int(counts.sum()) > 0 and int(counts[:C].sum()) == 0
    both, firings = L.spurious_and_firing_counts(W_E, W_pos, sae, C, feature_chunk=4, progress=False)
    assert torch.equal(both, counts)
    assert torch.equal(firings, (acts > 0).sum((0, 2)).long())  # every (token, feature) firing, at every position
    assert bool((counts.sum(1) <= firings).all())


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
    assert df.spurious_firings.tolist() == [0, 0, 6, 14] and df.firings.tolist() == [0, 4, 8, 28]  # l0 x d_vocab
    s = L.spurious_summary(df, context_size=2)
    assert (s.mean, s.max, s.max_position, s.share_of_l0, s.non_positional) == (2.5, 3.5, 3, 0.625, 0.4)
    table = L.spurious_table(df, 2)
    assert table.index.tolist() == [1, 2, 3] and "nan" not in table.to_string()


def test_spurious_share_is_pooled_over_positions_not_a_mean_of_ratios():
    """Finding: the share of active features that are spurious was a mean over positions of per-position ratios;
    the prose now gives the pooled share, spurious firings over all firings past the context, with both counts."""
    counts = torch.tensor([[0, 0, 0], [0, 0, 0], [4, 2, 0], [8, 0, 6]])
    positional = torch.tensor([True, False, False])
    df = L.spurious_rate_frame(counts, 4, positional, torch.tensor([0.0, 1.0, 2.0, 7.0]),
                               firings=torch.tensor([0, 4, 8, 40]))  # exact counts win over l0 x d_vocab
    s = L.spurious_summary(df, context_size=2)
    # positions 2, 3: 6 of 8 and 14 of 40 firings are spurious: pooled 20 / 48, not the mean of 0.75 and 0.5
    assert (s.n_spurious, s.n_firings) == (20, 48)
    assert s.pooled_share == pytest.approx(20 / 48) and s.share_of_l0 == pytest.approx(0.625)
    text = L.spurious_sentence(s)
    assert "20 of the 48 (token, feature) firings past the context are spurious (41.7%)" in text
    assert "62%" not in text  # the per-position mean is not what the sentence reports
    assert L.SpuriousSummary(0.0, 0.0, 2, 0.0, 0.0, 0, 0).pooled_share == 0.0


# ----------------------------------------------------------------------------------------------
# all-token pass, positional features past the context
# ----------------------------------------------------------------------------------------------


def test_random_baselines_are_the_expected_error_of_random_directions():
    """random_baseline_sse is exact: it agrees with the mean error of many sampled uniform directions (a second,
    independent method) within six standard errors, for both norms."""
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([[3.0, 4.0, 0.0, 1.0], [0.0, 0.0, 2.0, -1.0]], dtype=torch.float64)
    x_hat = torch.tensor([[30.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    exact = L.random_baseline_sse(x, x_hat)
    assert list(exact) == [L.RANDOM_LABEL, L.RANDOM_REC_LABEL]
    torch.testing.assert_close(exact[L.RANDOM_LABEL], 2 * x.pow(2).sum(1), rtol=1e-15, atol=0)
    n = 200_000
    u = torch.randn(n, 2, 4, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    for label, norm in ((L.RANDOM_LABEL, x.norm(dim=1)), (L.RANDOM_REC_LABEL, x_hat.norm(dim=1))):
        err = (x - norm[:, None] * u).pow(2).sum(-1)  # (n, 2)
        assert ((err.mean(0) - exact[label]).abs() < 6 * err.std(0) / n**0.5).all(), label


def baseline_sums(x_hat_scale=100.0, N=3000, d=64, n=8, C=4, seed=0):
    """Return (x, pos, x_hat, sums with the SAE = x_hat_scale * x and the three baselines) on constructed inputs."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(N) % n
    x = torch.randn(N, d, generator=g, dtype=torch.float64) + 0.5 * pos[:, None]  # the input shifts with position
    x_hat = x_hat_scale * x
    sums = PositionSums.empty(n).add(pos, **L.error_sums(x, {L.SAE_LABEL: x_hat}))
    return x, pos, x_hat, L.with_mean_baseline(sums, C)


def test_baselines_match_their_expected_errors():
    """The input-norm baseline's nMSE is 2 mean ||x||^2 / variance exactly; the mean input's is
    mean ||x - mean||^2 / variance exactly (1 inside the context)."""
    C, d = 4, 64
    x, pos, _, sums = baseline_sums(C=C, d=d)
    assert L.methods_of(sums) == [L.SAE_LABEL, L.RANDOM_LABEL, L.RANDOM_REC_LABEL, L.MEAN_LABEL]
    inside, past = (pos >= 1) & (pos < C), pos >= C
    xi = x[inside]
    m = xi.mean(0)
    var = float((xi - m).pow(2).sum(1).mean())
    for where, key in ((inside, "in"), (past, "past")):
        s = L.error_summary(sums, L.RANDOM_LABEL, C)
        got = s.nmse_in if key == "in" else s.nmse_past
        sq = x[where].pow(2).sum(1)
        assert got == pytest.approx(2 * float(sq.mean()) / var, rel=1e-12), key
        mean_s = L.error_summary(sums, L.MEAN_LABEL, C)
        ref = float((x[where] - m).pow(2).sum(1).mean()) / var
        assert (mean_s.nmse_in if key == "in" else mean_s.nmse_past) == pytest.approx(ref, rel=1e-10)
    assert L.error_summary(sums, L.MEAN_LABEL, C).nmse_in == pytest.approx(1.0, rel=1e-10)
    # per position too, and with_mean_baseline is idempotent
    curve = L.error_curves(sums, C)
    at5 = curve[(curve.method == L.MEAN_LABEL) & (curve.position == 5)].nmse.item()
    assert at5 == pytest.approx(float((x[pos == 5] - m).pow(2).sum(1).mean()) / var, rel=1e-10)
    again = L.with_mean_baseline(sums, C)
    assert L.methods_of(again) == L.methods_of(sums)
    assert torch.equal(again.totals[f"sse:{L.MEAN_LABEL}"], sums.totals[f"sse:{L.MEAN_LABEL}"])


def test_reconstruction_norm_baseline_is_not_the_input_norm_one():
    """Finding: the baseline had the reconstruction's norm; past the context the output is ~100 times too long, so
    the baseline was huge and the SAE "matched random". With x_hat = 100 x, the two differ by ~(1 + 100^2) / 2."""
    C = 4
    x, pos, x_hat, sums = baseline_sums(x_hat_scale=100.0, C=C)
    rand = L.error_summary(sums, L.RANDOM_LABEL, C).nmse_past
    randrec = L.error_summary(sums, L.RANDOM_REC_LABEL, C).nmse_past
    sae = L.error_summary(sums, L.SAE_LABEL, C).nmse_past
    assert randrec / rand == pytest.approx((1 + 100**2) / 2, rel=1e-12)
    assert sae / rand == pytest.approx(99**2 / 2, rel=1e-12)  # ||x - 100 x||^2 = 99^2 ||x||^2: far worse than random
    assert sae / randrec == pytest.approx(99**2 / (1 + 100**2), rel=1e-12)  # "as bad as random" on the old reading
    text = L.random_sentence(sae, rand, randrec)
    assert "times that of a random vector with the input's norm" in text and "farther from its input" in text


def test_len_heldout_rand_past_is_the_input_norm_baseline(tiny):
    """End to end: with an SAE whose output is 100 times too long, len_heldout_rand_past is the input-norm baseline
    (2 mean ||x||^2 past the context, over the inside variance), not the reconstruction-norm one."""
    from possae.heldout import heldout_windows

    model, _, _, params, _ = tiny
    loud = make_sae("standard", d=6, F=15, seed=21, apply_b_dec_to_input=False)
    with torch.no_grad():
        loud.W_dec.mul_(100.0)
        loud.b_dec.mul_(100.0)
    loud.cfg.metadata.context_size = 4
    v = L.analyze(model, loud, params.replace(n_vocab_sample=8)).glued()
    tokens = heldout_windows(model.tokenizer, 10, params.n_heldout_tokens)
    keep = tokens != model.tokenizer.bos_token_id
    x = (model.W_E[tokens] + model.W_pos[None]).detach()
    x_hat = L.sae_reconstruct(loud, x.reshape(-1, 6)).reshape(x.shape).detach()
    pos = torch.arange(10).expand_as(tokens)
    inside, past = keep & (pos >= 1) & (pos < 4), keep & (pos >= 4)
    xi = x[inside]
    var = float((xi - xi.mean(0)).pow(2).sum(1).mean())
    sq, sq_hat = x[past].pow(2).sum(1), x_hat[past].pow(2).sum(1)
    assert float(sq_hat.mean()) > 100 * float(sq.mean())  # the premise: the output is far longer than the input
    bound = 6 * 2 * float(sq.pow(2).sum().sqrt()) / 6**0.5 / len(sq) / var
    assert abs(v["len_heldout_rand_past"] - 2 * float(sq.mean()) / var) < bound
    rec_bound = 6 * 2 * float((sq * sq_hat).sum().sqrt()) / 6**0.5 / len(sq) / var
    assert abs(v["len_heldout_randrec_past"] - float((sq + sq_hat).mean()) / var) < rec_bound
    assert v["len_heldout_randrec_past"] > 50 * v["len_heldout_rand_past"]
    assert v["len_sae_over_random"] == pytest.approx(v["len_heldout_past"] / v["len_heldout_rand_past"], rel=1e-12)
    assert v["len_sae_over_randrec"] == pytest.approx(v["len_heldout_past"] / v["len_heldout_randrec_past"], rel=1e-12)
    mean_ref = float((x[past] - xi.mean(0)).pow(2).sum(1).mean()) / var
    assert v["len_heldout_mean_past"] == pytest.approx(mean_ref, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# "as if at position q": the positional features' pattern past the context vs inside it
# ----------------------------------------------------------------------------------------------


def test_as_if_saturating_profiles_copy_the_last_position():
    C, n = 5, 12
    code = torch.zeros(n, 3, dtype=torch.float64)
    code[1:C, 0] = torch.tensor([1.0, 0.6, 0.3, 0.1])  # decays inside the context
    code[1:C, 1] = torch.tensor([0.0, 0.2, 0.5, 0.9])  # grows inside the context
    code[1:C, 2] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    code[C:] = code[C - 1] * torch.linspace(1.0, 3.0, n - C, dtype=torch.float64)[:, None]  # saturates (and grows)
    df = L.as_if_positions(code, C)
    assert df.index.tolist() == list(range(C, n)) and df.as_if.tolist() == [C - 1] * (n - C)
    assert df.cosine.tolist() == pytest.approx([1.0] * (n - C))
    assert df.norm_ratio.iloc[-1] == pytest.approx(3.0)
    s = L.as_if_summary(df, C, features=3)
    assert (s.last_share, s.earlier_share, s.median_q, s.matched_share) == (1.0, 0.0, C - 1, 1.0)
    assert "acts as if at its last position, 4" in L.as_if_sentence(s, C)
    # one feature alone: every in-context position has cosine 1; the one closest in norm (the last) wins the tie
    ramp = torch.zeros(n, 1, dtype=torch.float64)
    ramp[:, 0] = torch.arange(n, dtype=torch.float64)
    assert L.as_if_positions(ramp, C).as_if.tolist() == [C - 1] * (n - C)
    ramp[C:, 0] = 2.5  # now closest in norm to positions 2 and 3: a tie, the later one wins
    assert L.as_if_positions(ramp, C).as_if.tolist() == [3] * (n - C)


def test_as_if_periodic_profiles_map_to_earlier_positions():
    C, n, period = 7, 20, 4
    code = torch.eye(period, dtype=torch.float64)[torch.arange(n) % period]  # one-hot of p mod 4
    df = L.as_if_positions(code, C)
    expected = [max(q for q in range(1, C) if q % period == p % period) for p in range(C, n)]
    assert df.as_if.tolist() == expected and df.cosine.tolist() == pytest.approx([1.0] * (n - C))
    s = L.as_if_summary(df, C, features=period)
    last = sum(q == C - 1 for q in expected) / len(expected)
    assert (s.last_share, s.earlier_share) == (pytest.approx(last), pytest.approx(1 - last)) and last < 0.5
    assert s.median_q == float(pd.Series(expected).median())
    assert "acts as if at earlier positions" in L.as_if_sentence(s, C)


def test_as_if_says_neither_when_the_cosines_are_low():
    C, n = 4, 9
    code = torch.zeros(n, 3, dtype=torch.float64)
    code[1:C, 0] = 1.0
    code[1:C, 1] = torch.tensor([0.0, 0.5, 1.0])
    code[C:, 2] = 1.0  # past the context only a feature silent inside it is active
    code[C, 1] = 0.2
    df = L.as_if_positions(code, C)
    assert df.cosine.iloc[1:].tolist() == [0.0] * (n - C - 1) and 0 < df.cosine.iloc[0] < L.ASIF_COSINE
    s = L.as_if_summary(df, C, features=3)
    assert s.matched_share == 0.0 and s.median_cosine < L.ASIF_COSINE
    text = L.as_if_sentence(s, C)
    assert "acts as if at no position it was trained on" in text and f"median nearest position {s.median_q:g}" in text
    none = L.as_if_summary(L.as_if_positions(torch.zeros(n, 0, dtype=torch.float64), C), C, features=0)
    assert L.as_if_sentence(none, C).startswith("With no positional feature")


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
    ex = L.all_token_position_sums(W_E, W_pos, sae, batch_rows=64, method="exact", progress=False)
    bf = L.all_token_position_sums(W_E, W_pos, sae, batch_rows=64, method="brute_force", progress=False)
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
    assert "more than 99.9% of the spurious pairs" in L.spurious_sentence(
        L.SpuriousSummary(1.0, 2.0, 70, 0.8, 0.99996, 80, 100))
    # the SAE far above the input-norm baseline and level with the reconstruction-norm one (the organism's case)
    both = L.random_sentence(9373.0, 2.0, 9367.0)
    assert "4,686 times that of a random vector with the input's norm (2)" in both
    assert "farther from its input than a random guess" in both
    assert "(9,367) it is within 10%" in both and "not the study's reading" in both
    assert "5 times smaller than that of a random vector" in L.random_sentence(1.0, 5.0, 5.0)
    assert "keeps part of the input's direction" in L.random_sentence(1.0, 5.0, 5.0)
    assert "within 10% of that of a random vector with the input's norm" in L.random_sentence(2.05, 2.0, 9.0)
    assert L.positional_sentence(0, None, 64).startswith("This SAE has no feature")
    assert L.spurious_sentence(L.SpuriousSummary(0.0, 0.0, 64, 0.0, 0.0, 0, 10)).startswith("No feature fires")
    assert L.example_sentence(None, "", "", 0.0, 10).startswith("No non-positional feature")
    near = pd.DataFrame({"nearest_inside": [1, 1, 1, 1], "cosine": [1.0, 1.0, 0.9, 0.8]})
    assert L.nearest_sentence(near, 2).startswith("Every row of W_pos past the context")


def fix_summaries(a_in, a_past, b_past, c_past, control=True):
    s = {L.SAE_LABEL: L.ErrorSummary(1, 1e5, 0.06, 9373.0), L.TOKEN_ONLY_LABEL: L.ErrorSummary(1, 1, a_in, a_past), L.CLAMP_LABEL: L.ErrorSummary(1, 1, 0.06, b_past),
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
    assert set(result.fix_summaries()) == {L.SAE_LABEL, *L.FIX_LABELS.values()}  # the baselines are not fixes
    assert result.fix_table.index.tolist() == [L.SAE_LABEL, *L.FIX_LABELS.values()]
    shown = [(d, m) for d in ("held-out text", "all tokens") for m in (L.SAE_LABEL, *L.BASELINE_LABELS)]
    assert result.error_table.index.tolist() == shown
    for curves in (result.heldout_curves, result.alltok_curves):
        assert set(L.BASELINE_LABELS) <= set(curves.method)


def test_analyze_glues_the_pooled_spurious_share_and_the_as_if_positions(tiny):
    model, sae, _, _, result = tiny
    v = result.glued()
    acts, spur = brute_spurious(model.W_E.detach(), model.W_pos.detach(), sae, 4)
    assert v["len_spur_n_spurious"] == int(spur.sum()) > 0
    assert v["len_spur_n_firings"] == int((acts[:, 4:] > 0).sum())  # every firing past the context, every token
    assert v["len_spur_share"] == pytest.approx(v["len_spur_n_spurious"] / v["len_spur_n_firings"], rel=1e-15)
    assert f"{v['len_spur_n_spurious']:,} of the {v['len_spur_n_firings']:,}" in v["len_spurious_sentence"]
    assert v["len_asif_last_share"] + v["len_asif_earlier_share"] == pytest.approx(1.0)
    assert result.as_if.index.tolist() == list(range(4, 10)) and result.as_if.as_if.between(1, 3).all()
    assert v["len_asif_median_q"] == float(result.as_if.as_if.median())
    assert v["len_asif_threshold"] == L.ASIF_COSINE and isinstance(v["len_asif_sentence"], str)


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
    three = pd.concat([df[df.method == "s"].assign(method=m) for m in (L.SAE_LABEL, *L.BASELINE_LABELS)])
    fig = error_vs_position_figure({"text": three}, 2)
    assert [t.name for t in fig.data] == [L.SAE_LABEL, *L.BASELINE_LABELS]  # each baseline labelled in the legend
    assert [t.line.dash for t in fig.data] == [None, "dot", "dash", "dashdot"]
    rates = L.spurious_rate_frame(torch.tensor([[0, 0], [3, 1]]), 4, torch.tensor([True, False]), torch.tensor([1.0, 2.0]))
    fig = spurious_rate_figure(rates, 1)
    assert [t.name for t in fig.data] == ["non-positional features", "positional features", "spurious / L0"]
    assert list(fig.data[2].y) == [0.0, 0.5]
    empty = pd.DataFrame(columns=["token", "feature", "position", "activation", "label"])
    assert "no spurious example found" in [a.text for a in example_profile_figure(empty, 4).layout.annotations]
    no_features = pd.DataFrame(columns=["position", "mean", "feature"])
    assert "no positional feature" in [a.text for a in positional_profiles_figure(no_features, 4).layout.annotations]
