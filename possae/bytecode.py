"""Write, at install, the byte code of the modules the book's kernels, its HTML step and the tests import.

pip installs with --no-compile, and compiling the whole environment (over 20,000 files, most of them never imported:
transformers alone ships thousands of model files) took about a minute on two cores. Importing what the book uses, with
byte-code writing on, compiles only that. Anything missed here is compiled once, on its first import, since the
Makefile lets Python write byte code (it unexports PYTHONDONTWRITEBYTECODE).

    python -m possae.bytecode
"""

from __future__ import annotations

import os
import subprocess
import sys

from possae.kernel_server import KERNEL_MODULES

FIRST = ("torch",)  # what every group below imports: compiled once, before the groups run side by side
GROUPS = (
    KERNEL_MODULES,  # a chapter's kernel: the models, the SAEs, the computation and the figures
    # the build around the kernels (papermill, Jupyter Book's HTML step) and the tests
    ("possae.book", "papermill", "jupytext", "jupyter_book.cli.main", "sphinx.application", "myst_nb",
     "sphinx_book_theme", "pytest", "xdist"),
)


def compile_imports(first: tuple[str, ...] = FIRST, groups: tuple[tuple[str, ...], ...] = GROUPS,
                    python: str = sys.executable) -> None:
    """Import `first`, then each of `groups` in its own process side by side, each with byte-code writing on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for batch in ((first,), groups):
        procs = [subprocess.Popen([python, "-c", "import " + ", ".join(modules)], env=env) for modules in batch]
        failed = [p.args[-1] for p in procs if p.wait() != 0]
        if failed:
            raise SystemExit(f"possae.bytecode: these imports failed: {'; '.join(failed)}. Reinstall with `make install`.")


if __name__ == "__main__":
    compile_imports()
