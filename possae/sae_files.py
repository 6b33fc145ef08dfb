"""Where the files of a local SAE or model are, and the checks of those files; light enough to run before a kernel.

This module imports neither torch nor transformer_lens nor sae_lens, so `possae run` checks what a chapter names
(an SAE's folder, its cfg.json, the shapes and values of its weights) within a second or two.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from possae.organism.recipe import ARTIFACTS, GPT2POS_ARTIFACTS, GPT2POS_ROTARY_ARTIFACTS, ROTARY_ARTIFACTS

ORGANISM = "organism"  # the first organism (learned W_pos, n_ctx 256): model name and SAE release
ROTARY = "organism-rotary"  # its rotary twin (the same recipe with rotary positions): model name and SAE release
GPT2POS = "organism-gpt2pos"  # GPT-2 small's own W_pos (projected, frozen), n_ctx 1,024: the layer-0 chapters' default
GPT2POS_ROTARY = "organism-gpt2pos-rotary"  # its rotary twin: the same recipe and tokens, rotary positions
OTHER_ORGANISM = {GPT2POS: ORGANISM, ORGANISM: GPT2POS}  # the layer-0 organisms, each set beside the other
ORGANISMS = {ORGANISM: ARTIFACTS, ROTARY: ROTARY_ARTIFACTS, GPT2POS: GPT2POS_ARTIFACTS,
             GPT2POS_ROTARY: GPT2POS_ROTARY_ARTIFACTS}  # name -> shipped folder
VARIANT_FLAGS = {ORGANISM: "", ROTARY: " --positional rotary", GPT2POS: " --positional gpt2",
                 GPT2POS_ROTARY: " --positional gpt2-rotary"}  # `possae organism` flag
SAE_FILES = ("cfg.json", "sae_weights.safetensors")  # what sae_lens's SAE.save_model writes
SAE_SHAPES = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}  # any other vector: d_sae
LOCAL_SAE_FIX = "Copy or save the SAE there again (sae_lens's SAE.save_model writes both files)."


class CorruptFileError(RuntimeError):
    """A weights or config file is truncated or unreadable; the message names the file and how to get a good copy."""


class BadWeightsError(ValueError):
    """An SAE's weights hold non-finite values or disagree with its cfg.json; the message names file, tensor, field."""


def is_path_like(name: str | None) -> bool:
    """Return whether a model or release name is meant as a folder: it holds a path separator or starts with '.' or '~'."""
    return bool(name) and (os.sep in name or "/" in name or name.startswith((".", "~")))


def organism_fix(what: str, name: str = ORGANISM) -> str:
    """Return how to get a good copy of a shipped organism (or twin) file."""
    root, twin = ORGANISMS[name], VARIANT_FLAGS[name]
    return (f"Restore the shipped copy with `git checkout -- {root.relative_to(root.parents[2])}` "
            f"(or rebuild it with `possae organism {what}{twin}`).")


def organism_sae_ids(name: str = ORGANISM) -> list[str]:
    """Return the ids of the SAEs shipped with an organism (ORGANISMS: the first, its rotary twin, the GPT-2-geometry one)."""
    return sae_subfolders(ORGANISMS[name] / "saes")


def sae_subfolders(path: Path) -> list[str]:
    """Return the names of the SAE folders (holding a cfg.json) inside `path` ([] when it is no folder)."""
    return sorted(p.name for p in path.iterdir() if (p / "cfg.json").is_file()) if path.is_dir() else []


def sae_folder(release: str, sae_id: str | None) -> Path | None:
    """Return the folder of the SAE `release`/`sae_id` when it is local (the organism's, or a folder), else None (a hub
    release); raise FileNotFoundError or ValueError, naming what exists, when the SAE is not there.

    A local `release` is the folder of one SAE (sae_lens's `save_model` layout; `sae_id` None) or a folder of SAE
    folders (`sae_id` names one).
    """
    if release in ORGANISMS:
        ids = organism_sae_ids(release)
        if sae_id not in ids:
            raise ValueError(f"Unknown {release} SAE id {sae_id!r}; valid ids: {', '.join(ids) or 'none built yet'}.")
        return ORGANISMS[release] / "saes" / sae_id
    path = Path(release).expanduser().absolute()
    if not path.is_dir():
        if is_path_like(release) or path.exists():
            raise FileNotFoundError(f"SAE folder {path} does not exist{' (it is a file)' if path.exists() else ''}. "
                                    "Give the folder of an SAE saved by sae_lens (cfg.json and "
                                    "sae_weights.safetensors), a folder of such folders, 'organism', or a sae_lens "
                                    "release.")
        return None
    own, subs = (path / "cfg.json").is_file(), sae_subfolders(path)
    if sae_id:
        if (path / sae_id / "cfg.json").is_file():
            return path / sae_id
        if own:
            raise FileNotFoundError(f"{path} holds one SAE (its own cfg.json), not an SAE folder {sae_id!r}: load it "
                                    "with sae_id None (possae run: leave sae_id out, or -p sae_id None).")
        raise FileNotFoundError(f"{path} has no SAE folder {sae_id!r} (no {path / sae_id / 'cfg.json'}); SAE folders "
                                f"in {path}: {', '.join(subs) or 'none'}.")
    if own:
        return path
    raise FileNotFoundError(f"{path} is not a sae_lens SAE folder (no cfg.json). Give the folder of one SAE, or name "
                            f"one of its SAE folders with sae_id ({', '.join(subs) or 'it holds none'}).")


def check_readable(folder: Path, files: tuple[str, ...], fix: str) -> None:
    """Raise FileNotFoundError or CorruptFileError unless each file in `folder` exists and parses (safetensors, json)."""
    from safetensors import SafetensorError, safe_open

    for name in files:
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing. {fix}")
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="np"):  # checks the header and that the data cover the file
                    pass
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
            raise CorruptFileError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}). {fix}") from None


def count_non_finite(t) -> int:
    """Return how many entries of a tensor or array are NaN or infinite (0 for integer ones)."""
    if hasattr(t, "is_floating_point"):  # a torch tensor (bfloat16 included)
        return int((~t.isfinite()).sum()) if t.is_floating_point() else 0
    a = np.asarray(t)
    return int((~np.isfinite(a)).sum()) if np.issubdtype(a.dtype, np.floating) else 0


def check_finite(tensors: Iterable, where: str, fix: str) -> None:
    """Raise BadWeightsError naming the first of the (name, tensor or array) pairs that holds a NaN or an infinity."""
    for name, t in tensors:
        bad = count_non_finite(t)
        if bad:
            raise BadWeightsError(f"{where}: tensor {name!r} holds {bad:,} non-finite value{'s' * (bad != 1)} (NaN or "
                                  f"inf) among its {int(np.prod(t.shape)):,}. {fix}")


def _tensors(weights: Path) -> Iterable:
    """Yield (name, array) for every tensor of a safetensors file (numpy; torch only for dtypes numpy lacks)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as f:
        names = list(f.keys())
        for name in names:
            try:
                yield name, f.get_tensor(name)
            except (TypeError, ValueError):  # bfloat16 and the like: read through torch
                with safe_open(str(weights), framework="pt") as g:
                    yield name, g.get_tensor(name)


def check_sae_folder(folder: Path, fix: str = LOCAL_SAE_FIX) -> dict:
    """Return an SAE folder's cfg.json, once its files parse and every tensor is finite and shaped as d_in, d_sae say."""
    from safetensors import safe_open

    check_readable(folder, SAE_FILES, fix)
    cfg_file, weights = folder / SAE_FILES[0], folder / SAE_FILES[1]
    cfg = json.loads(cfg_file.read_text())
    dims = {f: cfg.get(f) if isinstance(cfg, dict) else None for f in ("d_in", "d_sae")}
    missing = [f for f, v in dims.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if missing:
        raise BadWeightsError(f"{cfg_file} has no positive integer {' and '.join(missing)}. {fix}")
    with safe_open(str(weights), framework="np") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    for name in [n for n in SAE_SHAPES if n in shapes] + [n for n in shapes if n not in SAE_SHAPES]:  # W_enc first
        shape = shapes[name]
        axes = SAE_SHAPES.get(name, ("d_sae",) if len(shape) == 1 else None)
        if axes is None:
            continue
        if len(shape) != len(axes):
            raise BadWeightsError(f"{weights}: tensor {name!r} has shape {shape}, but an SAE's {name} is "
                                  f"{' x '.join(axes)} = {tuple(dims[a] for a in axes)} by {cfg_file}. {fix}")
        for axis, (field, size) in enumerate(zip(axes, shape)):
            if size != dims[field]:
                raise BadWeightsError(
                    f"{cfg_file} says {field} = {dims[field]}, but tensor {name!r} of {weights} has shape {shape} "
                    f"({name} is {' x '.join(axes)}), so {field} = {size}. Correct the field {field!r} in cfg.json, "
                    "or save the SAE again with sae_lens's SAE.save_model.")
    check_finite(_tensors(weights), str(weights), fix)
    return cfg


def sae_hook_name(cfg: dict) -> str | None:
    """Return the hook an SAE's cfg.json says it reads (sae_lens 6 keeps it under metadata)."""
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")


def hub_offline() -> bool:
    """Return whether huggingface_hub may not reach the network ($HF_HUB_OFFLINE set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_address() -> tuple[str, int]:
    """Return (host, port) of the hub huggingface_hub talks to: $HF_ENDPOINT (a mirror) when set, else huggingface.co."""
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@lru_cache(maxsize=4)
def hub_reachable(address: tuple[str, int] | None = None, timeout: float = 2.0) -> bool:
    """Return whether a TCP connection to the hub (or its $HF_ENDPOINT mirror) opens within `timeout` s (False offline)."""
    if hub_offline():
        return False
    host, port = address or hub_address()
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS look-ups ignore the socket timeout
    return bool(ok)


def hub_cache() -> Path:
    """Return the Hugging Face hub cache folder huggingface_hub reads ($HF_HUB_CACHE, or its default)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def sae_cached(repo_id: str, path: str) -> bool:
    """Return whether the hub cache holds `path` (an SAE's file or folder) in some snapshot of model repo `repo_id`.

    Offline, an SAE of the registry that the cache lacks cannot load (e.g. the stand-in cache of `possae standin`, which
    holds only the SAEs its profile names).
    """
    snapshots = hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any((snap / path).exists() or any(snap.glob(f"{path}*"))
                                      for snap in snapshots.iterdir())


TRAINING_FILE = "training.json"  # beside each organism SAE: its recipe and training facts (organism.saes.train_sae)
SEED_CURVE_FILE = "seed_curve.json"  # the matching suite's seed pair at several training budgets (possae.organism.seed_curve)
SWEEP_FILE = "finetune_sweep.json"  # an organism's recorded fine-tuning sweep (possae.organism.sweep), beside its card


def read_record(release_dir: Path, name: str, command: str) -> dict | None:
    """Return an organism's JSON record `name` (None when it has none); a corrupt one names the command that rewrites
    it."""
    path = release_dir / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): run `{command}` again to rewrite it.") from e


def write_record(release_dir: Path, name: str, record: dict) -> Path:
    """Write an organism's JSON record `name` through a temporary file (a failed run leaves the last record in place);
    return its path."""
    path = Path(release_dir) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(path)
    return path


def read_sweep(release_dir: Path) -> dict | None:
    """Return an organism's recorded fine-tuning sweep (None when it has none)."""
    return read_record(release_dir, SWEEP_FILE, "possae organism sweep --positional gpt2")


def read_seed_curve(release_dir: Path) -> dict | None:
    """Return an organism's recorded seed curve (None when it has none)."""
    return read_record(release_dir, SEED_CURVE_FILE, "possae organism seed-curve")


def read_training(folder: Path) -> dict:
    """Return the training facts saved beside an organism SAE (TRAINING_FILE: sae_id, train_seconds, device, recipe,
    dead_latent_loss)."""
    return json.loads((Path(folder) / TRAINING_FILE).read_text())


def files_sha256(paths) -> str:
    """Return one SHA-256 over the bytes of the given files, in order (what a shipped record was computed from)."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()
