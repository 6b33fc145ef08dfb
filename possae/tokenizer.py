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


def byte_level_alphabet() -> dict[int, str]:
    """Return byte-level BPE's map from each byte to the printable character that stands for it in token strings:
    printable Latin-1 bytes stand for themselves, the others for the characters 256, 257, ... in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in kept:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_BYTE_OF = {c: b for b, c in byte_level_alphabet().items()}


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """Return the bytes a byte-level BPE token stands for, or None when the tokenizer is not byte-level."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or any(c not in _BYTE_OF for c in piece):
        return None
    return bytes(_BYTE_OF[c] for c in piece)


def escaped_bytes(raw: bytes) -> str:
    """Return bytes as a quoted label, printable ASCII as itself and every other byte as \\xNN: "'\\xe2\\x80'"."""
    return "'" + "".join(chr(b) if 32 <= b < 127 and chr(b) not in "'\\" else f"\\x{b:02x}" for b in raw) + "'"


def token_label(tokenizer, token_id: int) -> str:
    """Return a token as a repr'd string (so spaces and newlines show); a token that is only part of a UTF-8 character
    (decoding it alone gives U+FFFD) is shown as its escaped bytes, e.g. '\\xe2\\x80'."""
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" in text:
        raw = token_bytes(tokenizer, token_id)
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return escaped_bytes(raw)
    return repr(text)


def decode_tokens(tokenizer, tokens) -> list[str]:
    """Return each token id decoded on its own as a label (token_label)."""
    return [token_label(tokenizer, int(t)) for t in tokens]


def special_token_ids(tokenizer) -> list[int]:
    """Return the ids sae_lens's evals leave out (BOS, EOS, padding), sorted; none without a tokenizer."""
    from sae_lens.evals import get_special_token_ids

    return sorted(get_special_token_ids(tokenizer)) if tokenizer is not None else []
