"""A build's store of expensive results that several chapters need, keyed by the content of their inputs.

The exact layer-0 statistics of one SAE over one set of positions, and sae_lens's quality metrics of one SAE on one
sample, are needed by more than one chapter (setup, positional, semantic and length all read the same SAE). The book
build points ``$POSSAE_CACHE_DIR`` at a folder of its staging area; each chapter's kernel then computes such a result
once, and the next kernel that asks for it with the same inputs loads it.

* The key is a digest of everything the result depends on: the bytes, dtype and shape of every tensor (weights,
  positions, tokens), the SAE's class and config, the device type, torch's thread count (a matmul's rounding may
  depend on it) and the package's code. A change to any of them is a different key, so a stored result is never
  served for other inputs.
* A second kernel that asks for a result being computed waits for it (a lock file) instead of computing it again.
* Results are written to a temporary file and moved into place, so a kernel that dies leaves no partial entry; an
  entry that cannot be read is computed again and replaced.
* With ``$POSSAE_CACHE_DIR`` unset (a notebook, a script, the tests) nothing is stored and every call computes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

CACHE_ENV = "POSSAE_CACHE_DIR"
PACKAGE = Path(__file__).resolve().parent

T = TypeVar("T")


def cache_dir() -> Path | None:
    """Return the folder named by $POSSAE_CACHE_DIR, or None when it is unset (nothing is stored)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value) if value else None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Return a digest of the package's Python source: a result computed by other code is another key."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(PACKAGE.rglob("*.py")):
        h.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _update(h, part) -> None:
    """Feed one key part into the hash: tensors by dtype, shape and bytes; modules by class, config and state."""
    if isinstance(part, Tensor):
        t = part.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(part, nn.Module):
        cfg = getattr(part, "cfg", None)
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg) if cfg is not None else {}
        h.update(f"M{type(part).__module__}.{type(part).__qualname__}".encode())
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        for name, value in sorted(part.state_dict().items()):
            h.update(name.encode())
            _update(h, value)
    elif isinstance(part, dict):
        h.update(b"D")
        for k in sorted(part, key=str):
            _update(h, str(k))
            _update(h, part[k])
    elif isinstance(part, (list, tuple)):
        h.update(f"L{len(part)}".encode())
        for p in part:
            _update(h, p)
    elif part is None or isinstance(part, (bool, int, float, str, range, torch.dtype, torch.device)):
        h.update(f"{type(part).__name__}:{part!r}".encode())
    else:
        raise TypeError(f"cannot key a cached result on a {type(part).__name__}; pass tensors, modules or plain values")
    h.update(b"\0")


def content_key(kind: str, *parts) -> str:
    """Return the hex digest of a result's kind, its inputs, torch's thread count and the package's code."""
    h = hashlib.blake2b(digest_size=20)
    _update(h, (kind, code_digest(), torch.__version__, torch.get_num_threads(), list(parts)))
    return h.hexdigest()


def has_hooks(module: nn.Module) -> bool:
    """Return whether any submodule carries a forward hook (its output then depends on more than its weights)."""
    return any(len(m._forward_hooks) or len(m._forward_pre_hooks) for m in module.modules())


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(kind: str, parts: tuple, compute: Callable[[], T]) -> T:
    """Return compute(), stored under $POSSAE_CACHE_DIR/kind/ by the content of `parts`, or the stored result.

    Without $POSSAE_CACHE_DIR, or when a module among the parts carries hooks, it simply returns compute().
    """
    root = cache_dir()
    if root is None or any(isinstance(p, nn.Module) and has_hooks(p) for p in parts):
        return compute()
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{content_key(kind, *parts)}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                return torch.load(path, weights_only=False)
            except Exception:  # a corrupt entry is computed again and replaced
                path.unlink(missing_ok=True)
        value = compute()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value
