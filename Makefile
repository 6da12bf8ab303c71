# The two commands of the README: `make run` (the whole service on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-full test-reliability lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m deploy.devstack

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Everything, with the reliability suite's full matrices (longer than CI's budget).
test-full: lint typecheck
	OPSFLOW_RELIABILITY=full $(BIN)/python -m pytest -q -p no:cacheprovider

# The reliability suite alone, full.
test-reliability: $(STAMP)
	OPSFLOW_RELIABILITY=full $(BIN)/python -m pytest -q -p no:cacheprovider -m reliability

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --quiet .

typecheck: $(STAMP)
	$(BIN)/mypy domain houyi store activities workflows runtime simulator deploy starter opsctl worker.py tests bench

bench: $(STAMP)
	$(BIN)/python -m bench.evacuation
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.sizing

clean:
	rm -rf $(VENV) var
