# The two commands of the README: `make demo` sets up and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# The package is installed as a strict editable install: setuptools links each of its files
# into build/__editable__.*/fieldgate/, laid out the way it imports (package-dir maps agents/,
# graphs/, ... into fieldgate.*), and that tree is what Python and plain `mypy` read. Edits
# show through the links; a file added or removed needs a new link tree, so the install
# reruns whenever a package directory's listing changes.
# OPA's own evaluator, the reference of the policy conformance suite: its wheel asks for
# Python >= 3.14 but loads and evaluates from 3.11, so it is installed apart (README).
OPA_GO = opa-golib-python-bindings==0.4.4
PACKAGE_DIRS := $(shell find fieldgate cli agents graphs tools evals policies -type d -not -name __pycache__)

.PHONY: setup demo test conformance lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PACKAGE_DIRS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python '$(OPA_GO)'
	touch $@

demo: setup
	$(BIN)/fieldgate demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers: the suite is mostly waiting on databases, brokers and subprocesses, and every
# test that needs a service gets its own schema, broker, port or topic root.
test: lint
	$(BIN)/pytest -n 2

# The long run of the policy conformance suite: every eval suite's decisions and 10,000
# generated inputs on regopy, regorus and OPA's evaluator (by hand: CI runs the default part).
conformance: setup
	$(BIN)/pytest -n 2 -q -m slow tests/test_policy_conformance.py

bench: setup
	$(BIN)/python bench/twin.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/graph.py
	$(BIN)/python bench/transport.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info
