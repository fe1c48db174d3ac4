# Plain entry points: `make test` sets up .venv when missing, then lints and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv test test-fast lint demo bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

venv: $(STAMP)  ## create .venv and install the pinned requirements (about 6 GB with torch's CUDA wheels)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

lint: venv  ## ruff over the tree
	$(PY) -m ruff check .

test: venv  ## lint, then every test (the README's test command; about 2 min on 2 cores)
	$(PY) -m ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist worksteal

# The edit loop: everything but the end-to-end runs marked slow (make test runs them all).
test-fast: venv  ## lint and the tests not marked slow (the edit loop)
	$(PY) -m ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist worksteal -m "not slow"

demo: venv  ## the paper's COCO table on the embedded dataset (about 20 min on 2 cores)
	$(PY) reproduce.py

bench: venv  ## the benchmarks in bench/ (data, loss, mAP, model)
	$(PY) bench/run_all.py

# One check of a CUDA machine in <= 8 minutes (throughput, memory, CUDA = CPU, exact resume); exits 0 without a GPU.
gpu-check: venv  ## throughput, memory, CUDA = CPU and exact resume on a GPU; exits 0 without one
	$(PY) bench/gpu_check.py --out bench/results/gpu_check.md

clean:  ## remove .venv and the caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
