"""Held-out text as token windows for any model's tokenizer (the last documents of every corpus)."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from possae.corpora import REDISTRIBUTABLE


def heldout_windows(tokenizer, context_size: int, tokens_per_corpus: int = 32_768, corpora=REDISTRIBUTABLE,
                    data_path=None, pack=None) -> Int[Tensor, "n_windows context_size"]:
    """Return BOS-prefixed windows of context_size tokens from each corpus's held-out documents.

    The text comes from the evaluation pack shipped with possae (see possae.evalpack), or the pack folder `pack`;
    with `data_path`, from the full corpora in that folder instead.
    """
    from possae.evalpack import PACK_DIR, encode_heldout, heldout_streams
    from possae.organism.data import windows

    n_windows = max(1, tokens_per_corpus // context_size)
    needed = n_windows * (context_size - 1)
    if data_path is not None:
        streams = {c: encode_heldout(tokenizer, c, needed, data_path) for c in corpora}
    else:
        streams = heldout_streams(tokenizer, corpora, pack or PACK_DIR, min_tokens=needed)
    return torch.cat([windows(streams[c], context_size, tokenizer.bos_token_id, max_windows=n_windows)
                      for c in corpora])
