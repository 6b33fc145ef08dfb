"""What `possae run` and `possae build` check before a chapter's kernel starts: its model, every SAE it names (their
folders, files, shapes and values), each SAE's hook against the model, and the device. Light: no torch unless a device
is named, no transformer_lens, no sae_lens."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from possae.hooks import hook_layer, require_layer0
from possae.sae_files import (
    LOCAL_SAE_FIX,
    ORGANISMS,
    check_readable,
    check_sae_folder,
    hub_cache,
    hub_reachable,
    is_path_like,
    organism_fix,
    organism_sae_ids,
    sae_cached,
    sae_folder,
    sae_hook_name,
)

# the parameters whose SAEs must read blocks.0.hook_resid_pre, per chapter (the chapters check this again on the SAEs)
LAYER0_PARAMS = {
    "positional": ("sae_id", "width_sweep_ids"),
    "semantic": ("sae_id",),
    "length_generalization": ("sae_id", "control_sae_id"),
    "past_context": ("sae_id", "control_sae_id"),
}
D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")  # width d_model


class PreflightError(ValueError):
    """A chapter's inputs cannot work; the message names the parameter, the problem and the fix."""


def named_saes(params: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """Return (parameter, release, sae id) for `sae_id` and every `*_sae_id(s)` / `*_ids` a parameter mapping names.

    An id (list) `X_id(s)` reads its release from `X_release` when the mapping has one, else from `sae_release`; an
    entry that is a (release, id) pair names its own release. A release of None skips its ids; `sae_id` None is the
    SAE held directly in the folder `sae_release`.
    """
    found: list[tuple[str, str, str | None]] = []
    for key, value in params.items():
        if not (key.endswith("_id") or key.endswith("_ids")) or isinstance(value, Mapping):
            continue
        stem = key.rsplit("_", 1)[0].removesuffix("_sae")
        release = params.get(f"{stem}_release", params.get("sae_release"))
        entries = [value] if isinstance(value, str) or value is None else list(value)
        for entry in entries:
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                rel, sae_id = entry
            elif isinstance(entry, str) or (entry is None and key == "sae_id"):
                rel, sae_id = release, entry
            else:
                continue
            if isinstance(rel, str) and (key, rel, sae_id) not in found:
                found.append((key, rel, sae_id))
    return found


def model_dims(model_name: str) -> dict[str, int] | None:
    """Return {'d_model', 'n_layers'} of a local model (an organism or a folder), None for a hub name; raise
    FileNotFoundError when a folder is missing."""
    if model_name in ORGANISMS:
        folder, fix = ORGANISMS[model_name] / "model", organism_fix("model", model_name)
    else:
        folder, fix = Path(model_name).expanduser().absolute(), "Copy or save the model there again."
        if not folder.is_dir():
            if is_path_like(model_name) or folder.exists():
                raise FileNotFoundError(f"Model folder {folder} does not exist. Give an existing folder (a Hugging Face "
                                        "model folder or one saved by possae), 'organism', or a transformer_lens model "
                                        "name.")
            return None
    check_readable(folder, ("config.json",), fix)
    cfg = json.loads((folder / "config.json").read_text())

    def first(*keys: str) -> int | None:
        return next((cfg[k] for k in keys if isinstance(cfg.get(k), int)), None)

    dims = {"d_model": first("d_model", "n_embd", "hidden_size"), "n_layers": first("n_layers", "n_layer",
                                                                                   "num_hidden_layers")}
    return None if None in dims.values() else dims


@lru_cache(maxsize=1)
def _registry() -> dict:
    """Return sae_lens's registry of pretrained SAEs, read from its YAML file without importing sae_lens."""
    import yaml

    spec = importlib.util.find_spec("sae_lens")
    path = Path(spec.origin).parent / "pretrained_saes.yaml"
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def check_hub_sae(release: str, sae_id: str | None, need_cached: bool = False) -> None:
    """Raise ValueError unless sae_lens's registry knows the release and the id, and, with `need_cached` while the hub
    is unreachable (no network, or $HF_HUB_OFFLINE), unless the hub cache holds the SAE."""
    registry = _registry()
    if release not in registry:
        close = sorted(r for r in registry if release.split("-")[0] in r)[:20]
        raise ValueError(f"Unknown SAE release {release!r}: it is neither 'organism', an existing folder, nor a sae_lens "
                         f"release ({len(registry)} known; similar: {', '.join(close) or 'none'}).")
    ids = [s["id"] for s in registry[release].get("saes", [])]
    if sae_id not in ids:
        shown = ", ".join(ids[:30]) + (f", ... ({len(ids)} in all)" if len(ids) > 30 else "")
        raise ValueError(f"Unknown sae_id {sae_id!r} for release {release!r}; valid ids: {shown}.")
    entry = next(s for s in registry[release]["saes"] if s["id"] == sae_id)
    if need_cached and not hub_reachable() and not sae_cached(registry[release]["repo_id"], entry["path"]):
        raise ValueError(f"the Hugging Face hub is unreachable (no network, or $HF_HUB_OFFLINE) and its cache ({hub_cache()}) does not "
                         f"hold this SAE (repo {registry[release]['repo_id']}, {entry['path']}). Run online once to "
                         "cache it, or offline run on the organism: -p model_name organism -p sae_release organism "
                         f"-p sae_id ID (ids: {', '.join(organism_sae_ids())}), or the book's `organism` profile.")


def check_sae_against_model(cfg: dict, dims: dict[str, int] | None, model_name: str) -> None:
    """Raise ValueError when an SAE's hook lies outside the model's layers or its d_in is not the hook's width."""
    hook = sae_hook_name(cfg)
    if dims is None or hook is None or not hook.startswith("blocks."):
        return
    layer = hook_layer(hook)
    if layer >= dims["n_layers"]:
        raise ValueError(f"the SAE reads {hook!r}, but model {model_name!r} has {dims['n_layers']} layers "
                         f"(blocks.0..{dims['n_layers'] - 1}): pick an SAE trained on this model.")
    if hook.endswith(D_MODEL_HOOKS) and cfg["d_in"] != dims["d_model"]:
        raise ValueError(f"the SAE's d_in {cfg['d_in']} (cfg.json) does not match d_model {dims['d_model']} of model "
                         f"{model_name!r}, the width of {hook!r}: the SAE was trained on another model. Pick an SAE of "
                         "this model, or set model_name to the SAE's model.")


def check_chapter_inputs(chapter: str, values: Mapping[str, Any]) -> None:
    """Raise PreflightError when a chapter's model, SAEs or device cannot work with `values` (all its parameters)."""
    model_name = values.get("model_name")
    try:
        dims = model_dims(model_name) if isinstance(model_name, str) else None
    except (OSError, ValueError, RuntimeError) as e:
        raise PreflightError(f"Chapter {chapter}: parameter model_name = {model_name!r}: {e}") from None
    for param, release, sae_id in named_saes(values):
        try:
            folder = sae_folder(release, sae_id)
            if folder is None:  # the matching chapter drops, offline, the SAEs of its groups that the cache lacks
                check_hub_sae(release, sae_id, need_cached=chapter != "matching" or param == "sae_id")
                continue
            cfg = check_sae_folder(folder, organism_fix("saes", release) if release in ORGANISMS else LOCAL_SAE_FIX)
            hook = sae_hook_name(cfg)
            if param in LAYER0_PARAMS.get(chapter, ()):
                require_layer0(hook or "(no hook_name in cfg.json)", f"The {chapter} chapter")
            own = release in ORGANISMS and release != model_name  # a shipped SAE is checked against its own model
            check_sae_against_model(cfg, model_dims(release) if own else dims, release if own else str(model_name))
        except (OSError, ValueError, RuntimeError) as e:
            what = f"SAE {sae_id!r} of release {release!r}" if sae_id else f"the SAE in {release!r}"
            raise PreflightError(f"Chapter {chapter}: {what} (parameter {param}): {e}") from None
    if values.get("device") is not None:
        from possae.devices import DeviceUnavailableError, check_device

        try:
            check_device(values["device"])
        except DeviceUnavailableError as e:
            raise PreflightError(f"Chapter {chapter}: parameter device: {e}") from None
