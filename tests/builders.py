"""Random in-memory SAEs and embedding matrices shared by the tests (imported as `builders`: tests/ is on sys.path)."""

import torch
from sae_lens import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from possae.hooks import LAYER0_INPUT as LAYER0_HOOK

KINDS = {
    "standard": (StandardSAE, StandardSAEConfig),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
    "topk": (TopKSAE, TopKSAEConfig),
    "gated": (GatedSAE, GatedSAEConfig),
}


def make_sae(kind="standard", d=6, F=15, seed=0, dtype="float64", hook=LAYER0_HOOK, **cfg_kw):
    """Return a random in-memory SAE of this kind whose features fire on a good share of inputs."""
    cls, cfg_cls = KINDS[kind]
    cfg = cfg_cls(d_in=d, d_sae=F, dtype=dtype, **cfg_kw)
    cfg.metadata.hook_name = hook
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, F, generator=g))
        sae.b_dec.copy_(0.5 * torch.randn(d, generator=g))
        if kind == "gated":  # gate and magnitude thresholds differ, in both orders
            sae.b_gate.copy_(torch.randn(F, generator=g) * 2 - 2)
            sae.b_mag.copy_(torch.randn(F, generator=g) * 2 - 1)
            sae.r_mag.copy_(0.5 * torch.randn(F, generator=g))
        else:
            sae.b_enc.copy_(torch.randn(F, generator=g) * 2 - 2)
        if kind == "jumprelu":  # some thresholds negative, to exercise relu(h) * (h > theta)
            sae.threshold.copy_(torch.rand(F, generator=g) * 2.0 - 0.5)
        sae.W_dec.copy_(0.3 * torch.randn(F, d, generator=g))
    return sae


def make_weights(V=40, d=6, n=12, seed=0, pos_scale=0.8, dtype=torch.float64):
    """Return random (W_E (V, d), W_pos (n, d)) with a sizeable positional part."""
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(V, d, generator=g).to(dtype), (pos_scale * torch.randn(n, d, generator=g)).to(dtype)


def make_tiny_model(n_layers=1, n_ctx=10, seed=0):
    """Return a float64 HookedTransformer (d_model 6) with the organism's tokenizer, randomly initialised."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from possae.organism.data import ARTIFACTS, TOKENIZER_DIR
    from possae.tokenizer import load_hf_tokenizer

    tok = load_hf_tokenizer(ARTIFACTS / TOKENIZER_DIR)
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=6, n_ctx=n_ctx, d_head=3, n_heads=2, d_mlp=12,
                                  d_vocab=tok.vocab_size, act_fn="gelu", normalization_type="LN",
                                  dtype=torch.float64, device="cpu")
    return HookedTransformer(cfg, tokenizer=tok, default_padding_side="right")
