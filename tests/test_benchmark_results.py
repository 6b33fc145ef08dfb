"""The README's benchmark figures are generated from the recorded files, and their verdict follows the figures."""

import json

import pytest

from possae.benchmark_results import (
    LAYER0_BENCHMARK,
    MATCHING_BENCHMARK,
    README,
    README_ENGINE_END,
    README_ENGINE_START,
    engine_paragraph,
    refresh_readme,
)


def test_the_readme_engine_figures_are_the_recorded_benchmarks():
    assert engine_paragraph() in README.read_text()


def test_the_shipped_matching_record_has_the_big_sparse_pair_and_the_organism_suite():
    record = json.loads(MATCHING_BENCHMARK.read_text())
    big = [r for r in record["runs"] if r["n_a"] == 24_576 and r["case"] == "rand" and r["method"] == "sparse"]
    assert big and big[0]["certified"]
    suite = record["organism_suite"]
    assert suite["pairs"] and all(p["sparse_certified"] and p["same_pairs"] for p in suite["pairs"])


def _side_by_side(tmp_path, old_ratio, new_ratio):
    runs = [{"round": i, "commit": c, "matmul_seconds": 10.0, "exact_seconds": 10.0 * r,
             "ratio_exact_over_matmul": r} for i in (1, 2) for c, r in (("aaaaaaa", old_ratio), ("bbbbbbb", new_ratio))]
    path = tmp_path / "side.json"
    path.write_text(json.dumps({"runs": runs, "recorded_then": {
        "aaaaaaa": {"matmul_seconds": 20.0, "exact_seconds": 24.0}}}))
    return path


@pytest.mark.parametrize("new_ratio, verdict", [(1.50, "the code did not slow down"), (1.70, "the newer code is slower")])
def test_the_side_by_side_verdict_follows_the_ratios(tmp_path, new_ratio, verdict):
    text = engine_paragraph(LAYER0_BENCHMARK, _side_by_side(tmp_path, 1.5, new_ratio), tmp_path / "none.json")
    assert verdict in text
    assert "recorded as 1.20x" in text and "mean ratios 1.50x" in text


def test_refresh_rewrites_only_between_the_markers_and_names_a_missing_block(tmp_path):
    from possae.benchmark_results import README_TABLE_END, README_TABLE_START, book_time_table

    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{README_TABLE_START}\nold\n{README_TABLE_END}\nmiddle\n{README_ENGINE_START}\nold\n"
                      f"{README_ENGINE_END}\ntail\n")
    refresh_readme(readme)
    assert readme.read_text() == f"head\n{book_time_table()}\nmiddle\n{engine_paragraph()}\ntail\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="has no block .* put the two markers back"):
        refresh_readme(readme)


def _book_record(chapters: dict[str, float], html: float, book: float, install: float, test: float | None) -> dict:
    record = {"install_s": install, "book": {"chapters_wall_s": sum(chapters.values()) / 2, "html_s": html,
                                             "make_book_with_install_s": book,
                                             "chapters": {n: {"wall_s": s} for n, s in chapters.items()}}}
    if test is not None:
        record["test"] = {"make_test_s": test}
    return record


def test_the_targets_sentence_names_each_target_met_or_missed():
    from possae.benchmark_results import book_targets, targets_sentence

    met = _book_record({"a": 39.0, "b": 30.0}, html=5.0, book=226.0, install=99.0, test=185.0)
    assert [(w, round(s, 1), lim) for w, s, lim in book_targets(met)][1:] == [
        ("the longest chapter (a)", 39.0, 40.0), ("the HTML", 5.0, 30.0), ("`make book` with the install", 226.0, 300.0),
        ("`make test` with the install", 284.0, 300.0)]
    assert targets_sentence(met).startswith("Against issue 24's targets, every target is met:")
    missed = _book_record({"a": 41.0, "b": 30.0}, html=5.0, book=226.0, install=120.0, test=185.0)
    text = targets_sentence(missed)
    assert "2 of 5 targets are missed" in text
    assert "the longest chapter (a) 41 s (at most 40: missed)" in text and "with the install 305 s (at most 300: missed)" in text
    assert len(book_targets(_book_record({"a": 1.0}, 1.0, 1.0, 1.0, test=None))) == 4  # no tests timed: no test target
