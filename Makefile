# Everything starts from a fresh clone: the first target that needs the virtual environment
# creates it from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean lock bench wheel-check

$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --editable .
	touch $(STAMP)

## demo: the whole job against an embedded PostgreSQL (data under .demo/, stopped afterwards)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: the whole suite (MAINTCTL_TEST_DSN, else a Docker engine, else embedded PostgreSQL)
test: $(STAMP)
	$(BIN)/python -m pytest

## wheel-check: the built wheel alone in a fresh virtual environment, its declared dependencies only
## (from the package index), runs every command's --help, cron, and migrate + run on a real database
wheel-check: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_wheel_alone.py

## bench: maintctl against single statements at scale (MAINTCTL_BENCH_DSN, else 127.0.0.1:5432,
## else embedded PostgreSQL); BENCH_ARGS="--scale 0.05" for a quick try; figures in bench-results.json
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: re-pin the development dependencies after changing pyproject.toml
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements-dev.lock

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
