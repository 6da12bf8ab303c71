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

# Every benchmark (each writes bench/results/<name>.md and .json), then bench/results.md. A benchmark that fails
# does not stop the others; the report names it (missing or stale results) and the target fails.
BENCHMARKS := evacuation intake sizing open_workflows overhead growth

bench: $(STAMP)
	@began=$$(date +%s); status=0; \
	for name in $(BENCHMARKS); do \
		echo "== python -m bench.$$name"; start=$$(date +%s); \
		$(BIN)/python -m bench.$$name || { echo "bench.$$name failed (exit $$?)" >&2; status=1; }; \
		echo "== bench.$$name: $$(( $$(date +%s) - start )) s"; \
	done; \
	$(BIN)/python -m bench.report --since $$began || status=1; \
	echo "== make bench: $$(( $$(date +%s) - began )) s"; \
	exit $$status

clean:
	rm -rf $(VENV) var
