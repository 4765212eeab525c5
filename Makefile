# The two commands of the README: `make demo` sets up and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/fieldgate demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPY=$(BIN)/mypy scripts/typecheck

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/twin.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/graph.py
	$(BIN)/python bench/transport.py

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache *.egg-info
