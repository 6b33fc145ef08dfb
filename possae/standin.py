"""Stand-in Hugging Face cache for the gpt2 profile: GPT-2 small's exact shapes, offline.

`write_standin_cache(cache, data)` writes, in the layout huggingface_hub reads (``models--ORG--NAME/snapshots/REV``
and ``refs/main``), a ``gpt2`` checkpoint with GPT-2 small's config, its real ``W_pos`` (the evaluation pack's copy)
and tokenizer (``$POSSAE_DATA/gpt2-small``), every other weight random at GPT-2-like scale; and every SAE the gpt2
profile names, at the repo and path sae_lens's ``pretrained_saes.yaml`` gives, with the cfg fields those hub files
carry (pre-6.0 names: ``hook_point``, ``activation_fn_str``, ``context_size`` ...), random weights. With
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing there, ``load_model("gpt2-small")`` and
``load_sae("gpt2-small-res-jb", ...)`` load by name through transformer_lens's and sae_lens's own ``from_pretrained``.
Numbers computed on it describe random weights, not GPT-2.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from possae.hooks import hook_layer
from possae.sae_files import hub_cache

REVISION = hashlib.sha1(b"possae stand-in for the gpt2 profile").hexdigest()  # any 40-hex commit id works
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": None,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "scale_attn_weights": True, "use_cache": True,
    "vocab_size": 50257,
}
TOKEN_EMBED_STD = 0.14  # about GPT-2 small's wte entry scale
D_SAE = 24_576
SAE_CONTEXT = 128
SAE_SEED_OFFSET = 7_919
SAE_B_ENC = -0.65  # encoder bias: layer-0 inputs project on a unit direction with a std of about 0.2, so about 20 fire
MARKER = "possae-standin.json"  # written at the cache's root: pages built from this cache say so
BANNER = ("**Stand-in weights.** This page was built from possae's offline stand-in of the Hugging Face cache "
          "(`possae standin`): gpt2-small's shapes, its real positional embedding and tokenizer, but every other weight "
          "of the model and of its SAEs is random. Its numbers describe random weights, not GPT-2; they show that the "
          "gpt2 profile runs, how long it takes and how much memory it needs.")


def standin_active() -> bool:
    """Return whether the hub cache in use is possae's stand-in (its marker file is there)."""
    return (hub_cache() / MARKER).is_file()


def snapshot(cache: Path, repo_id: str) -> Path:
    """Return (creating it) the snapshot folder of a model repo in a hub cache, with refs/main pointing at it."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)  # no trailing newline: sae_lens reads it verbatim
    folder = repo / "snapshots" / REVISION
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def gpt2_state_dict(W_pos: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a GPT-2 small state dict under GPT-2's own key names (Conv1D orientation): W_pos given, the rest random."""
    c = GPT2_CONFIG
    d, n_layer, d_mlp, std = c["n_embd"], c["n_layer"], 4 * c["n_embd"], c["initializer_range"]
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    state = {"wte.weight": normal(c["vocab_size"], d, scale=TOKEN_EMBED_STD), "wpe.weight": W_pos.float().clone(),
             "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)}
    proj_std = std / (2 * n_layer) ** 0.5
    for i in range(n_layer):
        h = f"h.{i}."
        state |= {h + "ln_1.weight": torch.ones(d), h + "ln_1.bias": torch.zeros(d),
                  h + "ln_2.weight": torch.ones(d), h + "ln_2.bias": torch.zeros(d),
                  h + "attn.c_attn.weight": normal(d, 3 * d), h + "attn.c_attn.bias": torch.zeros(3 * d),
                  h + "attn.c_proj.weight": normal(d, d, scale=proj_std), h + "attn.c_proj.bias": torch.zeros(d),
                  h + "mlp.c_fc.weight": normal(d, d_mlp), h + "mlp.c_fc.bias": torch.zeros(d_mlp),
                  h + "mlp.c_proj.weight": normal(d_mlp, d, scale=proj_std), h + "mlp.c_proj.bias": torch.zeros(d)}
    return state


def write_gpt2(cache: Path, tokenizer_dir: Path, W_pos: torch.Tensor, seed: int = 0) -> Path:
    """Write the `gpt2` stand-in (config, weights, vocab.json, merges.txt) into a hub cache; return its snapshot."""
    from safetensors.torch import save_file

    folder = snapshot(cache, "gpt2")
    (folder / "config.json").write_text(json.dumps(GPT2_CONFIG, indent=1))
    shutil.copy(Path(tokenizer_dir) / "encoder.json", folder / "vocab.json")
    shutil.copy(Path(tokenizer_dir) / "vocab.bpe", folder / "merges.txt")
    save_file({k: v.contiguous() for k, v in gpt2_state_dict(W_pos, seed).items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def jb_sae_cfg(hook: str, d_in: int = 768, d_sae: int = D_SAE) -> dict:
    """Return the cfg.json fields a gpt2-small-res-jb SAE carries on the hub (pre-6.0 sae_lens names)."""
    return {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": hook_layer(hook),
            "hook_point_head_index": None, "d_in": d_in, "d_sae": d_sae, "dtype": "torch.float32", "device": "cpu",
            "context_size": SAE_CONTEXT, "activation_fn_str": "relu", "apply_b_dec_to_input": True,
            "finetuning_scaling_factor": False, "normalize_activations": "none", "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext", "dataset_trust_remote_code": True, "sae_lens_training_version": None}


def write_sae(cache: Path, release: str, sae_id: str, seed: int = 0) -> Path:
    """Write one random-weight SAE of a sae_lens release at the repo and path its registry gives; return its folder."""
    from safetensors.torch import save_file
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()[release]
    folder = snapshot(cache, entry.repo_id) / entry.saes_map[sae_id]
    folder.mkdir(parents=True, exist_ok=True)
    cfg = jb_sae_cfg(sae_id)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    # an offset keeps these decoders apart from possae.matching.random_directions's baseline (seed 0)
    g = torch.Generator().manual_seed(SAE_SEED_OFFSET + 1000 * seed + hook_layer(sae_id))
    d, F = cfg["d_in"], cfg["d_sae"]
    W_dec = torch.nn.functional.normalize(torch.randn(F, d, generator=g), dim=-1)
    save_file({"W_enc": W_dec.T.contiguous(), "W_dec": W_dec, "b_enc": torch.full((F,), SAE_B_ENC),
               "b_dec": torch.zeros(d)}, str(folder / "sae_weights.safetensors"))
    return folder


def write_standin_cache(cache: Path, data: Path, saes: list[tuple[str, str]], seed: int = 0) -> Path:
    """Write the gpt2 stand-in and the SAEs `saes` ((release, id) pairs, e.g. book.profile_saes('gpt2')) into the
    hub cache folder `cache`; return it."""
    from possae.wpos import load_gpt2_wpos

    cache = Path(cache)
    tokenizer_dir = Path(data) / "gpt2-small"
    if not (tokenizer_dir / "encoder.json").is_file():
        raise FileNotFoundError(f"GPT-2's tokenizer (encoder.json, vocab.bpe) is not in {tokenizer_dir}: pass the "
                                "data folder (--data or $POSSAE_DATA) that holds gpt2-small/.")
    write_gpt2(cache, tokenizer_dir, load_gpt2_wpos(), seed)
    for release, sae_id in saes:
        write_sae(cache, release, sae_id, seed)
    (cache / MARKER).write_text(json.dumps({"seed": seed, "revision": REVISION,
                                            "saes": [list(pair) for pair in saes]}, indent=1))
    return cache
