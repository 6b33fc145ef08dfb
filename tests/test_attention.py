"""The fused attention path (possae.attention) against transformer_lens's own, and when it must not be taken."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from possae.attention import fusable, max_fused_difference, use_fused_attention


def tiny_model(**overrides) -> HookedTransformer:
    """Return a random 2-layer HookedTransformer (seeded) with the given config overrides."""
    cfg = dict(d_model=32, d_head=8, n_heads=4, d_mlp=64, n_layers=2, n_ctx=64, d_vocab=50, act_fn="gelu_new",
               normalization_type="LN", seed=0)
    cfg.update(overrides)
    if cfg.get("positional_embedding_type") == "rotary":
        cfg.setdefault("rotary_dim", cfg["d_head"])
    return HookedTransformer(HookedTransformerConfig(**cfg)).eval()


def tokens(n: int = 3, pos: int = 64) -> torch.Tensor:
    return torch.randint(0, 50, (n, pos), generator=torch.Generator().manual_seed(1))


def fused_modules(model) -> int:
    return sum("forward" in vars(b.attn) for b in model.blocks)


@pytest.mark.parametrize("embedding", ["standard", "rotary"])
def test_fused_logits_agree_with_transformer_lens(embedding):
    model = use_fused_attention(tiny_model(positional_embedding_type=embedding))
    assert fused_modules(model) == 2
    assert max_fused_difference(model, tokens()) < 1e-5
    # and shorter windows than n_ctx (the causal mask is per window, not per n_ctx)
    assert max_fused_difference(model, tokens(2, 17)) < 1e-5


def test_fused_path_is_taken_and_differs_only_by_rounding():
    model = tiny_model()
    plain = model(tokens())
    use_fused_attention(model)
    seen = []
    model.blocks[0].attn.hook_z.add_hook(lambda z, hook: seen.append(z.shape))
    fused = model(tokens())
    model.reset_hooks()
    assert seen == [torch.Size([3, 64, 4, 8])]  # hook_z still fires on the fused path
    assert 0 < float((fused - plain).abs().max().detach()) < 1e-5  # not transformer_lens's own path: another rounding


def test_a_hook_on_the_pattern_takes_transformer_lens_path_exactly():
    model = tiny_model()
    plain_logits, plain_cache = model.run_with_cache(tokens(), names_filter=lambda n: n.endswith("hook_pattern"))
    use_fused_attention(model)
    logits, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.endswith("hook_pattern"))
    assert torch.equal(logits, plain_logits)
    assert torch.equal(cache["blocks.1.attn.hook_pattern"], plain_cache["blocks.1.attn.hook_pattern"])
    scores = []
    for block in model.blocks:  # a hook on one block's scores sends that block alone down transformer_lens's path
        block.attn.hook_attn_scores.add_hook(lambda s, hook: scores.append(s.shape))
    assert torch.equal(model(tokens()), tiny_model()(tokens()))
    model.reset_hooks()
    assert scores == [torch.Size([3, 4, 64, 64])] * 2


def test_an_attention_mask_takes_transformer_lens_path_exactly():
    model = tiny_model()
    mask = torch.ones(3, 64, dtype=torch.long)
    mask[0, :5] = 0
    plain = model(tokens(), attention_mask=mask)
    assert torch.equal(use_fused_attention(model)(tokens(), attention_mask=mask), plain)


@pytest.mark.parametrize("override", [{"attn_scores_soft_cap": 30.0}, {"use_attn_result": True},
                                      {"attention_dir": "bidirectional"}, {"positional_embedding_type": "alibi"}])
def test_configurations_the_kernel_does_not_compute_are_left_alone(override):
    model = tiny_model(**override)
    assert not fusable(model.blocks[0].attn)
    assert fused_modules(use_fused_attention(model)) == 0


def test_models_the_book_loads_run_fused():
    from possae.loaders import load_model

    model = load_model("organism", device="cpu")
    assert fused_modules(model) == model.cfg.n_layers
    assert max_fused_difference(model, tokens(2, 256) % model.cfg.d_vocab) < 1e-4
