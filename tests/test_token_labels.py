"""Tokens that are part of a UTF-8 character read as escaped bytes, with a tooltip in the book's tables."""

import pytest

from possae.book_html import PARTIAL_UTF8_TIP, mark_partial_tokens, page_has_figure
from possae.data_paths import REPO_ROOT
from possae.tokenizer import byte_level_alphabet, decode_tokens, escaped_bytes, load_hf_tokenizer, token_bytes


@pytest.fixture(scope="module")
def tokenizer():
    return load_hf_tokenizer(REPO_ROOT / "possae" / "artifacts" / "organism" / "tokenizer")


def test_the_byte_level_alphabet_is_one_printable_character_per_byte():
    alphabet = byte_level_alphabet()
    assert len(alphabet) == 256 and len(set(alphabet.values())) == 256
    assert alphabet[ord("a")] == "a" and alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ"


def test_escaped_bytes():
    assert escaped_bytes(b"\xe2\x80") == r"'\xe2\x80'"
    assert escaped_bytes(b" \xe2") == r"' \xe2'"
    assert escaped_bytes(b"a'\\") == r"'a\x27\x5c'"


def test_partial_utf8_tokens_show_their_bytes_and_whole_ones_their_text(tokenizer):
    whole = tokenizer.encode(" in", add_special_tokens=False)
    assert decode_tokens(tokenizer, whole) == ["' in'"]
    partial = [i for i in range(1, 300) if "\ufffd" in tokenizer.decode([i])]
    assert partial, "the organism's byte-level vocabulary starts with the 256 single bytes"
    labels = decode_tokens(tokenizer, partial)
    assert all("\ufffd" not in label and r"\x" in label for label in labels)
    for i, label in zip(partial, labels):
        raw = token_bytes(tokenizer, i)
        assert label == escaped_bytes(raw)
    assert "é" in tokenizer.decode(tokenizer.encode("é", add_special_tokens=False))


def test_escaped_token_labels_in_table_cells_get_a_tooltip():
    body = ("<p>'\\xe2' in prose stays</p><table><tr><td>'\\xe2\\x80'</td><td>' in'</td>"
            "<td>'ig', '\\xe7', ' vex'</td><td>&#39;\\xbb&#39;</td></tr></table>")
    out = mark_partial_tokens(body)
    assert out.count('class="partial-utf8"') == 3
    assert f'<span class="partial-utf8" title="{PARTIAL_UTF8_TIP}">\'\\xe2\\x80\'</span>' in out
    assert "<p>'\\xe2' in prose stays</p>" in out and "<td>' in'</td>" in out
    assert page_has_figure('<div id="a" class="plotly-graph-div"></div>') and not page_has_figure("<table></table>")

