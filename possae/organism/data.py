"""Token streams of the organism's corpora: tokenizer training, encoding, caching and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from possae.corpora import CORPUS_NAMES, read_documents, split_documents
from possae.organism.recipe import ARTIFACTS, build_dir
from possae.tokenizer import BOS, encode_documents, save_tokenizer_folder, train_bpe

TOKENIZER_DIR = "tokenizer"


def build_tokenizer(data_path=None, vocab_size: int = 8192, out_dir: Path = ARTIFACTS, corpora=CORPUS_NAMES) -> Path:
    """Train the byte-level BPE on the training split of the corpora; return the saved tokenizer folder."""
    texts: list[str] = []
    for c in corpora:
        texts += split_documents(read_documents(c, data_path))[0]
    tok = train_bpe(texts, vocab_size=vocab_size)
    return save_tokenizer_folder(tok, out_dir / TOKENIZER_DIR)


def load_tokenizer(folder: Path = ARTIFACTS / TOKENIZER_DIR):
    """Return the organism's `tokenizers.Tokenizer` (fast, for bulk encoding)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer at {path}: run `possae organism tokenizer` first.")
    return Tokenizer.from_file(str(path))


def build_token_streams(data_path=None, cache: Path | None = None, tokenizer_dir: Path = ARTIFACTS / TOKENIZER_DIR,
                        corpora=CORPUS_NAMES) -> dict[str, dict[str, Path]]:
    """Encode the train and held-out split of every corpus; return {corpus: {split: .npy path}}."""
    cache = cache or build_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    eos = tok.token_to_id(BOS)
    out: dict[str, dict[str, Path]] = {}
    for c in tqdm(corpora, desc="encoding corpora"):
        train, held = split_documents(read_documents(c, data_path))
        out[c] = {}
        for split, docs in (("train", train), ("heldout", held)):
            path = cache / f"{c}.{split}.npy"
            np.save(path, encode_documents(tok, docs, eos))
            out[c][split] = path
    return out


def load_stream(corpus: str, split: str, cache: Path | None = None) -> np.ndarray:
    """Return the cached uint16 token stream of one corpus split."""
    path = (cache or build_dir() / "tokens") / f"{corpus}.{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"No token cache at {path}: run `possae organism tokens` first.")
    return np.load(path, mmap_mode="r")


def windows(stream: np.ndarray, n_ctx: int, bos_id: int, offset: int = 0, max_windows: int | None = None) -> torch.Tensor:
    """Return consecutive non-overlapping sequences [BOS, n_ctx-1 stream tokens] as an int64 tensor."""
    body = n_ctx - 1
    n = (len(stream) - offset) // body
    if max_windows is not None:
        n = min(n, max_windows)
    seqs = np.asarray(stream[offset : offset + n * body], dtype=np.int64).reshape(n, body)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), torch.from_numpy(seqs)], dim=1)


class EpochSampler:
    """Deterministic batches of BOS-prefixed windows over a token stream, epoch after epoch (resumable by step)."""

    def __init__(self, stream: np.ndarray, n_ctx: int, batch_size: int, bos_id: int, seed: int):
        self.stream, self.n_ctx, self.batch_size, self.bos_id, self.seed = stream, n_ctx, batch_size, bos_id, seed
        self.per_epoch = (len(stream) - n_ctx) // (n_ctx - 1) // batch_size  # batches per epoch
        self._epoch, self._starts = -1, None

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.n_ctx - 1))
        n = (len(self.stream) - offset) // (self.n_ctx - 1)
        return offset + rng.permutation(n) * (self.n_ctx - 1)

    def batch(self, step: int) -> torch.Tensor:
        """Return the batch of step `step` (int64, batch_size x n_ctx)."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._starts = epoch, self._epoch_starts(epoch)
        starts = self._starts[i * self.batch_size : (i + 1) * self.batch_size]
        idx = starts[:, None] + np.arange(self.n_ctx - 1)[None, :]
        body = torch.from_numpy(np.asarray(self.stream[idx], dtype=np.int64))
        return torch.cat([torch.full((len(starts), 1), self.bos_id, dtype=torch.long), body], dim=1)
