# The project's virtualenv lives in .venv and is made here; every target
# below installs what it needs from setup.cfg, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv up down cluster-up cluster-deps cluster-down docs demo demo-tables train-large test test-fast lint soak bench bench-train bench-paper-quick clean-venv wheel-check

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: it takes the CPU build on local disk; the `train`
	# extra's range is then already satisfied and pulls nothing more.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[local,test,bench,train,examples,docs,monitoring,browser,release]'
	touch $(STAMP)

# The preprocessing-then-training workflow on the real 2013 NYC flights:
# prints the start-up time, the metrics and where the plot is.  With
# ATTACH=DIR it runs on a pilot `parsl-rcylon up --run-dir DIR` started
# (`make up` / `make down`), so repeated runs start at once.
ATTACH ?=
demo: $(STAMP)
	$(BIN)/python workflows/preprocess_train.py $(if $(ATTACH),--attach $(ATTACH))

up: $(STAMP)
	$(BIN)/parsl-rcylon up --run-dir runinfo/pilot --worker-ranks 4

down: $(STAMP)
	$(BIN)/parsl-rcylon down --run-dir runinfo/pilot

# The 2-node Slurm test cluster on this machine (root; docs/hpc.md, "The test cluster").
# `make test` needs neither: the tests marked slurm start it and stop it themselves.
cluster-up:
	bash cluster/setup.sh

# Its packages only (slurm-wlm, munge; root): .ci/run installs them before `make test`.
cluster-deps:
	bash cluster/setup.sh --install-only

cluster-down:
	bash cluster/teardown.sh

# The table-only pipeline (generate, join, sort, group-by).
demo-tables: $(STAMP)
	$(BIN)/python workflows/demo.py

# The training workflow on 8 jittered copies of the flights (about 2.6M rows).
train-large: $(STAMP)
	$(BIN)/python workflows/preprocess_train.py --scale 8 --out runinfo/preprocess_train-x8

# The documentation site (mkdocs, material, mkdocstrings) into site/: every
# warning fails the build, a broken internal link or anchor among them.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The wheel and sdist as users get them (about 2 minutes with pip's cache warm):
# twine check, the wheel installed into a fresh venv outside the checkout, then
# `parsl-rcylon doctor` and the quickstart run there (.ci/wheel-check).
wheel-check: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash .ci/wheel-check

lint: $(STAMP)
	$(BIN)/ruff check parsl_rcylon tests workflows benchmarks

# Every test has a timeout (pyproject.toml: 300 s unless marked); the 25
# slowest are listed at the end. The Slurm cluster's tests run in a process of
# their own: Radical Pilot leaves a finished session's client-side listeners
# (a Slurm pilot's on every interface) open in the process that ran it, and
# the local-pilot tests check this process's sockets.
test: $(STAMP) lint
	$(BIN)/python -m pytest -v --durations=25 -m "not slurm" tests
	$(BIN)/python -m pytest -v --durations=10 -m slurm tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -v --durations=25 -m "not integration" tests

# The full soak (CI runs 100 tasks of it inside `make test`): 1,000 mixed tasks
# with about 5% injected faults and retries=2; figures to benchmarks/results/soak.json.
soak: $(STAMP)
	SOAK_TASKS=1000 SOAK_RESULTS=benchmarks/results/soak.json $(BIN)/python -m pytest -v -s tests/test_soak.py

# Every benchmark, one after another (they must not share the machine): about
# an hour on 2 cores. Results (JSON, markdown, PNG) go to benchmarks/results.
RESULTS := benchmarks/results

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dask]'
	$(BIN)/python benchmarks/overhead.py --out $(RESULTS)
	# adjusted against stock Radical Pilot, alternating (overhead_rp_adjust.json)
	$(BIN)/python benchmarks/overhead.py --out $(RESULTS) --rp both --cycles 2 --replacements 2 --no-plain --attached 0
	# a loopback-only network namespace needs root
	if [ "$$(id -u)" = 0 ]; then $(BIN)/python benchmarks/netns_start.py --out $(RESULTS) --rp both; fi
	$(BIN)/python benchmarks/reliability.py --out $(RESULTS)
	$(BIN)/python benchmarks/packing.py --out $(RESULTS)
	$(BIN)/python benchmarks/handoff.py --out $(RESULTS)
	$(BIN)/python benchmarks/fsync.py --out $(RESULTS)
	$(BIN)/python benchmarks/ops.py --out $(RESULTS) --sizes 8M --repeats 5
	$(BIN)/python benchmarks/paper.py --out $(RESULTS)/paper
	$(BIN)/python benchmarks/train.py --out $(RESULTS)
	$(BIN)/python benchmarks/scale.py --out $(RESULTS)
	$(BIN)/python benchmarks/dispatch_load.py --liveness --out $(RESULTS)

# The training benchmark alone (about 5 minutes): loader, DDP vs torchrun, pipeline vs batch jobs.
bench-train: $(STAMP)
	$(BIN)/python benchmarks/train.py --out $(RESULTS)

bench-paper-quick: $(STAMP)
	$(BIN)/python benchmarks/paper.py --quick --out $(RESULTS)/paper-quick

clean-venv:
	rm -rf $(VENV)
