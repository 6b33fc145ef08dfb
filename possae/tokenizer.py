"""The organism's byte-level BPE tokenizer: training with `tokenizers`, loading for transformers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

BOS = "<|endoftext|>"  # one special token serves as BOS, EOS and padding, as in GPT-2


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Return a byte-level BPE `tokenizers.Tokenizer` trained on `texts`, with BOS as token 0."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[BOS], show_progress=True
    )
    return tok._tokenizer


def save_tokenizer_folder(tokenizer, folder: str | Path) -> Path:
    """Write a `tokenizers.Tokenizer` as a Hugging Face tokenizer folder (BOS/EOS/pad set); return it."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=BOS)
    hf.save_pretrained(str(folder))
    return Path(folder)


def load_hf_tokenizer(folder: str | Path):
    """Return the transformers tokenizer saved in `folder`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def encode_documents(tokenizer, docs: list[str], eos_id: int) -> np.ndarray:
    """Return one uint16 token stream [doc0, EOS, doc1, EOS, ...] for a list of documents."""
    encodings = tokenizer.encode_batch(docs)
    total = sum(len(e.ids) + 1 for e in encodings)
    out = np.empty(total, dtype=np.uint16)
    i = 0
    for e in encodings:
        n = len(e.ids)
        out[i : i + n] = e.ids
        out[i + n] = eos_id
        i += n + 1
    return out


def decode_tokens(tokenizer, tokens) -> list[str]:
    """Return each token id decoded on its own, as a repr'd string (so spaces and newlines show)."""
    return [repr(tokenizer.decode([int(t)])) for t in tokens]
