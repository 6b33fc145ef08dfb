import json
from pathlib import Path

import pytest

from possae.corpora import CORPORA, REDISTRIBUTABLE, _paragraph_documents, _wikitext_documents, get_corpus, read_documents, split_documents
from possae.data_paths import MissingDataError, data_dir, data_file


def test_paragraph_documents_group_to_target_size():
    text = "aaaa\n\nbbbb\n\n\ncccc\n  \ndddd"
    assert _paragraph_documents(text, target_chars=8) == ["aaaa\n\nbbbb", "cccc\n\ndddd"]
    assert _paragraph_documents(text, target_chars=1) == ["aaaa", "bbbb", "cccc", "dddd"]


def test_wikitext_documents_split_on_top_level_titles_only():
    text = " \n = A = \n \n text a \n = = Sub = = \n more a \n = B = \n text b \n"
    docs = _wikitext_documents(text)
    assert len(docs) == 2
    assert docs[0].startswith("= A =") and "= = Sub = =" in docs[0]
    assert docs[1].startswith("= B =") and "text b" in docs[1]


def test_split_holds_out_the_tail():
    docs = [str(i) for i in range(100)]
    train, held = split_documents(docs, 0.03)
    assert held == ["97", "98", "99"] and train == docs[:97]
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_documents(docs, 0.0)


def test_the_shipped_sample_splits_into_its_last_twelve_stories():
    sample = Path(__file__).parent / "data"
    lines = (sample / "corpora" / "tinystories_5k.jsonl").read_text().splitlines()
    train, held = split_documents(read_documents("tinystories", sample))
    assert len(train) == 388 and held == [json.loads(line)["text"] for line in lines[-12:]]


def test_only_corpora_with_a_known_license_are_redistributable():
    assert REDISTRIBUTABLE == tuple(c.name for c in CORPORA if c.name != "openwebtext")
    assert all(get_corpus(n).source for n in REDISTRIBUTABLE)


def test_jsonl_corpus_reads_one_document_per_line(tmp_path):
    (tmp_path / "corpora").mkdir()
    lines = [{"text": "one story"}, {"text": "two\nstories"}]
    (tmp_path / "corpora" / "tinystories_5k.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    assert read_documents("tinystories", tmp_path) == ["one story", "two\nstories"]


def test_unknown_corpus_and_missing_data_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="known corpora: tinystories"):
        get_corpus("nope")
    with pytest.raises(MissingDataError, match="POSSAE_DATA"):
        data_dir(tmp_path / "absent")
    with pytest.raises(MissingDataError, match="corpora/austen_novels.txt"):
        data_file("corpora/austen_novels.txt", tmp_path)
    monkeypatch.setenv("POSSAE_DATA", str(tmp_path / "absent"))
    with pytest.raises(MissingDataError, match=r"\$POSSAE_DATA"):
        data_dir()
