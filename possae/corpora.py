"""The public text corpora the organism is trained on: documents, groups and train/held-out splits."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from possae.data_paths import data_file

HELD_OUT_FRACTION = 0.03  # the last 3 % of every corpus's documents never reach training


@dataclass(frozen=True)
class Corpus:
    """One corpus: its files under corpora/, its group and how it splits into documents."""

    name: str
    files: tuple[str, ...]
    group: str
    splitter: str  # "jsonl", "wikitext" or "paragraphs"


CORPORA: tuple[Corpus, ...] = (
    Corpus("tinystories", ("tinystories_5k.jsonl",), "stories", "jsonl"),
    Corpus("wikitext2", ("wikitext2_valid.txt", "wikitext2_test.txt"), "encyclopedia", "wikitext"),
    Corpus("openwebtext", ("openwebtext_sample.txt",), "web", "paragraphs"),
    Corpus("austen", ("austen_novels.txt",), "books", "paragraphs"),
    Corpus("kjv_bible", ("kjv_bible.txt",), "books", "paragraphs"),
    Corpus("shakespeare", ("tinyshakespeare.txt",), "books", "paragraphs"),
    Corpus("python_docs", ("python311_docs.rst.txt",), "technical", "paragraphs"),
)
CORPUS_NAMES = tuple(c.name for c in CORPORA)

_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def get_corpus(name: str) -> Corpus:
    """Return the corpus called `name`, or raise listing the known names."""
    for c in CORPORA:
        if c.name == name:
            return c
    raise ValueError(f"Unknown corpus {name!r}; known corpora: {', '.join(CORPUS_NAMES)}")


def _paragraph_documents(text: str, target_chars: int) -> list[str]:
    """Return consecutive blank-line-separated paragraphs grouped into documents of ~target_chars."""
    docs, current, size = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        current.append(para.strip("\n"))
        size += len(para)
        if size >= target_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def _wikitext_documents(text: str) -> list[str]:
    """Return WikiText articles, each starting at a top-level ' = Title = ' line."""
    docs, current = [], []
    for line in text.split("\n"):
        if _WIKI_TITLE.match(line) and any(l.strip() for l in current):
            docs.append("\n".join(current).strip())
            current = []
        current.append(line)
    if any(l.strip() for l in current):
        docs.append("\n".join(current).strip())
    return docs


def read_documents(corpus: Corpus | str, data_path=None, target_chars: int = 3000) -> list[str]:
    """Return every document of a corpus, in file order."""
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    docs: list[str] = []
    for fname in corpus.files:
        path: Path = data_file(f"corpora/{fname}", data_path)
        text = path.read_text(encoding="utf-8")
        if corpus.splitter == "jsonl":
            docs += [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
        elif corpus.splitter == "wikitext":
            docs += _wikitext_documents(text)
        else:
            docs += _paragraph_documents(text, target_chars)
    return docs


def split_documents(docs: list[str], held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[list[str], list[str]]:
    """Return (train, held_out): the held-out part is the contiguous tail of the documents."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    n_held = max(1, round(len(docs) * held_out_fraction))
    return docs[:-n_held], docs[-n_held:]
