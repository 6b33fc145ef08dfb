"""Hook names, layers and the facts of an SAE's hook: one place builds and reads every hook name possae uses.

Like TransformerLens's ``utils.get_act_name`` (which :func:`act_name` wraps), every hook name in the package comes
from here, and so do an SAE's layer, its training context and the layer-0 check.
"""

from __future__ import annotations

TOKEN_EMBED = "hook_embed"  # W_E[token]
POS_EMBED = "hook_pos_embed"  # W_pos[position]


def act_name(kind: str, layer: int | None = None) -> str:
    """Return the TransformerLens hook name of an activation, e.g. act_name('resid_pre', 0) -> 'blocks.0.hook_resid_pre'."""
    from transformer_lens.utilities import get_act_name  # imported here: possae.hooks stays light for `possae run`'s checks

    return get_act_name(kind, layer)


# the residual stream entering block 0: exactly W_E[t] + W_pos[p] (a test checks it is act_name("resid_pre", 0))
LAYER0_INPUT = "blocks.0.hook_resid_pre"


def resid_pre(layer: int) -> str:
    """Return the name of the residual stream entering block `layer`."""
    return act_name("resid_pre", layer)


def hook_layer(hook: str | None) -> int:
    """Return the block index L of a hook name 'blocks.L.<hook>'."""
    parts = (hook or "").split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"SAE hook {hook!r} is not inside a transformer block (expected 'blocks.L.<hook>').")
    return int(parts[1])


def sae_hook(sae) -> str:
    """Return the hook an SAE reads."""
    return sae.cfg.metadata.hook_name


def sae_layer(sae) -> int:
    """Return the block index of an SAE's hook (e.g. 0 for blocks.0.hook_resid_pre)."""
    return hook_layer(sae_hook(sae))


def sae_context_size(sae, n_ctx: int) -> int:
    """Return the number of positions an SAE was trained on: its cfg's context_size, clamped to n_ctx (n_ctx if unset)."""
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1; got {n_ctx}.")
    ctx = sae.cfg.metadata.context_size
    return n_ctx if ctx is None else max(1, min(int(ctx), n_ctx))


def sae_family(sae) -> str:
    """Return 'ReLU' for standard (L1) SAEs, 'TopK' for TopK and BatchTopK ones, else the architecture's name."""
    arch = sae.cfg.architecture()
    return {"standard": "ReLU", "topk": "TopK", "batchtopk": "TopK"}.get(arch, arch)


def is_layer0(sae) -> bool:
    """Return whether an SAE reads the layer-0 residual stream, whose input is W_E[token] + W_pos[position]."""
    return sae_hook(sae) == LAYER0_INPUT


def require_layer0(sae, chapter: str = "this chapter") -> None:
    """Raise ValueError unless the SAE (or an SAE's hook name) reads blocks.0.hook_resid_pre; the message names a
    layer-0 SAE to pass."""
    hook = sae if isinstance(sae, str) else sae_hook(sae)
    if hook != LAYER0_INPUT:
        raise ValueError(
            f"{chapter} studies layer-0 SAEs at {LAYER0_INPUT!r} (input W_E[token] + W_pos[position]), "
            f"but this SAE reads {hook!r}. Pass a layer-0 SAE, e.g. -p sae_release organism -p sae_id "
            "relu-short, or -p sae_release gpt2-small-res-jb -p sae_id blocks.0.hook_resid_pre."
        )


FIRST_TEXT_POSITION = 1  # position 0 always holds BOS in possae's (and sae_lens's) BOS-prefixed windows


def in_context_positions(context_size: int, n_ctx: int, first: int = FIRST_TEXT_POSITION) -> range:
    """Return range(first, context_size): the positions inside an SAE's training context that held ordinary tokens.

    This is the one definition of "inside the context" for every count of positional or semantic features.
    """
    if not 1 <= context_size <= n_ctx:
        raise ValueError(f"context_size must lie in 1..n_ctx={n_ctx}; got {context_size}.")
    if not 0 <= first < context_size:
        raise ValueError(f"first must lie in 0..context_size-1={context_size - 1}; got {first}.")
    return range(first, context_size)


def hook_activations(model, tokens, hook: str):
    """Return the model's activations at `hook` on `tokens` (batch, pos, ...), running no block past the hook's: a
    residual stream entering block L comes from the forward pass stopped before block L (TransformerLens returns that
    residual exactly, as block L's hook_resid_pre would see it), any other hook from the pass stopped after its block."""
    layer = hook_layer(hook)
    if hook == resid_pre(layer):
        return model(tokens, stop_at_layer=layer)
    _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1)
    return cache[hook]
