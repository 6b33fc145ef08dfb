import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data():
    """The shared data folder; tests that need it skip, naming the fix, where it is absent."""
    from possae.data_paths import MissingDataError, data_dir

    try:
        return data_dir()
    except MissingDataError as e:
        pytest.skip(str(e))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Run the tests' tiny computations on one thread (no OpenMP barriers to wait on), then restore."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
