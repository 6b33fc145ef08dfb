import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # torch reads it once, at its first allocation (possae.book)
# the tests use only what the repository ships: no shared data folder, even where one exists beside it
os.environ["POSSAE_DATA"] = os.path.join(os.path.dirname(__file__), "no-shared-data")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


# the test files that read the quick-profile book (the quick_book fixture): under `make test` (pytest-xdist, two
# processes) they run in one process, which builds the book once, while the other process runs every other file
QUICK_BOOK_FILES = ("tests/test_book.py", "tests/test_browser.py", "tests/test_figures_lint.py",
                    "tests/test_quantities.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Return pytest-xdist's per-file scheduling with QUICK_BOOK_FILES as one unit of work."""
    from xdist.scheduler import LoadFileScheduling

    class QuickBookTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "quick_book" if path in QUICK_BOOK_FILES else path

    return QuickBookTogether(config, log)


def pytest_itemcollected(item):
    """Fail a test that reads the quick book from a file outside QUICK_BOOK_FILES: under xdist it would build the
    book a second time in the other process."""
    if "quick_book" in getattr(item, "fixturenames", ()) and item.nodeid.split("::", 1)[0] not in QUICK_BOOK_FILES:
        raise pytest.UsageError(f"{item.nodeid} reads the quick book: add its file to QUICK_BOOK_FILES (tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    slow = [item for item in items if "slow" in item.keywords]  # deselected, not skipped: `make test-all` runs them
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture(scope="session")
def quick_book(tmp_path_factory):
    """The book built once under the quick profile (from the package alone); return its HTML folder.

    With $POSSAE_TEST_BOOK set to a built HTML folder (e.g. _build/html), the browser test checks that book instead.
    """
    from pathlib import Path

    from possae.book import build
    from possae.cache import file_lock
    from possae.data_paths import REPO_ROOT

    if os.environ.get("POSSAE_TEST_BOOK"):
        return Path(os.environ["POSSAE_TEST_BOOK"]).resolve()

    # kept between test runs (build/test-book): a chapter whose source, parameters, package and artifacts are unchanged
    # is not executed again (possae.book's fingerprints), so a second `make test` rebuilds only the HTML
    out = REPO_ROOT / "build" / "test-book"
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.with_suffix(".lock")):  # one build at a time, should two test processes ask for it
        plant_stale_staging_files(out / "stage" / "chapters")
        return build("quick", stage=out / "stage", out=out)


# named after no chapter of the toc, so that no chapter's run of this build consumes them (a run replaces its own)
STALE_STAGING = (".retired.src.ipynb", ".retired.running.ipynb", "retired.failed.ipynb")


def plant_stale_staging_files(chapters):
    """Leave in the staging folder what an interrupted or failed run leaves there (execute_chapter's .<name>.src and
    .<name>.running copies, <name>.failed): the book must not publish them."""
    import nbformat

    chapters.mkdir(parents=True, exist_ok=True)
    for name in STALE_STAGING:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Stray staging copy\n\nW_pos zzstray")])
        nbformat.write(nb, chapters / name)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Run the tests' tiny computations on one thread (no OpenMP barriers to wait on), then restore."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def organism_model_and_sae():
    """The shipped organism language model and its layer-0 relu-short SAE, loaded once, on the CPU."""
    from possae.loaders import load_model_and_sae

    return load_model_and_sae("organism", "relu-short", device="cpu")
