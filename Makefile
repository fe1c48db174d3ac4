# Plain entry points: `make test` sets up .venv when missing, then lints and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint demo bench gpu-check clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

lint: venv
	$(PY) -m ruff check .

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The edit loop: everything but the end-to-end runs marked slow (make test runs them all).
test-fast: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

demo: venv
	$(PY) reproduce.py

bench: venv
	$(PY) bench/run_all.py

# One check of a CUDA machine in <= 8 minutes (throughput, memory, CUDA = CPU, exact resume); exits 0 without a GPU.
gpu-check: venv
	$(PY) bench/gpu_check.py --out bench/results/gpu_check.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
