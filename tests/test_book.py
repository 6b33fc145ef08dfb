"""The book builds offline from the package alone; executed pages are clean; one chapter re-runs into its own page."""

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
    toc_files,
)
from possae.data_paths import REPO_ROOT

EXTERNAL = re.compile(r"""<(?:script|img|iframe)[^>]+src=["'](?:https?:)?//|<link[^>]+href=["'](?:https?:)?//""")


def test_every_toc_page_is_built(quick_book):
    for name in toc_files():
        assert (quick_book / f"{name}.html").is_file(), name


def test_the_site_holds_only_the_toc_pages_and_searches_only_them(quick_book):
    """Staging files left beside the chapters (conftest plants .setup.running.ipynb and friends) are never pages."""
    pages = {p.relative_to(quick_book).with_suffix("").as_posix() for p in quick_book.rglob("*.html")
             if p.relative_to(quick_book).parts[0] != "_static"}
    assert pages == set(toc_files()) | {"index", "search", "genindex"}
    search = (quick_book / "searchindex.js").read_text()
    docnames = re.search(r'"docnames":\s*\[([^\]]*)\]', search).group(1)
    assert sorted(re.findall(r'"([^"]+)"', docnames)) == sorted(toc_files())
    assert "zzstray" not in search


def test_staging_file_names_are_excluded_from_the_book_and_chapters_are_not():
    import yaml
    from sphinx.util.matching import Matcher

    excluded = Matcher(yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["exclude_patterns"])
    for name in ("chapters/.setup.src.ipynb", "chapters/.setup.running.ipynb", "chapters/setup.failed.ipynb"):
        assert excluded(name), name
    for name in toc_files():
        assert not excluded(f"{name}.ipynb") and not excluded(f"{name}.md"), name


def test_only_pages_with_a_figure_load_plotly(quick_book):
    for name in toc_files():
        text = (quick_book / f"{name}.html").read_text()
        assert ("plotly.min.js" in text) == ('class="plotly-graph-div"' in text), name
    assert "plotly.min.js" not in (quick_book / "chapters" / "introduction.html").read_text()


def test_figures_render_from_the_local_plotly(quick_book):
    setup = (quick_book / "chapters" / "setup.html").read_text()
    assert setup.count('class="plotly-graph-div"') >= 4  # two of the organism's W_pos, one of GPT-2's, the loss
    assert "GPT-2 small&#39;s W_pos, rows 1..127" in setup or "GPT-2 small's W_pos, rows 1..127" in setup
    assert (quick_book / "_static" / "plotly.min.js").is_file() and "plotly.min.js" in setup
    assert "parameters" not in re.findall(r'class="cell tag_([a-z-]+)', setup)  # the parameters cell is hidden


def test_no_page_loads_anything_from_outside_the_site_or_thebe(quick_book):
    for page in quick_book.rglob("*.html"):
        text = page.read_text()
        found = EXTERNAL.findall(text)
        assert not found, (page.name, found[:3])
        assert "THEBE" not in text and "thebe" not in text.lower(), page.name


def test_executed_pages_hold_no_progress_bars_warnings_or_empty_outputs(quick_book):
    notebooks = sorted(p for p in (quick_book.parent.parent / "stage").rglob("*.ipynb")
                       if not p.name.startswith(".") and not p.name.endswith(".failed.ipynb"))  # planted: conftest
    assert [nb.stem for nb in notebooks] == sorted(chapter_names())
    for path in notebooks:
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            for out in cell.get("outputs", []):
                where = f"{path.name} cell {i}"
                # chapters print nothing: every number reaches the page as a glued value, a table or a figure
                assert out.output_type in ("display_data", "execute_result"), (where, out.get("text", "")[:200])
                assert any(str(v).strip() for v in out.data.values()), where


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
    runs = {"setup": (earlier, {"sae_id": "relu-nope"}),
            **{c: (tmp_path / f"{c}.ipynb", layer1) for c in ("positional", "semantic", "length_generalization")}}
    # each failure is its own kernel; two at a time, as the build runs chapters
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        failures = dict(zip(runs, pool.map(failure_of, runs, *zip(*runs.values()))))
    assert re.search(r"setup\.py failed in cell .*Unknown organism(-gpt2pos)? SAE id 'relu-nope'", failures["setup"], re.S)
    assert earlier.read_text() == "an earlier good notebook"
    assert "relu-nope" in (tmp_path / "bad.failed.ipynb").read_text()
    for chapter in ("positional", "semantic", "length_generalization"):
        assert re.search(rf"{chapter}\.py failed in cell .*studies layer-0 SAEs.*reads 'blocks\.1\.hook_resid_pre'",
                         failures[chapter] or "", re.S), chapter
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


# markup a glued text value would show literally: code, links, bold, math, *emphasis*
GLUED_MARKUP = re.compile(r"`|\]\(|\*\*|\$|(?<![\w*])\*[^\s*][^*]*\*(?![\w*])")
GLUE_REF = re.compile(r"\{glue(?::text)?\}`([A-Za-z0-9_]+)(?::[^`]*)?`")
TEMPLATE_LEFTOVER = re.compile(r"\bfrom (\d[\d.,%]*) to \1\b|\bbetween (\d[\d.,%]*) and \2\b|\{glue|\bNaN\b")


def test_every_value_the_prose_cites_is_glued_finite_and_reads_clean(quick_book):
    """Each {glue:text} name in a chapter's prose was glued by it and is finite; rendered text has no nan or leftovers."""
    import math

    from possae.glued import glued_values

    stage = quick_book.parent.parent / "stage"
    for name in chapter_names():
        nb = nbformat.read(next(stage.rglob(f"{name}.ipynb")), as_version=4)
        cited = {m for c in nb.cells if c.cell_type == "markdown" for m in GLUE_REF.findall(c.source)}
        values = glued_values(next(stage.rglob(f"{name}.ipynb")))
        assert cited - set(values) == set(), (name, sorted(cited - set(values)))
        for key in cited:
            v = values[key]
            assert v is not None and not (isinstance(v, float) and not math.isfinite(v)), (name, key, v)
            # glued text is not parsed as markdown: backticks, links, bold or math would show literally
            assert not (isinstance(v, str) and GLUED_MARKUP.search(v)), (name, key, v[:120])
        html = (quick_book / "chapters" / f"{name}.html").read_text()
        body = html[html.find("<main"):html.find("</main>")]
        text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", body, flags=re.S)
        assert not re.search(r"(?<![\w-])nan(?![\w-])", text), (name, re.search(r".{60}(?<![\w-])nan(?![\w-]).{60}", text, re.S))
        leftover = TEMPLATE_LEFTOVER.search(text)
        assert leftover is None, (name, text[max(0, leftover.start() - 80):leftover.end() + 80])


def test_glued_markup_pattern_catches_markup_but_not_arithmetic():
    for bad in ("have a *second* partner", "**bold**", "`code`", "[a](b)", "$x$"):
        assert GLUED_MARKUP.search(bad), bad
    for ok in ("d_sae * 2", "2*3 = 6", "a plain sentence."):
        assert GLUED_MARKUP.search(ok) is None, ok


def test_bold_marks_phrases_not_paragraphs(quick_book):
    for name in toc_files():
        html = (quick_book / f"{name}.html").read_text()
        for bold in re.findall(r"<strong>(.*?)</strong>", html, re.S):
            words = re.sub(r"<[^>]+>", " ", bold).split()
            assert len(words) <= 12, (name, " ".join(words)[:200])


def test_table_cells_are_whole(quick_book):
    """pandas cuts a cell past 50 characters to '...' unless told not to (possae.figures.use_offline_renderer)."""
    for name in toc_files():
        html = (quick_book / f"{name}.html").read_text()
        assert not re.search(r"\.\.\.\s*</td>", html), (name, re.search(r".{80}\.\.\.\s*</td>", html))


def test_template_leftover_pattern_catches_the_known_ones():
    """The leftover pattern flags 'from 4 to 4', 'from 1.20 to 1.20' and NaN, but not 'from 4 to 9'."""
    for bad in ("go from 4 to 4 distinct peaks", "from 1.20 to 1.20 positions", "(NaN when there are none)",
                "{glue:text}`x`"):
        assert TEMPLATE_LEFTOVER.search(bad), bad
    for ok in ("go from 4 to 9 distinct peaks", "from 1.20 to 1.25 positions"):
        assert TEMPLATE_LEFTOVER.search(ok) is None, ok


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
    reader; kernels connect over Unix sockets and back large tensors with huge pages; each run records its fingerprint, wall and CPU time, peak memory and its kernel's thread count."""
    from possae.book import RUN_RECORD, build

    tiny_book(tmp_path)
    stage = tmp_path / "stage"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)  # the build sets it for its kernels
    build("organism", root=tmp_path, stage=stage, html=False, jobs=2)
    records = {p.name: json.loads(p.read_text()) for p in stage.glob(f"*{RUN_RECORD}")}
    assert set(records) == {f"{c}{RUN_RECORD}" for c in ("a", "b", "reader")}
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) and r["wall_s"] > 0 and r["peak_rss_mb"] > 10
               for r in records.values())
    outputs = nbformat.read(stage / "a.ipynb", as_version=4).cells[-1].outputs
    # over Unix sockets: two kernels started at once over TCP can be handed the same port, and one dies
    assert outputs[0]["text"].split() == ["1", str(records[f"a{RUN_RECORD}"]["threads"]), "ipc", "1"]  # huge pages
    times = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")}
    build("organism", root=tmp_path, stage=stage, html=False, jobs=2)
    assert {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")} == times  # nothing ran again
    (tmp_path / "b.py").write_text(TINY_CHAPTER.replace("x = 1", "x = 3"))
    build("organism", root=tmp_path, stage=stage, html=False, jobs=1)
    after = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.ipynb")}
    assert after["a.ipynb"] == times["a.ipynb"]
    assert after["b.ipynb"] != times["b.ipynb"] and after["reader.ipynb"] != times["reader.ipynb"]
    build("organism", root=tmp_path, stage=stage, html=False, rerun=True)
    assert all(p.stat().st_mtime_ns != after[p.name] for p in stage.glob("*.ipynb"))
    with pytest.raises(ValueError, match="at least 1"):
        build("organism", root=tmp_path, stage=stage, html=False, jobs=0)


def test_the_readme_time_table_is_the_recorded_book_benchmark():
    """The README's time table is book_time_table() of benchmarks/results/book_organism_cpu.json, and that record
    times every chapter of the toc and both runs of both commands."""
    from possae.benchmark_results import BOOK_BENCHMARK, book_time_table
    from possae.book import chapter_names
    from possae.data_paths import REPO_ROOT

    record = json.loads(BOOK_BENCHMARK.read_text())
    assert set(record["book"]["chapters"]) == set(chapter_names())
    assert {"install_s", "book", "book_again", "test", "test_again"} <= set(record)
    assert book_time_table() in (REPO_ROOT / "README.md").read_text()
