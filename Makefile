# possae: `make book` builds the book on the offline default, `make test` runs the tests.
# Both create the virtual environment on first use (pinned versions; torch held at 2.13.0 CPU).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROFILE ?= organism
PYTEST_ARGS ?=

.PHONY: install test test-all book organism screenshots clean

# --no-compile: Python compiles only the modules a chapter imports, on first import, not all of torch's at install
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-compile -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check --no-compile -c constraints.txt -e ".[book,dev]"
	touch $@

install: $(VENV)/.installed

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q --runslow $(PYTEST_ARGS)

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
