"""A fused path for transformer_lens's plain causal attention: torch's scaled_dot_product_attention in place of the
explicit scores, mask, softmax and pattern, taken only when no hook reads the scores or the pattern.

transformer_lens materialises every (query, key) score four or five times over (scores, masked scores, pattern, the NaN
guard on it); at the organisms' 1,024 positions that is most of a forward pass on a CPU. The fused kernel computes the
same attention in one pass. Every hook the book uses (hook_q/k/v, hook_rot_q/k, hook_z and everything outside the
attention) still fires; hook_attn_scores and hook_pattern exist only on transformer_lens's own path, so a model with a
hook on either (run_with_cache of a pattern included) runs that path.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor

# configurations whose attention is the plain causal one the fused kernel computes (rotary applied to q and k first)
FUSED_EMBEDDINGS = ("standard", "rotary")


def fusable(attn) -> bool:
    """Return whether an attention module's configuration is one the fused path computes exactly as transformer_lens."""
    from transformer_lens.components import Attention
    from transformer_lens.utilities.activation_functions import softcap_enabled

    cfg = attn.cfg
    return (type(attn) is Attention and cfg.positional_embedding_type in FUSED_EMBEDDINGS
            and cfg.attention_dir == "causal" and not cfg.use_attn_result and not cfg.load_in_4bit
            and not softcap_enabled(cfg.attn_scores_soft_cap) and not cfg.use_logn_attn and cfg.clip_qkv is None
            and not getattr(cfg, "use_attention_sinks", False) and not getattr(cfg, "use_qk_norm", False)
            and getattr(attn, "q_norm", None) is None)


def _observed(hook_point) -> bool:
    """Return whether any hook is attached to a transformer_lens HookPoint."""
    return bool(hook_point.fwd_hooks or hook_point.bwd_hooks or hook_point._forward_hooks
                or hook_point._forward_pre_hooks)


def fused_forward(attn, query_input: Tensor, key_input: Tensor, value_input: Tensor, past_kv_cache_entry=None,
                  additive_attention_mask=None, attention_mask=None, position_bias=None) -> Tensor:
    """Return the attention block's output (batch, pos, d_model): fused when nothing asks for more than a plain causal
    attention, else transformer_lens's own forward."""
    if (past_kv_cache_entry is not None or additive_attention_mask is not None or attention_mask is not None
            or position_bias is not None or attn._attention_dir_override is not None
            or _observed(attn.hook_attn_scores) or _observed(attn.hook_pattern)):
        return type(attn).forward(attn, query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)  # (batch, pos, head, d_head)
    if attn.cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(attn.apply_rotary(q, 0, None))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, None))
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2).to(q.dtype),
                                       is_causal=True, scale=1.0 / float(attn.attn_scale))
    z = attn.hook_z(z.transpose(1, 2))  # (batch, pos, head, d_head)
    w = attn.W_O.reshape(-1, attn.W_O.shape[-1]).T  # (d_model, head * d_head), as transformer_lens arranges it
    return F.linear(z.reshape(*z.shape[:2], -1).to(w.dtype), w, attn.b_O)


def use_fused_attention(model):
    """Return the model with every fusable attention module's forward replaced by fused_forward (in place)."""
    for block in getattr(model, "blocks", ()):
        if fusable(block.attn):
            block.attn.forward = types.MethodType(fused_forward, block.attn)
    return model


@torch.no_grad()
def max_fused_difference(model, tokens: Tensor) -> float:
    """Return the largest absolute difference between the model's logits on the fused path and on transformer_lens's
    own (the fused modules' own forward restored for the second pass)."""
    fused = model(tokens)
    saved = {}
    for i, block in enumerate(getattr(model, "blocks", ())):
        if "forward" in vars(block.attn):
            saved[i] = vars(block.attn).pop("forward")
    try:
        plain = model(tokens)
    finally:
        for i, fwd in saved.items():
            model.blocks[i].attn.forward = fwd
    return float((fused - plain).abs().max())
