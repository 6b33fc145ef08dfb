"""One number per quantity: the registry of quantities shown on several pages, and the scan of a built book."""

import pandas as pd
import pytest

from possae.glued import values_frame
from possae.ledger import CHAPTERS, read_chapters
from possae.quantities import (QUANTITIES, Quantity, conflicts, quantities_sentence,
                               quantity_table, undeclared)


def frame(rows):
    return pd.DataFrame(rows, columns=["chapter", "name", "value"])


Q = (Quantity("the context", ("setup_context", "pos_context", "sem_context")),
     Quantity("the loss", ("ce_clean",), (("osc_ce_normal", "the oscillation chapter's windows"),)))


def test_one_sample_values_that_agree_pass_and_one_that_differs_is_named():
    ok = frame([("setup", "setup_context", 128), ("positional", "pos_context", 128), ("semantic", "sem_context", 128)])
    assert conflicts(ok, Q).empty
    bad = frame([("setup", "setup_context", 128), ("positional", "pos_context", 128), ("semantic", "sem_context", 64)])
    found = conflicts(bad, Q)
    assert list(found["name"]) == ["sem_context"] and found["expected"].iloc[0] == 128
    assert "These disagree: sem_context on semantic is 64, not 128" in quantities_sentence(bad, Q)


def test_floats_agree_to_rounding_only():
    near = frame([("setup", "setup_context", 0.1 + 0.2), ("positional", "pos_context", 0.3)])
    assert conflicts(near, Q).empty
    apart = frame([("setup", "setup_context", 0.434), ("positional", "pos_context", 0.470)])
    assert len(conflicts(apart, Q)) == 1


def test_a_quantity_on_another_sample_is_listed_with_its_sample_not_flagged():
    values = frame([("setup", "ce_clean", 5.18), ("oscillation", "osc_ce_normal", 5.16)])
    assert conflicts(values, Q).empty and undeclared(values, Q).empty
    table = quantity_table(values, Q)
    assert table["other samples"].iloc[0] == "5.16 on oscillation (the oscillation chapter's windows)"


def test_the_scan_finds_one_name_with_two_values_on_two_pages_unless_declared():
    values = frame([("setup", "setup_dce_in", 0.434), ("oscillation", "osc_dce_in", 0.470),
                    ("past_context", "pc_dce_in", 0.467), ("past_context", "pc_other", 1.0)])
    loose = undeclared(values, Q, {})
    assert set(loose["name"]) == {"setup_dce_in", "osc_dce_in", "pc_dce_in"}
    assert undeclared(values, Q, {"dce_in": "declared distinct"}).empty
    same = frame([("setup", "setup_dce_in", 0.467), ("past_context", "pc_dce_in", 0.467)])
    assert undeclared(same, Q, {}).empty
    one_page = frame([("setup", "setup_x", 1.0), ("setup", "x", 2.0)])  # one page: not a cross-page report
    assert undeclared(one_page, Q, {}).empty


def test_the_built_book_reports_each_quantity_with_one_value(quick_book):
    values = values_frame(read_chapters(quick_book.parent.parent / "stage" / "chapters"))
    assert conflicts(values).empty, conflicts(values).to_string()
    assert undeclared(values).empty, undeclared(values).to_string()
    assert len(quantity_table(values)) >= 10
    # a renamed glue value would silently drop out of the scan: every registered name is glued by some chapter
    glued = set(values["name"])
    assert not [n for q in QUANTITIES for n in (*q.same, *(n for n, _ in q.samples)) if n not in glued]


def test_the_ledger_page_shows_the_scan(quick_book):
    html = (quick_book / "chapters" / "ledger.html").read_text()
    assert "One number per quantity" in html and "quantities appear on two or more pages" in html
    assert "These disagree" not in html
