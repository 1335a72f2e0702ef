# The project's virtualenv lives in .venv and is made here; every target
# below installs what it needs from setup.cfg, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench bench-paper-quick clean-venv

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

# Every benchmark, one after another (they must not share the machine): about
# an hour on 2 cores. Results (JSON, markdown, PNG) go to benchmarks/results.
RESULTS := benchmarks/results

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dask]'
	$(BIN)/python benchmarks/overhead.py --out $(RESULTS)
	$(BIN)/python benchmarks/packing.py --out $(RESULTS)
	$(BIN)/python benchmarks/handoff.py --out $(RESULTS)
	$(BIN)/python benchmarks/fsync.py --out $(RESULTS)
	$(BIN)/python benchmarks/ops.py --out $(RESULTS) --sizes 2M,8M
	$(BIN)/parsl-rcylon bench paper --out $(RESULTS)/paper

bench-paper-quick: $(STAMP)
	$(BIN)/parsl-rcylon bench paper --quick --out $(RESULTS)/paper-quick

clean-venv:
	rm -rf $(VENV)
