"""Progress bars: tqdm everywhere, and none at all where $TQDM_DISABLE is set (chapters executed for the book)."""

from __future__ import annotations

import os
import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    # tqdm.auto (which transformer_lens and sae_lens import too) warns once, at its first import, inside a Jupyter
    # kernel that has no ipywidgets, then falls back to text bars: the fallback is wanted, the warning is noise.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm as _tqdm

DISABLE_ENV = "TQDM_DISABLE"  # tqdm's own switch; `possae build` and `possae run` set it for the kernel


def tqdm(iterable=None, *args, disable: bool | None = False, **kwargs):
    """Return a tqdm bar over `iterable`, disabled when `disable` or $TQDM_DISABLE is set."""
    quiet = os.environ.get(DISABLE_ENV, "").lower() not in ("", "0", "false")
    return _tqdm(iterable, *args, disable=True if quiet else disable, **kwargs)
