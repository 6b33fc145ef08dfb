"""The book builds offline from the package alone: every toc page, no stray staging file, figures from the local
plotly, nothing from outside the site, clean executed pages, glued values that read clean; the README quotes the
recorded benchmark."""

import json
import re

import nbformat

from possae.book import chapter_names, toc_files
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
