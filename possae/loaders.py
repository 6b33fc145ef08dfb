"""Load a model (transformer_lens) and an SAE (sae_lens) by name: hub names, the organism, or local folders."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from possae.attention import use_fused_attention
from possae.devices import default_device
from possae.organism.recipe import (ARTIFACTS, GPT2POS_MODEL_NAME, GPT2POS_ROTARY_MODEL_NAME, ORGANISM_MODEL_NAME,
                                    ROTARY_MODEL_NAME)
from possae.sae_files import (  # noqa: F401  (the file checks are part of the loaders' interface)
    LOCAL_SAE_FIX,
    GPT2POS,
    GPT2POS_ROTARY,
    ORGANISM,
    ORGANISMS,
    ROTARY,
    BadWeightsError,
    CorruptFileError,
    check_finite,
    check_readable,
    check_sae_folder,
    hub_address,
    hub_reachable,
    is_path_like,
    organism_fix,
    organism_sae_ids,
    sae_folder,
)

MODEL_NAMES = {ORGANISM_MODEL_NAME: ORGANISM, ROTARY_MODEL_NAME: ROTARY, GPT2POS_MODEL_NAME: GPT2POS,
               GPT2POS_ROTARY_MODEL_NAME: GPT2POS_ROTARY}  # cfg model_name -> name
OFFLINE_HINT = (
    "Offline, run on the model organism shipped with possae: load_model('organism') and "
    "load_sae('organism', SAE_ID) (ids: {ids}), or the book's `organism` profile."
)


SAE_KWARGS_WARNING = r"\s*This SAE has non-empty model_from_pretrained_kwargs"  # sae_lens's UserWarning, start


class HubUnreachableError(RuntimeError):
    """The Hugging Face hub cannot be reached and the requested weights are not cached locally."""


@contextlib.contextmanager
def _hub_offline():
    """Make huggingface_hub use only its local cache for the duration (no retries against a dead network)."""
    import huggingface_hub.constants as c

    old = c.HF_HUB_OFFLINE
    c.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        c.HF_HUB_OFFLINE = old


def _from_hub(what: str, load):
    """Run `load()`; with no hub connection, try the local cache only and fail fast with a clear message."""
    if hub_reachable(hub_address()):
        return load()
    try:
        with _hub_offline():
            return load()
    except Exception as e:  # the hub libraries raise many kinds of error when a file is not cached
        raise HubUnreachableError(
            f"Cannot load {what}: the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE is set) "
            f"and it is not in the local cache. " + OFFLINE_HINT.format(ids=", ".join(organism_sae_ids()) or "none built")
        ) from e


# ---------------------------------------------------------------- models


def load_model(name: str = ORGANISM, device: str | None = None, **from_pretrained_kwargs: Any):
    """Return a transformer_lens HookedTransformer: 'organism', a local folder, or a transformer_lens model name; its
    plain causal attention runs fused (possae.attention) wherever no hook reads the scores or pattern."""
    return use_fused_attention(_load_model(name, device, **from_pretrained_kwargs))


def _load_model(name: str, device: str | None, **from_pretrained_kwargs: Any):
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    device = str(default_device(device))
    if name in ORGANISMS:
        return _load_organism_model(name, device)
    path = Path(name).expanduser().absolute()
    if path.is_dir():
        return _load_local_model(path, device, **from_pretrained_kwargs)
    if is_path_like(name):
        raise FileNotFoundError(f"Model folder {path} does not exist. Give an existing folder (a Hugging Face model "
                                "folder or one saved by possae), 'organism', or a transformer_lens model name.")
    try:
        official = get_official_model_name(name)
    except ValueError as e:
        raise ValueError(
            f"Unknown model {name!r}: it is neither 'organism', a local folder, nor a transformer_lens model "
            "name (see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)."
        ) from e
    def load():
        with contextlib.redirect_stdout(io.StringIO()):  # transformer_lens prints "Loaded pretrained model ..."
            return HookedTransformer.from_pretrained(official, device=device, **from_pretrained_kwargs)

    return _from_hub(f"model {official!r}", load)


def _load_organism_model(name: str, device: str):
    from possae.organism.lm import MODEL_DIR, load_saved_model

    folder = ORGANISMS[name] / MODEL_DIR
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"The {name} model is missing from {folder}: {organism_fix('model', name)}")
    check_readable(folder, ("config.json", "model.safetensors"), organism_fix("model", name))
    return load_saved_model(folder, ARTIFACTS / "tokenizer", device=device)  # the twin shares the tokenizer


def _load_local_model(path: Path, device: str, **from_pretrained_kwargs: Any):
    """Load a possae-format folder, or a Hugging Face model folder converted through transformer_lens."""
    from possae.organism.lm import load_saved_model

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: give a Hugging Face model folder or a possae model folder.")
    weights = [f.name for f in path.glob("*.safetensors")]
    check_readable(path, ("config.json", *weights), "Copy or save the model there again.")
    hf_cfg = json.loads(cfg_file.read_text())
    if "positional_embedding_type" in hf_cfg:
        tok = path.parent / "tokenizer"
        return load_saved_model(path, tok if tok.is_dir() else None, device=device)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path))
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model"))
    cfg_kwargs = {**_convert_hf_config(hf_cfg), "tokenizer_name": None, "model_name": path.name}
    cfg = HookedTransformerConfig(**cfg_kwargs, device=device)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(str(path)) if has_tokenizer else None)
    kwargs = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
              "fold_value_biases": True, "refactor_factored_attn_matrices": False}
    kwargs.update({k: v for k, v in from_pretrained_kwargs.items() if k in kwargs})
    model.load_and_process_state_dict(get_pretrained_state_dict(str(path), cfg, hf_model=hf), **kwargs)
    return model.to(device)


def _convert_hf_config(hf_cfg: dict) -> dict:
    """Return transformer_lens config kwargs for a Hugging Face config.json (GPT-2's n_ctx restored)."""
    import tempfile

    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    # transformers 5 drops GPT-2's n_ctx unless it is written out, and transformer_lens reads it
    if "n_positions" in hf_cfg and "n_ctx" not in hf_cfg:
        hf_cfg = {**hf_cfg, "n_ctx": hf_cfg["n_positions"]}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_cfg))
        return convert_hf_model_config(tmp)


# ---------------------------------------------------------------- SAEs


def load_sae(release: str = ORGANISM, sae_id: str | None = None, device: str | None = None):
    """Return a sae_lens SAE, its weights checked: the organism's, a local sae_lens folder's, or a release + id's.

    A local `release` is the folder of one SAE (sae_lens's `save_model` layout; `sae_id` None) or a folder of SAE
    folders (`sae_id` names one).
    """
    from sae_lens import SAE

    device = str(default_device(device))
    folder = sae_folder(release, sae_id)
    if folder is not None:
        fix = organism_fix("saes", release) if release in ORGANISMS else LOCAL_SAE_FIX
        check_sae_folder(folder, fix)
        return SAE.load_from_disk(folder, device=device)
    lookup = _pretrained_lookup(release, sae_id)
    sae = _from_hub(f"SAE {release!r} / {sae_id!r} (hub repo {lookup.repo_id})",
                    lambda: SAE.from_pretrained(release, sae_id, device=device))
    check_finite(sae.state_dict().items(), f"SAE {release!r} / {sae_id!r} (hub repo {lookup.repo_id})",
                 "Delete it from the Hugging Face cache (huggingface-cli delete-cache) and download it again.")
    return sae


def _pretrained_lookup(release: str, sae_id: str | None):
    """Return sae_lens's directory entry for a release, checking the release and id exist (preflight's one check)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from possae.preflight import check_hub_sae

    check_hub_sae(release, sae_id)
    return get_pretrained_saes_directory()[release]


def expected_model(release: str, sae_id: str | None = None, sae=None) -> tuple[str, dict]:
    """Return (model name, from_pretrained kwargs) an SAE was trained on, from the registry or the SAE's config."""
    if release in ORGANISMS:
        return release, {}
    if sae_folder(release, sae_id) is not None:
        meta = (sae or load_sae(release, sae_id, device="cpu")).cfg.metadata
        name = meta.model_name
        return (MODEL_NAMES.get(name or ORGANISM_MODEL_NAME, name)), dict(meta.model_from_pretrained_kwargs or {})
    lookup = _pretrained_lookup(release, sae_id)
    overrides = (lookup.config_overrides or {}).get("model_from_pretrained_kwargs", {})
    return lookup.model, dict(overrides)


# ---------------------------------------------------------------- checks


@torch.no_grad()
def check_sae_fits(model, sae) -> None:
    """Raise ValueError if the SAE's hook is not in the model or its d_in differs from the hook's width."""
    from possae.hooks import sae_layer

    hook = sae.cfg.metadata.hook_name
    if hook not in model.hook_dict:
        raise ValueError(
            f"SAE hook {hook!r} does not exist in model {model.cfg.model_name!r} "
            f"({model.cfg.n_layers} layers): pick an SAE trained on this model."
        )
    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=sae_layer(sae) + 1)
    width = cache[hook].shape[-1] if sae.cfg.reshape_activations == "none" else cache[hook].shape[-2:].numel()
    if width != sae.cfg.d_in:
        raise ValueError(
            f"SAE d_in {sae.cfg.d_in} does not match the width {width} of {hook!r} in model "
            f"{model.cfg.model_name!r}: the SAE was trained on another model ({sae.cfg.metadata.model_name!r})."
        )


def _load_sae_for_its_model(release: str, sae_id: str | None, device: str | None):
    """Return load_sae(...) without sae_lens's warning that the SAE wants its model loaded with its
    model_from_pretrained_kwargs: for callers whose model was loaded with them (it would land in a chapter's cell)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SAE_KWARGS_WARNING, category=UserWarning)
        return load_sae(release, sae_id, device)


def load_model_and_sae(release: str = ORGANISM, sae_id: str | None = "relu-short", device: str | None = None,
                       model_name: str | None = None, model=None):
    """Return (model, sae): the SAE, and its model (or `model_name`) loaded with the weight processing the SAE expects."""
    sae = _load_sae_for_its_model(release, sae_id, device)
    if model is None:
        name, kwargs = expected_model(release, sae_id, sae)
        model = load_model(model_name or name, device=str(default_device(device)), **kwargs)
    check_sae_fits(model, sae)
    return model, sae


def load_sae_for(model, release: str, sae_id: str | None, device: str | None = None):
    """Return the SAE, checked to fit `model`: a further SAE of the model that load_model_and_sae (or
    expected_model's kwargs) loaded with the weight processing the release expects."""
    sae = _load_sae_for_its_model(release, sae_id, device)
    check_sae_fits(model, sae)
    return sae
