# Everything a newcomer needs: `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test check lint typecheck bench format

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

lint: $(VENV)/.installed
	$(PY) -m ruff check errands tests bench examples
	$(PY) -m ruff format --check errands tests bench examples

typecheck: $(VENV)/.installed
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest -q

# STYLE.md's "one command": the same as `make test`.
check: test

format: $(VENV)/.installed
	$(PY) -m ruff format errands tests bench examples
	$(PY) -m ruff check --fix errands tests bench examples

bench: $(VENV)/.installed
	$(PY) -m bench
