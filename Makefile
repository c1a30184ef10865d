# `make run` and `make test` set up what is missing, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.state
APT_PACKAGES := python3-venv sqlite3
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench setup apt clean

$(BIN)/python:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! $(PY) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES); fi
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	mkdir -p $(STATE)/shares/docs
	$(BIN)/appliance up --dev --state-dir $(STATE) --share docs=$(STATE)/shares/docs

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .state
