"""Glued values are read back from an executed notebook exactly as myst_nb wrote them."""
import pytest

import nbformat
import numpy as np

from possae.glued import glued_values


def _glue_output(name, text, prefix="application/papermill.record/"):
    return nbformat.v4.new_output("display_data", data={f"{prefix}text/plain": text},
                                  metadata={"scrapbook": {"mime_prefix": prefix, "name": name}})


def test_glued_values_parse_literals_numpy_scalars_and_keep_other_text(tmp_path):
    cell = nbformat.v4.new_code_cell("glue(...)")
    cell.outputs = [_glue_output("l0", "14.25"), _glue_output("n", repr(np.int64(24))), _glue_output("ids", "[1, 2]"),
                    _glue_output("range", "'1..63'"), _glue_output("frame", "   a\n0  1"),
                    nbformat.v4.new_output("stream", name="stdout", text="not glued")]
    nb = nbformat.v4.new_notebook(cells=[cell])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert glued_values(path) == {"l0": 14.25, "n": 24, "ids": [1, 2], "range": "1..63", "frame": "   a\n0  1"}


def test_compare_books_lines_up_values_by_chapter_and_name(tmp_path):
    for build, values in (("old", {"x": "1.0", "gone": "2"}), ("new", {"x": "3.5", "added": "'y'"})):
        cell = nbformat.v4.new_code_cell("")
        cell.outputs = [_glue_output(k, v) for k, v in values.items()]
        (tmp_path / build / "chapters").mkdir(parents=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / build / "chapters" / "setup.ipynb")
    from possae.glued import compare_books

    df = compare_books(tmp_path / "old", tmp_path / "new").set_index("name")
    assert df.loc["x", ["before", "after"]].tolist() == [1.0, 3.5]
    assert df.loc["gone", "after"] != df.loc["gone", "after"] and df.loc["added", "after"] == "y"  # NaN where absent
    assert set(df["chapter"]) == {"setup"}


def test_check_prose_values_refuses_missing_numbers():
    """A NaN, an infinity or None meant for prose raises, naming the value; plain numbers and sentences pass."""
    import math

    from possae.glued import check_prose_values

    check_prose_values({"pos_n": 3, "pos_share": 0.25, "pos_sentence": "No oscillation is resolved."})
    for bad in (math.nan, math.inf, None):
        with pytest.raises(ValueError, match="the prose value 'pos_x'"):
            check_prose_values({"pos_x": bad})
    with pytest.raises(ValueError, match="must be lower-case"):
        check_prose_values({"Pos X": 1})
