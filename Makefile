# possae: `make book` builds the book on the offline default, `make test` runs the tests.
# Both create the virtual environment on first use (pinned versions; torch held at 2.13.0 CPU).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROFILE ?= organism
PYTEST_ARGS ?=
# two test processes (pytest-xdist): the files that read the quick-profile book run in one (tests/conftest.py), the
# others in both
TEST_WORKERS ?= 2

.PHONY: install test test-all book organism screenshots clean

# Python writes the byte code of what it imports, once, into the environment (and the repository's __pycache__
# folders, which git ignores), even where PYTHONDONTWRITEBYTECODE is set: otherwise every kernel compiles every module
# it imports again, about 16 s of each chapter. pip installs without compiling; possae.bytecode then imports what the
# book and the tests use, on both cores: about 5,000 modules, where compiling the whole environment compiled over
# 20,000 in about a minute.
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-compile -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check --no-compile -c constraints.txt -e ".[book,dev]"
	$(PY) -m possae.bytecode
	touch $@

install: $(VENV)/.installed

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-all: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --runslow $(PYTEST_ARGS)

book: install
	$(VENV)/bin/possae build --profile $(PROFILE)

# One PNG per figure of the built book (_build/html) at 1280 px and 390 px, into _build/screenshots (needs chromium).
screenshots: install
	$(PY) -m possae.screenshots

# Rebuild the model organism from the corpora (minutes on a GPU; on a CPU the language model step stops and
# names the CPU fallback: possae organism model --recipe cpu).
organism: install
	$(VENV)/bin/possae organism all

clean:
	rm -rf _build build/book
