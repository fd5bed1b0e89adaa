# Each target sets itself up: a virtualenv in .venv with RPH and its tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test e2e bench lint check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo's cmdline says `python`: the virtualenv's comes first on PATH.
# `exec` makes RPH make's own child, so that a SIGTERM to make (which make
# passes on to its children) reaches RPH and stops the stand-in too.
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" exec $(BIN)/python -m rph --config examples/demo.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

# End to end: RPH in front of a real llama.cpp server, driven by real
# clients. Provisioning builds that server into a cache outside the clone
# (~4 min the first time, seconds after); if it fails, so does this target.
E2E_STAMP := $(VENV)/.installed-e2e

$(E2E_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,e2e]'
	touch $(E2E_STAMP)

e2e: $(E2E_STAMP)
	$(PYTHON) e2e/provision.py
	$(BIN)/python -m pytest e2e

lint: $(STAMP)
	$(BIN)/ruff check rph tests benchmarks examples e2e
	$(BIN)/ruff format --check rph tests benchmarks examples e2e
	$(BIN)/mypy

check: lint test

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
