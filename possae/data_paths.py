"""Where possae finds the read-only shared data (corpora, GPT-2's W_pos and tokenizer).

Only retraining the organism and rebuilding the evaluation pack read it; the book reads possae/artifacts/evalpack.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "POSSAE_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingDataError(FileNotFoundError):
    """A data file possae needs is not where it was looked for."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the shared data folder: `path`, else $POSSAE_DATA, else ../shared/data beside the repo."""
    if path is not None:
        candidate = Path(path)
        source = "the given path"
    elif os.environ.get(DATA_ENV):
        candidate = Path(os.environ[DATA_ENV])
        source = f"${DATA_ENV}"
    else:
        candidate = REPO_ROOT.parent / "shared" / "data"
        source = "the default location beside the repository"
    if not candidate.is_dir():
        raise MissingDataError(
            f"Shared data folder {candidate} ({source}) does not exist. Point ${DATA_ENV} "
            "(or the --data option) at the folder holding corpora/ and gpt2-small/ (needed only to retrain the "
            "organism or rebuild the evaluation pack)."
        )
    return candidate


def data_file(relative: str, path: str | os.PathLike | None = None) -> Path:
    """Return the path of one file inside the shared data folder, checking that it exists."""
    f = data_dir(path) / relative
    if not f.is_file():
        raise MissingDataError(
            f"Data file {f} is missing. Set ${DATA_ENV} to a folder that holds {relative}."
        )
    return f
