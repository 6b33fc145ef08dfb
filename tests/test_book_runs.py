"""Chapters run in kernels: a failing one names itself and keeps the earlier notebook, parameters are checked before a
kernel starts, `possae run` renders one chapter into its own page, and the build runs chapters two at a time, once."""

import json
import multiprocessing
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor

import nbformat
import pytest

from possae.book import (
    ChapterFailed,
    PROFILES,
    build,
    chapter_names,
    chapter_parameters,
    execute_chapter,
    parse_parameters,
    run_chapter,
    run_folder_name,
)
from possae.data_paths import REPO_ROOT


def test_profiles_and_chapters():
    """The three profiles, the eight chapters in reading order, and every profile name declared by some chapter."""
    declared = set().union(*(chapter_parameters(REPO_ROOT / "chapters" / f"{n}.py") for n in chapter_names()))
    for profile, params in PROFILES.items():
        assert set(params) <= declared, (profile, sorted(set(params) - declared))
    assert set(PROFILES) == {"organism", "quick", "gpt2"}
    assert chapter_names() == ["setup", "positional", "semantic", "length_generalization", "oscillation", "matching",
                               "past_context", "ledger"]


def failure_of(chapter: str, out, params: dict) -> str | None:
    """Return the ChapterFailed message of executing a chapter into `out` (None if it ran)."""
    try:
        execute_chapter(REPO_ROOT / "chapters" / f"{chapter}.py", out, params)
    except ChapterFailed as e:
        return str(e)
    return None


def test_a_failing_chapter_names_itself_and_its_cause_and_keeps_the_earlier_notebook(tmp_path):
    earlier = tmp_path / "bad.ipynb"
    earlier.write_text("an earlier good notebook")
    layer1 = {"sae_id": "relu-L1", "model_name": "organism", "sae_release": "organism"}
    # each failure is its own kernel; two at a time, as the build runs chapters (semantic's and length's analyze refuse
    # a layer-1 SAE in their unit tests, without a kernel)
    runs = {"setup": (earlier, {"sae_id": "relu-nope"}), "positional": (tmp_path / "positional.ipynb", layer1)}
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        failures = dict(zip(runs, pool.map(failure_of, runs, *zip(*runs.values()))))
    assert re.search(r"setup\.py failed in cell .*Unknown organism(-gpt2pos)? SAE id 'relu-nope'", failures["setup"], re.S)
    assert earlier.read_text() == "an earlier good notebook"
    assert "relu-nope" in (tmp_path / "bad.failed.ipynb").read_text()
    assert re.search(r"positional\.py failed in cell .*studies layer-0 SAEs.*reads 'blocks\.1\.hook_resid_pre'",
                     failures["positional"] or "", re.S)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".ipynb") and not p.name.endswith(".failed.ipynb")
                and p.name != "bad.ipynb"]
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        build("huge")


def test_build_refuses_parameter_names_no_running_chapter_declares(tmp_path, monkeypatch):
    """`possae build` raises on a name the chapters it runs do not declare, instead of dropping it silently."""
    import possae.book as book

    with pytest.raises(ValueError, match=r"this build sets 'threshhold', which no chapter it runs declares"):
        build("quick", only="positional", extra={"threshhold": 0.3}, stage=tmp_path / "stage", html=False)
    with pytest.raises(ValueError, match=r"this build sets 'width_sweep_ids', which no chapter it runs declares"):
        build("quick", only="setup", extra={"width_sweep_ids": []}, stage=tmp_path / "stage", html=False)
    monkeypatch.setitem(book.PROFILES, "typo", {"n_heldout_token": 10})
    with pytest.raises(ValueError, match=r"profile 'typo' sets 'n_heldout_token'"):
        build("typo", stage=tmp_path / "stage", html=False)
    with pytest.raises(ValueError, match=r"Chapter setup has no parameter 'width_sweep_ids'"):
        execute_chapter(REPO_ROOT / "chapters" / "setup.py", tmp_path / "x.ipynb", {"width_sweep_ids": []})
    with pytest.raises(ValueError, match=r"Unknown chapter 'positionl'"):
        build("quick", only="positionl", stage=tmp_path / "stage", html=False)


def test_run_parameters_are_read_as_yaml_and_unknown_names_are_refused(tmp_path):
    setup = REPO_ROOT / "chapters" / "setup.py"
    assert parse_parameters(setup, [("sae_id", "relu-full"), ("n_heldout_tokens", "2048"), ("device", "None")]) == {
        "sae_id": "relu-full", "n_heldout_tokens": 2048, "device": None}
    with pytest.raises(ValueError, match=r"Chapter setup has no parameter 'sae_idd'; its parameters: device, "
                                         r"gpt2_wpos_path, model_name, n_heldout_tokens, sae_id, sae_release$"):
        run_chapter("setup", [("sae_idd", "relu-full")], runs=tmp_path)
    with pytest.raises(ValueError, match="Unknown chapter 'nope'; chapters: setup, positional"):
        run_chapter("nope", [], runs=tmp_path)
    assert not list(tmp_path.iterdir())
    assert run_folder_name("positional", {"sae_id": "relu-full", "seed": 3}) == "positional-sae_id-relu-full-seed-3"


@pytest.fixture(scope="module")
def setup_run(tmp_path_factory):
    """A copy of the book's sources and one successful `possae run setup` in it: (root, runs, page)."""
    root = tmp_path_factory.mktemp("root")
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / f, root / f)
    shutil.copytree(REPO_ROOT / "chapters", root / "chapters")
    runs = root / "build" / "runs"
    page = run_chapter("setup", [("sae_id", "relu-full"), ("n_heldout_tokens", "1024")], profile="quick", root=root,
                       runs=runs)
    return root, runs, page


def test_a_run_renders_its_page_with_every_glued_value_resolved(setup_run):
    _, runs, page = setup_run
    assert page == runs / "setup-n_heldout_tokens-1024-sae_id-relu-full" / "_build" / "html" / "setup.html"
    html = page.read_text()
    assert "{glue:" not in html and "glue:text" not in html
    assert f"{PROFILES['quick']['sae_release']} / relu-full" in html  # the run's profile names the release
    nb = nbformat.read(page.parents[2] / "setup.ipynb", as_version=4)
    glued = {o.metadata["scrapbook"]["name"]: o.data["application/papermill.record/text/plain"]
             for c in nb.cells for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
    assert f"{float(glued['explained_variance']):.1%}" in html and f"{float(glued['adjcos']):.3f}" in html


def test_a_failed_run_leaves_the_earlier_output_intact(setup_run):
    root, runs, page = setup_run
    before = page.read_bytes()
    chapter = root / "chapters" / "setup.py"
    chapter.write_text(chapter.read_text().replace("use_offline_renderer()\n",
                                                   "use_offline_renderer()\nraise RuntimeError('broken on purpose')\n", 1))
    kept = runs / "setup-n_heldout_tokens-1024-sae_id-relu-full.failed.ipynb"
    with pytest.raises(ChapterFailed, match=f"broken on purpose \\(notebook: {re.escape(str(kept))}\\)"):
        run_chapter("setup", [("sae_id", "relu-full"), ("n_heldout_tokens", "1024")], profile="quick", root=root,
                    runs=runs)
    assert page.read_bytes() == before and "broken on purpose" in kept.read_text()
    assert sorted(p.name for p in runs.iterdir()) == ["setup-n_heldout_tokens-1024-sae_id-relu-full",
                                                     "setup-n_heldout_tokens-1024-sae_id-relu-full.failed.ipynb"]


def test_favicon_ico_is_a_valid_icon_holding_a_png():
    import struct
    import zlib

    from possae.book import favicon_ico

    ico = favicon_ico((1, 2, 3), size=4)
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    width, height, _, _, _, bpp, size, offset = struct.unpack("<BBBBHHII", ico[6:22])
    assert (reserved, kind, count, width, height, bpp, offset) == (0, 1, 1, 4, 4, 32, 22)
    png = ico[offset:]
    assert len(png) == size and png[:8] == b"\x89PNG\r\n\x1a\n"
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    assert zlib.decompress(png[idat + 4 : idat + 4 + length]) == (b"\x00" + bytes((1, 2, 3)) * 4) * 4


def test_each_chapters_parameters_cell_is_its_params_class():
    """Every executable chapter has a ChapterParams class whose fields are exactly its parameters cell's names,
    and whose defaults are the cell's values."""
    import ast
    import dataclasses

    import jupytext

    from possae.book import CHAPTER_PARAMS, params_class

    assert set(CHAPTER_PARAMS) == set(chapter_names())
    for name in chapter_names():
        src = REPO_ROOT / "chapters" / f"{name}.py"
        cls = params_class(name)
        assert set(cls.names()) == chapter_parameters(src), name
        cell = next(c for c in jupytext.read(src).cells if "parameters" in c.metadata.get("tags", []))
        cell_values = {t.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
                       if isinstance(node, ast.Assign) for t in node.targets}
        assert cls.from_mapping(cell_values) == cls(), name  # the cell's defaults are the class's


def test_ill_typed_parameters_fail_before_a_kernel_starts(tmp_path):
    """A wrong-typed value raises ParameterError naming the parameter, and no notebook is written."""
    from possae.params import ParameterError

    with pytest.raises(ParameterError, match="parameter 'threshold' must be float"):
        execute_chapter(REPO_ROOT / "chapters" / "positional.py", tmp_path / "p.ipynb", {"threshold": "high"})
    assert list(tmp_path.iterdir()) == []


TINY_CHAPTER = '''# %% tags=["parameters"]
x = 1
# %%
import os, time
from ipykernel.connect import get_connection_info
print(x, os.environ["OMP_NUM_THREADS"], get_connection_info(unpack=True)["transport"], os.environ["THP_MEM_ALLOC_ENABLE"])
'''
TINY_READER = '''# %% tags=["parameters"]
chapters_dir = "."
# %%
print(chapters_dir)
'''


def tiny_book(root):
    """Write a book of two chapters and one that reads the others' notebooks (like the ledger) into root."""
    (root / "_config.yml").write_text("title: tiny\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: a\n- file: b\n- file: reader\n")
    (root / "intro.md").write_text("# Tiny\n")
    (root / "a.py").write_text(TINY_CHAPTER)
    (root / "b.py").write_text(TINY_CHAPTER.replace("x = 1", "x = 2"))
    (root / "reader.py").write_text(TINY_READER)


def test_build_runs_chapters_two_at_a_time_once_and_reruns_what_changed(tmp_path, monkeypatch):
    """The second build of an unchanged book runs nothing; a changed parameter reruns its chapter and the ledger-like
    reader; kernels connect over Unix sockets and back large tensors with huge pages, forked from the kernel server or started
    plainly; each run records its fingerprint, wall and CPU time, peak memory and its kernel's thread count."""
    from possae.book import RUN_RECORD, build

    tiny_book(tmp_path)
    stage = tmp_path / "stage"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)  # the build sets it for its kernels
    monkeypatch.setattr("possae.kernel_server.KERNEL_MODULES", ("ipykernel.kernelapp",))  # all the tiny book needs
    build("organism", root=tmp_path, stage=stage, html=False, jobs=2)
    records = {p.name: json.loads(p.read_text()) for p in stage.glob(f"*{RUN_RECORD}")}
    assert set(records) == {f"{c}{RUN_RECORD}" for c in ("a", "b", "reader")}
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) and r["wall_s"] > 0 and r["peak_rss_mb"] > 10
               and r["forked"] for r in records.values())  # three chapters: kernels forked from the kernel server
    outputs = nbformat.read(stage / "a.ipynb", as_version=4).cells[-1].outputs
    # over Unix sockets: two kernels started at once over TCP can be handed the same port, and one dies
    assert outputs[0]["text"].split() == ["1", str(records[f"a{RUN_RECORD}"]["threads"]), "ipc", "1"]  # huge pages
    times = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")}
    build("organism", root=tmp_path, stage=stage, html=False, jobs=2)
    assert {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")} == times  # nothing ran again
    (tmp_path / "b.py").write_text(TINY_CHAPTER.replace("x = 1", "x = 3"))
    build("organism", root=tmp_path, stage=stage, html=False, jobs=1, serve=False)
    after = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")}
    assert after["a.ipynb"] == times["a.ipynb"]
    assert after["b.ipynb"] != times["b.ipynb"] and after["reader.ipynb"] != times["reader.ipynb"]
    build("organism", root=tmp_path, stage=stage, html=False, rerun=True, serve=False)
    assert all(p.stat().st_mtime_ns != after[p.name] for p in stage.glob("*.ipynb"))
    plain = json.loads((stage / f"a{RUN_RECORD}").read_text())  # each kernel started from scratch, as a user's
    assert "forked" not in plain and plain["peak_rss_mb"] > 10 and plain["cpu_s"] > 0
    assert nbformat.read(stage / "a.ipynb", as_version=4).cells[-1].outputs[0]["text"] == outputs[0]["text"]
    with pytest.raises(ValueError, match="at least 1"):
        build("organism", root=tmp_path, stage=stage, html=False, jobs=0)

