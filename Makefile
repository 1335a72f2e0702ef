# The project's virtualenv lives in .venv and is made here; every target
# below installs what it needs from setup.cfg, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python workflows/demo.py

lint: $(STAMP)
	$(BIN)/ruff check parsl_rcylon tests workflows benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -v tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -v -m "not integration" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py --out benchmarks/results

clean-venv:
	rm -rf $(VENV)
