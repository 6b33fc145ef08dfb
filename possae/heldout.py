"""Held-out text as token windows for any model's tokenizer (the last documents of every corpus)."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from possae.corpora import CORPUS_NAMES, read_documents, split_documents


def heldout_windows(tokenizer, context_size: int, tokens_per_corpus: int = 32_768, corpora=CORPUS_NAMES,
                    data_path=None) -> Int[Tensor, "n_windows context_size"]:
    """Return BOS-prefixed windows of context_size tokens from each corpus's held-out documents."""
    from possae.organism.data import windows

    bos = tokenizer.bos_token_id
    n_windows = max(1, tokens_per_corpus // context_size)
    out = []
    for c in corpora:
        stream: list[int] = []
        for doc in split_documents(read_documents(c, data_path))[1]:
            stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(stream) >= n_windows * (context_size - 1):
                break
        out.append(windows(np.asarray(stream), context_size, bos, max_windows=n_windows))
    return torch.cat(out)
