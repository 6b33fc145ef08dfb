"""The book's chapter order: the cache's producers, then the longest first (by the last run or, on a fresh clone, by the
recorded benchmark), then the ledger."""

import json
from pathlib import Path

from possae.benchmark_results import recorded_chapter_walls
from possae.book import CACHE_PRODUCERS, RUN_RECORD, ChapterJob, expected_wall, run_order


def record(path, walls):
    path.write_text(json.dumps({"book": {"chapters": {k: {"wall_s": v, "cpu_s": v} for k, v in walls.items()}}}))
    return path


def test_recorded_walls_are_read_and_a_bad_record_gives_none(tmp_path):
    assert recorded_chapter_walls(record(tmp_path / "b.json", {"setup": 12.5, "oscillation": 80})) == \
        {"setup": 12.5, "oscillation": 80.0}
    assert recorded_chapter_walls(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert recorded_chapter_walls(tmp_path / "bad.json") == {}
    (tmp_path / "other.json").write_text(json.dumps({"book": {}}))
    assert recorded_chapter_walls(tmp_path / "other.json") == {}


def test_expected_wall_prefers_the_last_run_then_the_benchmark(tmp_path, monkeypatch):
    import possae.benchmark_results as br

    monkeypatch.setattr(br, "BOOK_BENCHMARK", record(tmp_path / "b.json", {"oscillation": 80.0}))
    monkeypatch.setattr(br.recorded_chapter_walls, "__defaults__", (br.BOOK_BENCHMARK,))
    job = ChapterJob("chapters/oscillation", tmp_path / "oscillation.py", tmp_path / "oscillation.ipynb", {})
    assert expected_wall(job, "organism") == 80.0  # a fresh clone: the recorded benchmark
    assert expected_wall(job, "quick") == 0.0  # the benchmark is of the organism profile only
    job.out.with_suffix(RUN_RECORD).write_text(json.dumps({"wall_s": 7.0}))
    assert expected_wall(job, "organism") == expected_wall(job, "quick") == 7.0  # the last run here wins
    other = ChapterJob("chapters/unbenchmarked", tmp_path / "u.py", tmp_path / "u.ipynb", {})
    assert expected_wall(other, "organism") == 0.0


def test_the_caches_producers_start_first_then_the_longest_and_the_ledger_last(tmp_path):
    def job(name, wall, given=None):
        j = ChapterJob(f"chapters/{name}", tmp_path / f"{name}.py", tmp_path / f"{name}.ipynb", given or {})
        j.out.with_suffix(RUN_RECORD).write_text(json.dumps({"wall_s": wall}))
        return j

    todo = [job("setup", 5.0), job("positional", 30.0), job("semantic", 10.0), job("ledger", 99.0, {"chapters_dir": "."}),
            job("matching", 45.0), job("length_generalization", 20.0)]
    assert CACHE_PRODUCERS == ("setup", "semantic")
    assert [Path(j.name).name for j in run_order(todo, "organism")] == [
        "setup", "semantic", "matching", "positional", "length_generalization", "ledger"]


def test_the_build_imports_once_what_each_chapters_worker_would_import():
    """The modules of the parameters classes of the chapters that run (the layer-0 chapters' import sae_lens), once
    each, beside papermill's: the workers are forked after they are imported."""
    from possae.book import _worker_modules

    jobs = [ChapterJob(f"chapters/{c}", Path(f"chapters/{c}.py"), Path(f"/tmp/{c}.ipynb"), {})
            for c in ("semantic", "positional", "semantic", "a_tiny_one")]
    assert _worker_modules(jobs) == ["papermill", "jupytext", "nbformat", "possae.standin", "possae.positional",
                                     "possae.semantic"]
