# Plain entry points: `make test` sets up .venv when missing, then lints and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

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

demo: venv
	$(PY) reproduce.py

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
