"""possae.metrics: the per-position accumulator, the error measures (against sae_lens's evals) and R2_pos."""

from __future__ import annotations

import pytest
import torch

from possae.metrics import (
    LOGITS_PER_BATCH,
    PositionSums,
    next_token_ce,
    next_token_ce_of,
    nmse_by_position,
    pooled_nmse,
    r2_pos,
    reconstruction_sums,
    sae_quality,
    total_variance,
    windows_per_batch,
)


def test_position_sums_add_and_add_windows_agree():
    """Adding (batch, pos) windows equals adding the flattened inputs with their positions; means are exact."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    a = PositionSums.empty(6).add_windows(v=v)
    b = PositionSums.empty(6).add(torch.arange(5).repeat(3), v=v.flatten(0, 1))
    assert torch.equal(a.n, torch.tensor([3.0] * 5 + [0.0], dtype=torch.float64))
    assert torch.allclose(a.totals["v"], b.totals["v"])
    assert torch.allclose(a.mean("v")[:5], v.mean(0))
    assert torch.isnan(a.mean("v")[5]).all()
    with pytest.raises(ValueError, match="positions must lie in 0..5"):
        a.add(torch.tensor([6]), v=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="same quantities"):
        a.add(torch.tensor([0]), w=torch.zeros(1, 4))


def test_pooled_nmse_is_one_minus_explained_variance_and_the_curve_averages_to_it():
    """On constructed inputs: pooled nMSE = SSE / SS about the mean; the input-weighted curve mean over the reference equals it."""
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    x_hat = x + torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    s = PositionSums.empty(3).add(torch.tensor([0, 0, 1, 2]), **reconstruction_sums(x, {"m": x_hat}))
    where = s.mask()
    # mean (1.5, 1); SS about it = 0.25+1 + 2.25+1 + 2.25+1 + 0.25+1 = 9, over 4 inputs: variance 2.25; SSE = 2
    assert total_variance(s, where) == pytest.approx(2.25)
    assert pooled_nmse(s, "m", where) == pytest.approx(2 / 9)
    curve = nmse_by_position(s, "m", where)
    assert torch.allclose(curve, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64) / 2.25)
    assert float((curve * s.n).sum() / s.n.sum()) == pytest.approx(2 / 9)


def test_r2_pos_exact_on_a_constructed_unit():
    """Means (0, 2) at two positions, within variances (1, 1): Var_p = 1, total 2, R2_pos = 0.5; weights shift it."""
    mean = torch.tensor([[0.0, 5.0], [2.0, 5.0]], dtype=torch.float64)
    var = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(r2_pos(mean, var), torch.tensor([0.5, 0.0], dtype=torch.float64))
    # weights 3:1 -> grand 0.5, Var_p = 0.75, total 1.75
    assert float(r2_pos(mean, var, torch.tensor([3.0, 1.0]))[0]) == pytest.approx(0.75 / 1.75)


def test_sae_quality_explained_variance_matches_position_sums(organism_model_and_sae):
    """sae_lens's explained variance over BOS-free windows equals 1 - pooled nMSE from PositionSums (two methods)."""
    model, sae = organism_model_and_sae
    g = torch.Generator().manual_seed(1)
    bos = model.tokenizer.bos_token_id
    tokens = torch.randint(0, model.cfg.d_vocab, (8, 16), generator=g)
    tokens[tokens == bos] = (bos + 1) % model.cfg.d_vocab
    for special in {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id} - {None}:
        tokens[tokens == special] = 7
    q = sae_quality(model, sae, tokens, batch_size=4, spliced_loss=False)
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name, stop_at_layer=1)
    x = cache[sae.cfg.metadata.hook_name].flatten(0, 1)
    s = PositionSums.empty(16).add(torch.arange(16).repeat(8), **reconstruction_sums(x, {"SAE": sae(x)}))
    assert q["tokens"] == 128
    assert q["explained_variance"] == pytest.approx(1 - pooled_nmse(s, "SAE", s.mask()), abs=1e-6)
    assert q["nmse"] == pytest.approx(1 - q["explained_variance"])
    assert q["mse"] == pytest.approx(float(s.totals["sse:SAE"].sum()) / 128, rel=1e-5)
    assert q["l0"] == pytest.approx(float((sae.encode(x) > 0).sum()) / 128, rel=1e-6)


def test_spliced_loss_on_evenly_spread_windows_equals_the_loss_of_those_windows(organism_model_and_sae):
    """loss_windows=n measures the spliced loss on exactly n evenly spread windows; the other metrics use them all."""
    from possae.metrics import loss_subset

    assert loss_subset(6, 2).tolist() == [0, 5] and loss_subset(9, 3).tolist() == [0, 4, 8]
    assert loss_subset(4, None).tolist() == [0, 1, 2, 3] and loss_subset(4, 10).tolist() == [0, 1, 2, 3]
    model, sae = organism_model_and_sae
    tokens = torch.randint(1, model.cfg.d_vocab, (6, 8), generator=torch.Generator().manual_seed(2))
    part = sae_quality(model, sae, tokens, batch_size=2, loss_windows=2)
    first = sae_quality(model, sae, tokens[torch.tensor([0, 5])], batch_size=2)
    whole = sae_quality(model, sae, tokens, batch_size=2, spliced_loss=False)
    assert part["ce_loss_with_sae"] == pytest.approx(first["ce_loss_with_sae"])
    assert part["loss_tokens"] == first["tokens"] and part["tokens"] == whole["tokens"]
    assert part["explained_variance"] == pytest.approx(whole["explained_variance"])


def test_next_token_ce_is_minus_log_softmax_of_the_target():
    """Against the definition: -log softmax(logits)[target], per position, in float32 for half logits too."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.stack([torch.stack([-(logits[b, p, targets[b, p]] - logits[b, p].exp().sum().log())
                                         for p in range(5)]) for b in range(3)])
    got = next_token_ce(logits, targets)
    assert got.shape == (3, 5) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    half = next_token_ce(logits.half(), targets)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), expected, atol=5e-3, rtol=0)
    # from the whole window's logits: each position scores the next token, the last position scores nothing
    whole = next_token_ce_of(logits, targets)
    assert whole.shape == (3, 4)
    torch.testing.assert_close(whole, next_token_ce(logits[:, :-1], targets[:, 1:]), rtol=0, atol=0)


def test_windows_per_batch_caps_the_logits_of_a_forward_pass():
    """On a CPU the organism takes 4 windows a pass and GPT-2 small at 1024 positions one; on a GPU 16 and 2."""
    from types import SimpleNamespace

    def model(vocab, device):
        return SimpleNamespace(cfg=SimpleNamespace(d_vocab_out=vocab, device=device))

    organism, gpt2 = model(8192, "cpu"), model(50_257, None)
    assert windows_per_batch(organism, 256) == 4 and windows_per_batch(gpt2, 1024) == 1
    assert windows_per_batch(gpt2, 128) * 128 * 50_257 <= LOGITS_PER_BATCH["cpu"] < (windows_per_batch(gpt2, 128) + 1) * 128 * 50_257
    assert windows_per_batch(model(8192, "cuda:0"), 256) == 16 and windows_per_batch(model(50_257, "cuda"), 1024) == 2
    assert windows_per_batch(model(50_257, "cpu"), 4096) == 1  # never fewer than one window
