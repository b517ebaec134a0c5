# make run [SPEC=specs/x.yaml]   run a spec end to end (creates .venv on first use)
# make test                      install what the tests need and run them
# make test-latest               the tests on the newest versions pyproject's ranges allow (.venv-latest)
# make lock                      write requirements.lock from .venv-latest, once its tests pass
# make lint                      ruff and mypy (CI runs it before the tests)
SPEC ?= specs/smoke.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every install goes through the lock: a fresh machine gets exactly what the tests last passed with.
LOCK := requirements.lock
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
# CPU wheel of torch: a plain `pip install torch` would pull gigabytes of CUDA packages.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# What make installs besides the package: the test tools and the optional features' extras.
EXTRAS := test,lint,serve,track,gguf
LATEST := .venv-latest

.PHONY: run test lint test-unit test-integration test-latest lock validate plan bench bench-eval clean

define install_torch
	$(1)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" \
		|| $(1)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
endef

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(call install_torch,$(VENV))
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS)]"
	$(PY) tools/lock.py check requirements.lock
	touch $@

# A fresh environment with the newest versions the ranges admit, what changed against the lock, then
# every test on it; `make lock` makes that the new lock. torch stays the lock's CPU build: the newest
# torch on PyPI is the CUDA build (gigabytes); move it on purpose by editing its line in the lock.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(call install_torch,$(LATEST))
	echo "torch==$(TORCH_VERSION)" > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch-pin.txt \
		-e ".[$(EXTRAS),bench]"
	$(LATEST)/bin/python tools/lock.py diff $(LOCK)
	$(LATEST)/bin/python -m pytest -q

lock:
	@test -x $(LATEST)/bin/python || { echo "make lock: run make test-latest first"; exit 2; }
	$(LATEST)/bin/python tools/lock.py write $(LOCK)

run: $(VENV)/.installed
	$(PY) -m runner run $(SPEC)

validate: $(VENV)/.installed
	$(PY) -m runner validate $(SPEC)

plan: $(VENV)/.installed
	$(PY) -m runner plan $(SPEC)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# ruff on everything; mypy strict on the light modules, plain on the rest (pyproject.toml says which).
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m mypy

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

bench: $(VENV)/.installed
	$(PY) bench/train_speed.py

# lm-evaluation-harness beside the runner, at the lock's versions (bench/eval_speed.py's other side).
bench-eval: $(VENV)/.installed
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS),bench]"
	$(PY) bench/eval_speed.py

clean:
	rm -rf artifacts

# make image-cpu | image-cuda    build the container image (images/build.sh; options in IMAGE_ARGS, e.g.
#                                IMAGE_ARGS="--base localhost/qlora-base:bookworm --ca-bundle /etc/ssl/certs/ca-certificates.crt")
# make test-container            the image test: CPU image from a local Debian base, native vs container
IMAGE_ARGS ?=

.PHONY: image-cpu image-cuda test-container

image-cpu:
	images/build.sh cpu $(IMAGE_ARGS)

image-cuda:
	images/build.sh cuda $(IMAGE_ARGS)

test-container: $(VENV)/.installed
	RUNNER_CONTAINER_TESTS=1 $(PY) -m pytest -q tests/container

# make docs    regenerate docs/spec-reference.md from the schema (tests/unit/test_docs.py fails while it is stale)
.PHONY: docs
docs:
	$(PYTHON) tools/specref.py
