"""The evaluation pack: what ships is complete and license-clean, and `build_pack` derives it from the corpora."""

import json

import numpy as np
import pytest
import torch

from possae.corpora import CORPORA, REDISTRIBUTABLE, get_corpus, read_documents, split_documents
from possae.evalpack import (
    MAX_PACK_BYTES,
    PACK_DIR,
    PackError,
    build_pack,
    encode_heldout,
    heldout_streams,
    organism_tokenizer,
    pack_bytes,
    read_manifest,
    tokenizer_fingerprint,
)
from possae.heldout import heldout_windows
from possae.loaders import load_model


def test_the_shipped_pack_fits_its_budget_and_names_every_license():
    manifest = read_manifest()
    assert pack_bytes() <= MAX_PACK_BYTES
    assert manifest["corpora"] == list(REDISTRIBUTABLE) and "openwebtext" not in manifest["corpora"]
    assert set(REDISTRIBUTABLE) == {"tinystories", "wikitext2", "austen", "kjv_bible", "shakespeare", "python_docs"}
    notice = (PACK_DIR / "NOTICE").read_text()
    for name in REDISTRIBUTABLE:
        assert f"{name}: {get_corpus(name).source}" in notice and get_corpus(name).license in notice
    assert "Modified MIT License" in (PACK_DIR / "LICENSE-GPT2").read_text() and "LICENSE-GPT2" in notice
    assert {f.name for f in PACK_DIR.iterdir()} == {"manifest.json", "NOTICE", "LICENSE-GPT2", "gpt2_wpos.safetensors",
                                                    "heldout-organism.safetensors", "heldout-gpt2.safetensors"}


def test_the_shipped_streams_are_uint16_ids_of_the_same_documents_for_both_tokenizers():
    from safetensors.numpy import load_file

    manifest = read_manifest()
    n_docs = {}
    for name, entry in manifest["tokenizers"].items():
        streams = load_file(str(PACK_DIR / entry["file"]))
        assert sorted(streams) == sorted(REDISTRIBUTABLE)
        for c, s in streams.items():
            assert s.dtype == np.uint16 and 0 < len(s) == entry["tokens"][c] <= manifest["tokens_per_corpus"]
            assert int(s.max()) < entry["vocab_size"]
            if len(s) < manifest["tokens_per_corpus"]:  # the whole held-out split fits: one EOS per document
                n_docs.setdefault(c, set()).add(int((s == entry["eos_id"]).sum()))
    # 3 % of 5,000 TinyStories; both tokenizers' streams end at the same document
    assert n_docs["tinystories"] == {150} and all(len(v) == 1 for v in n_docs.values())


def test_the_organism_reads_its_own_ids_from_the_pack():
    model = load_model("organism", device="cpu")
    entry = read_manifest()["tokenizers"]["organism"]
    assert tokenizer_fingerprint(model.tokenizer) == entry["fingerprint"]
    w = heldout_windows(model.tokenizer, 64, 4096)
    per_corpus = 4096 // 64
    assert w.shape == (per_corpus * len(REDISTRIBUTABLE), 64) and (w[:, 0] == model.tokenizer.bos_token_id).all()
    stream = heldout_streams(model.tokenizer, ("tinystories",))["tinystories"].astype(np.int64)
    assert w[:2, 1:].flatten().tolist() == stream[:126].tolist()  # consecutive BOS-prefixed slices of the stream
    with pytest.raises(PackError, match="holds at most 32768"):
        heldout_windows(model.tokenizer, 64, 40_000)


# ---- building a pack from a constructed data folder


def _write_corpora(root, n_docs=60):
    """Write a small data folder with every corpus in its own format (documents are numbered sentences)."""
    (root / "corpora").mkdir(parents=True)
    for c in CORPORA:
        docs = [f"{c.name} document {i}: the cat sat on mat {i} and ran {i % 7} times." for i in range(n_docs)]
        for k, fname in enumerate(c.files):
            part = docs[k::len(c.files)] if c.splitter != "wikitext" else docs[k * n_docs // 2:(k + 1) * n_docs // 2]
            if c.splitter == "jsonl":
                text = "".join(json.dumps({"text": d}) + "\n" for d in part)
            elif c.splitter == "wikitext":
                text = "".join(f" = Title {d[:20]} = \n {d} \n" for d in part)
            else:
                text = "\n\n".join(d + " lorem" * 600 for d in part)  # one paragraph per document
            (root / "corpora" / fname).write_text(text)
    return root


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    data = _write_corpora(root / "data")
    wpos = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = build_pack(data, out=root / "pack", tokens_per_corpus=300, tokenizers={"organism": organism_tokenizer()},
                     wpos=wpos)
    return data, out


def test_build_pack_stores_the_heldout_split_encoded_and_cut(small_pack):
    from safetensors.numpy import load_file

    from possae.evalpack import gpt2_wpos

    data, out = small_pack
    tok = organism_tokenizer()
    streams = load_file(str(out / "heldout-organism.safetensors"))
    counts = read_manifest(out)["tokenizers"]["organism"]["tokens"]
    for c in REDISTRIBUTABLE:
        held = split_documents(read_documents(c, data))[1]
        direct = []
        for d in held:
            direct += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert streams[c].tolist() == direct[:300] and counts[c] == min(300, len(direct)), c
    assert counts["tinystories"] == len(direct_ts := streams["tinystories"]) < 300 and direct_ts[-1] == tok.eos_token_id
    assert counts["python_docs"] == 300  # a long paragraph document is cut at the budget
    assert "openwebtext" not in streams
    assert np.array_equal(gpt2_wpos(out), np.arange(12, dtype=np.float32).reshape(4, 3))


def test_windows_from_a_pack_equal_windows_from_the_corpora(small_pack):
    data, out = small_pack
    tok = organism_tokenizer()
    from_pack = heldout_windows(tok, 16, 96, pack=out)
    from_text = heldout_windows(tok, 16, 96, data_path=data)
    assert from_pack.shape[1] == 16 and len(from_pack) >= 4 * len(REDISTRIBUTABLE) and torch.equal(from_pack, from_text)
    with pytest.raises(PackError, match="holds no openwebtext"):
        heldout_streams(tok, ("openwebtext",), out)


def test_another_tokenizer_reads_the_same_text_reencoded(small_pack, tmp_path):
    from possae.tokenizer import load_hf_tokenizer, save_tokenizer_folder, train_bpe

    data, out = small_pack
    texts = [d for c in REDISTRIBUTABLE for d in read_documents(c, data)]
    other = load_hf_tokenizer(save_tokenizer_folder(train_bpe(texts, vocab_size=300), tmp_path / "tok"))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(organism_tokenizer())
    streams = heldout_streams(other, folder=out)
    for c in REDISTRIBUTABLE:
        direct = encode_heldout(other, c, 10**6, data).tolist()
        got = streams[c].tolist()
        # up to the last whole document of the pack, or (a document cut at the budget) all but its last word
        complete = len(got) - got[::-1].index(other.eos_token_id) if other.eos_token_id in got else len(got) - 2
        assert complete > 10 and got[:complete] == direct[:complete], c


def test_a_pack_over_budget_is_refused_and_the_old_one_kept(small_pack):
    data, out = small_pack
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match="over its 5 MiB budget"):
        build_pack(data, out=out, tokens_per_corpus=300, tokenizers={"organism": organism_tokenizer()},
                   wpos=np.zeros((1500, 1000), dtype=np.float32))
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".evalpack-")]
