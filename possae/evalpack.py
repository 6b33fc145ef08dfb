"""The evaluation pack shipped in possae/artifacts/evalpack: held-out token ids and GPT-2 small's W_pos.

The chapters read held-out text and GPT-2's `W_pos` from this pack, so the book builds from the package
alone. `possae data pack` derives it from the full data (`$POSSAE_DATA`) and writes:

* `heldout-<tokenizer>.safetensors`: for each redistributable corpus, its held-out documents (the tail that
  :func:`possae.corpora.split_documents` holds out) encoded as one uint16 stream `[doc, EOS, doc, EOS, ...]`,
  cut at `tokens_per_corpus` tokens; one file per tokenizer (the organism's and GPT-2's),
* `gpt2_wpos.safetensors`: GPT-2 small's raw positional embedding (1024 x 768, float32),
* `manifest.json` (what each file holds and which tokenizer made it), `NOTICE` and `LICENSE-GPT2`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from possae.corpora import REDISTRIBUTABLE, get_corpus, read_documents, split_documents
from possae.data_paths import MissingDataError, data_file

PACK_DIR = Path(__file__).resolve().parent / "artifacts" / "evalpack"
ORGANISM_TOKENIZER = Path(__file__).resolve().parent / "artifacts" / "organism" / "tokenizer"
TOKENS_PER_CORPUS = 32_768
MAX_PACK_BYTES = 5 * 2**20
WPOS_FILE = "gpt2_wpos.safetensors"
GPT2_SOURCE = ("GPT-2 small (124M) positional embedding `wpe`, from OpenAI's released checkpoint; "
               "token ids from GPT-2's byte-level BPE (encoder.json, vocab.bpe)")

GPT2_LICENSE = """Modified MIT License

Software Copyright (c) 2019 OpenAI

We don’t claim ownership of the content you create with GPT-2, so it is yours to do with as you please.
We only ask that you use GPT-2 responsibly and clearly indicate your content was created using GPT-2.

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions:

The above copyright notice and this permission notice shall be included
in all copies or substantial portions of the Software.
The above copyright notice and this permission notice need not be included
with content created by the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR
OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


class PackError(LookupError):
    """The evaluation pack does not hold what was asked of it."""


def tokenizer_fingerprint(tokenizer) -> str:
    """Return a short sha256 of a tokenizer's vocabulary (token -> id), which identifies its encoding."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def organism_tokenizer():
    """Return the organism's transformers tokenizer, as the loaders give it to the model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ORGANISM_TOKENIZER))


def gpt2_tokenizer(data_path=None):
    """Return GPT-2's tokenizer built offline from the shared data's encoder.json and vocab.bpe."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(vocab=str(data_file("gpt2-small/encoder.json", data_path)),
                             merges=str(data_file("gpt2-small/vocab.bpe", data_path)))


def encode_heldout(tokenizer, corpus: str, n_tokens: int, data_path=None) -> np.ndarray:
    """Return the first n_tokens of a corpus's held-out documents as one uint16 [doc, EOS, doc, EOS, ...] stream."""
    if len(tokenizer) > 2**16:
        raise ValueError(f"A vocabulary of {len(tokenizer)} tokens does not fit uint16 ids")
    stream: list[int] = []
    for doc in split_documents(read_documents(corpus, data_path))[1]:
        stream += tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= n_tokens:
            break
    return np.asarray(stream[:n_tokens], dtype=np.uint16)


def _notice(tokenizers: dict[str, str], tokens_per_corpus: int) -> str:
    """Return the NOTICE text: every source in the pack with its license."""
    lines = [
        "possae evaluation pack: third-party material and its licenses",
        "",
        "Made by `possae data pack` from the shared data folder. The heldout-*.safetensors files hold token ids",
        f"(at most {tokens_per_corpus} per corpus) of the held-out documents (the last 3 %) of these corpora:",
        "",
    ]
    for name in REDISTRIBUTABLE:
        c = get_corpus(name)
        lines += [f"- {c.name}: {c.source}.", f"  License: {c.license}."]
    lines += [
        "",
        "The ids derived from TinyStories are shared under CDLA-Sharing-1.0 and those derived from WikiText under",
        "CC BY-SA 3.0, as those licenses require. The OpenWebText sample the organism also trains on is left out:",
        "its license is unclear.",
        "",
        f"Tokenizers: {', '.join(f'{k} (vocabulary fingerprint {v})' for k, v in tokenizers.items())}.",
        "",
        f"{WPOS_FILE}: {GPT2_SOURCE}.",
        "License: modified MIT (OpenAI); its full text is in LICENSE-GPT2 beside this file.",
        "",
    ]
    return "\n".join(lines)


def build_pack(data_path=None, out: Path = PACK_DIR, tokens_per_corpus: int = TOKENS_PER_CORPUS,
               tokenizers: dict | None = None, wpos: np.ndarray | None = None) -> Path:
    """Write the evaluation pack from the full data into `out` (replacing it only once complete); return `out`."""
    from safetensors.numpy import save_file

    tokenizers = tokenizers if tokenizers is not None else {"organism": organism_tokenizer(),
                                                            "gpt2": gpt2_tokenizer(data_path)}
    if wpos is None:
        wpos = np.load(data_file("gpt2-small/W_pos.npy", data_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".evalpack-", dir=out.parent))
    try:
        manifest = {"tokens_per_corpus": tokens_per_corpus, "corpora": list(REDISTRIBUTABLE), "tokenizers": {},
                    "wpos": {"file": WPOS_FILE, "shape": list(wpos.shape), "dtype": "float32"}}
        for name, tok in tokenizers.items():
            streams = {c: encode_heldout(tok, c, tokens_per_corpus, data_path) for c in REDISTRIBUTABLE}
            fname = f"heldout-{name}.safetensors"
            save_file(streams, str(tmp / fname))
            manifest["tokenizers"][name] = {"file": fname, "fingerprint": tokenizer_fingerprint(tok),
                                            "eos_id": tok.eos_token_id, "vocab_size": len(tok),
                                            "tokens": {c: len(s) for c, s in streams.items()}}
        save_file({"W_pos": np.ascontiguousarray(wpos, dtype=np.float32)}, str(tmp / WPOS_FILE))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / "NOTICE").write_text(_notice({k: v["fingerprint"] for k, v in manifest["tokenizers"].items()},
                                            tokens_per_corpus))
        (tmp / "LICENSE-GPT2").write_text(GPT2_LICENSE)
        size = pack_bytes(tmp)
        if size > MAX_PACK_BYTES:
            raise ValueError(f"The pack would take {size / 2**20:.2f} MiB, over its {MAX_PACK_BYTES / 2**20:.0f} MiB "
                             "budget: lower tokens_per_corpus")
        for f in [tmp, *tmp.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def pack_bytes(folder: Path = PACK_DIR) -> int:
    """Return the total size in bytes of the files in a pack folder."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def read_manifest(folder: Path = PACK_DIR) -> dict:
    """Return the pack's manifest.json as a dict."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise MissingDataError(f"No evaluation pack at {folder}: rebuild it with `possae data pack`.")
    return json.loads(path.read_text())


def heldout_streams(tokenizer, corpora=REDISTRIBUTABLE, folder: Path = PACK_DIR,
                    min_tokens: int = 0) -> dict[str, np.ndarray]:
    """Return {corpus: held-out token stream} for this tokenizer, from the pack."""
    from safetensors.numpy import load_file

    manifest = read_manifest(folder)
    if min_tokens > manifest["tokens_per_corpus"]:
        raise PackError(f"{min_tokens} held-out tokens per corpus asked for; the evaluation pack holds at most "
                        f"{manifest['tokens_per_corpus']}. Read the full corpora (data_path) for more.")
    missing = [c for c in corpora if c not in manifest["corpora"]]
    if missing:
        raise PackError(f"The evaluation pack holds no {', '.join(missing)}; it holds {', '.join(manifest['corpora'])}")
    fp = tokenizer_fingerprint(tokenizer)
    entry = next((t for t in manifest["tokenizers"].values() if t["fingerprint"] == fp), None)
    if entry is None:
        return _reencoded_streams(tokenizer, corpora, folder, manifest)
    streams = load_file(str(Path(folder) / entry["file"]))
    return {c: streams[c] for c in corpora}


def _reencoded_streams(tokenizer, corpora, folder: Path, manifest: dict) -> dict[str, np.ndarray]:
    """Return held-out streams for a tokenizer the pack does not hold: the organism's ids decoded, re-encoded."""
    from safetensors.numpy import load_file

    entry = manifest["tokenizers"]["organism"]
    source = organism_tokenizer()
    if tokenizer_fingerprint(source) != entry["fingerprint"]:
        raise PackError("The evaluation pack was made with another organism tokenizer: rebuild it with "
                        "`possae data pack`.")
    streams = load_file(str(Path(folder) / entry["file"]))
    eos, out = entry["eos_id"], {}
    for c in corpora:
        ids = streams[c].astype(np.int64)
        cuts = np.flatnonzero(ids == eos)
        docs = np.split(ids, cuts + 1)
        stream: list[int] = []
        for doc in docs:
            body = doc[doc != eos]
            if len(body):
                text = source.decode(body, clean_up_tokenization_spaces=False)
                stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if len(doc) and doc[-1] == eos:
                stream.append(tokenizer.eos_token_id)
        out[c] = np.asarray(stream, dtype=np.int64)
    return out


def gpt2_wpos(folder: Path = PACK_DIR) -> np.ndarray:
    """Return GPT-2 small's raw W_pos (1024 x 768, float32) from the pack."""
    from safetensors.numpy import load_file

    return load_file(str(Path(folder) / read_manifest(folder)["wpos"]["file"]))["W_pos"]
