"""The book builds offline: chapters execute under papermill, the HTML loads nothing from outside the site."""

import re

import pytest

from possae.book import ChapterFailed, PROFILES, build, chapter_parameters, execute_chapter, toc_files
from possae.data_paths import REPO_ROOT

EXTERNAL = re.compile(r"""<(?:script|img|iframe)[^>]+src=["'](?:https?:)?//|<link[^>]+href=["'](?:https?:)?//""")


@pytest.fixture(scope="module")
def quick_book(tmp_path_factory, request):
    request.getfixturevalue("shared_data")
    tmp = tmp_path_factory.mktemp("book")
    return build("quick", stage=tmp / "stage", out=tmp)


def test_every_toc_page_is_built(quick_book):
    for name in toc_files():
        assert (quick_book / f"{name}.html").is_file(), name


def test_figures_render_from_the_local_plotly(quick_book):
    setup = (quick_book / "chapters" / "setup.html").read_text()
    assert setup.count('class="plotly-graph-div"') >= 3
    assert (quick_book / "_static" / "plotly.min.js").is_file() and "plotly.min.js" in setup
    assert "parameters" not in re.findall(r'class="cell tag_([a-z-]+)', setup)  # the parameters cell is hidden


def test_no_page_loads_anything_from_outside_the_site(quick_book):
    for page in quick_book.rglob("*.html"):
        found = EXTERNAL.findall(page.read_text())
        assert not found, (page.name, found[:3])


def test_every_chapter_declares_the_profile_parameters():
    for name in toc_files():
        src = REPO_ROOT / f"{name}.py"
        if src.is_file():
            assert {"model_name", "sae_release", "sae_id", "device"} <= chapter_parameters(src), name
    assert set(PROFILES) == {"organism", "quick", "gpt2"}


def test_papermill_reexecution_with_another_sae(tmp_path, shared_data):
    out = execute_chapter(REPO_ROOT / "chapters" / "setup.py", tmp_path / "setup.ipynb",
                          {"sae_id": "relu-full", "n_heldout_tokens": 2048})
    text = out.read_text()
    assert "organism / relu-full" in text and '"remove-cell"' in text


def test_bad_parameters_fail_naming_chapter_and_cause(tmp_path):
    with pytest.raises(ChapterFailed, match=r"setup\.py failed in cell .*Unknown organism SAE id 'relu-nope'"):
        execute_chapter(REPO_ROOT / "chapters" / "setup.py", tmp_path / "bad.ipynb", {"sae_id": "relu-nope"})
    for chapter in ("positional", "semantic", "length_generalization"):
        with pytest.raises(ChapterFailed, match=rf"{chapter}\.py failed in cell .*studies layer-0 SAEs.*reads "
                                                rf"'blocks\.1\.hook_resid_pre'"):
            execute_chapter(REPO_ROOT / "chapters" / f"{chapter}.py", tmp_path / f"{chapter}.ipynb", {"sae_id": "relu-L1"})
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        build("huge")
