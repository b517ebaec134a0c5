# make run [SPEC=specs/x.yaml]   run a spec end to end (creates .venv on first use: the core and torch only)
# make validate | plan            the same light install, then `runner validate` / `runner plan`
# make gguf | track | cluster | deepspeed | extras
#                                 add an optional feature to .venv: GGUF export (compiles llama.cpp, minutes),
#                                 TensorBoard/MLflow logging, Ray/submitit/Optuna sweeps, DeepSpeed ZeRO,
#                                 or all of them with the server (serve)
# make test                      install everything (the test tools and every extra) and run the tests
# make test-latest               the tests on the newest versions pyproject's ranges allow (.venv-latest)
# make lock                      write requirements.lock from .venv-latest, once its tests pass
# make lint                      ruff and mypy (CI runs it before the tests)
# TORCH=cpu|cuda make ...        torch's build; by default cuda where an NVIDIA GPU answers, cpu elsewhere
SPEC ?= specs/smoke.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every install goes through the lock: a fresh machine gets exactly what the tests last passed with.
LOCK := requirements.lock
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
# torch's build. cuda where `nvidia-smi -L` lists a GPU (or the driver shows one in /proc), else cpu:
# PyPI's Linux torch is the CUDA build (gigabytes with its CUDA packages), useless without a GPU.
ifndef TORCH
TORCH := $(shell if nvidia-smi -L > /dev/null 2>&1 || ls /proc/driver/nvidia/gpus/* > /dev/null 2>&1; \
                 then echo cuda; else echo cpu; fi)
endif
ifeq ($(filter cpu cuda,$(TORCH)),)
$(error TORCH=$(TORCH): choose cpu or cuda)
endif
# Where torch comes from. Empty: the CPU index for cpu; pip's own index (PyPI: CUDA 13, driver >= 580)
# for cuda. An older driver: TORCH_INDEX=https://download.pytorch.org/whl/cu126 (or cu128).
TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
UNAME := $(shell uname -s)
# What `make test`, `make lint` and CI install besides the core: the test tools and every optional feature.
EXTRAS := test,lint,serve,track,gguf,bench,cluster,deepspeed
# The optional features, each a stamp of its own: `make gguf` after `make run` adds GGUF export.
FEATURES := serve track gguf cluster deepspeed
LATEST := .venv-latest

.PHONY: run test lint test-unit test-latest lock validate plan bench bench-eval clean gguf track cluster deepspeed extras

# torch alone, the build TORCH names. cpu on Linux: a CPU wheel pip already has at hand (its find-links)
# or else the CPU index; --no-deps because that index lacks some pinned versions of torch's own
# dependencies, which the core install then brings from PyPI under the lock. cpu on macOS: PyPI's
# wheel is the CPU/MPS build. cuda: checked, because a find-links CPU wheel would outrank PyPI's.
define install_torch
	@echo "make: torch $(TORCH_VERSION), the $(TORCH) build (TORCH=cpu|cuda to choose)"
	$(if $(filter cuda,$(TORCH)),$(call torch_cuda,$(1)),$(if $(filter Darwin,$(UNAME)),$(call torch_pypi,$(1)),$(call torch_cpu,$(1))))
endef
torch_pypi = $(1)/bin/python -m pip install --quiet -c $(LOCK) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)"
torch_cpu = $(1)/bin/python -m pip install --quiet --no-deps --no-index "torch==$(TORCH_VERSION)+cpu" 2> /dev/null \
	|| $(1)/bin/python -m pip install --quiet --no-deps --index-url $(or $(TORCH_INDEX),$(TORCH_CPU_INDEX)) "torch==$(TORCH_VERSION)"
torch_cuda = $(call torch_pypi,$(1)) && $(1)/bin/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else \
	f'make: TORCH=cuda, but pip installed torch {torch.__version__}, no CUDA build: set TORCH_INDEX to a CUDA index')"

# The core: the package and torch, all the smoke run needs; nothing here compiles.
$(VENV)/.core: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(call install_torch,$(VENV))
	$(PY) -m pip install --quiet -c requirements.lock -e .
	$(PY) tools/lock.py check requirements.lock
	touch $@

# Everything: the test tools and every optional feature (make test, make lint, CI).
$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS)]"
	$(PY) tools/lock.py check requirements.lock
	touch $@ $(FEATURES:%=$(VENV)/.extra-%)

# One optional feature on top of the core (`make gguf`): what a spec that asks for it needs.
$(FEATURES:%=$(VENV)/.extra-%): $(VENV)/.extra-%: $(VENV)/.core
	$(PY) -m pip install --quiet -c requirements.lock -e ".[$*]"
	$(PY) tools/lock.py check requirements.lock
	touch $@

gguf track: %: $(VENV)/.extra-%
cluster deepspeed: %: $(VENV)/.extra-%
extras: $(FEATURES:%=$(VENV)/.extra-%)

test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(call install_torch,$(LATEST))
	echo "torch==$(TORCH_VERSION)" > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch-pin.txt \
		-e ".[$(EXTRAS)]"
	$(LATEST)/bin/python tools/lock.py diff $(LOCK)
	$(LATEST)/bin/python -m pytest -q

lock:
	@test -x $(LATEST)/bin/python || { echo "make lock: run make test-latest first"; exit 2; }
	$(LATEST)/bin/python tools/lock.py write $(LOCK)

run: $(VENV)/.core
	$(PY) -m runner run $(SPEC)

validate: $(VENV)/.core
	$(PY) -m runner validate $(SPEC)

plan: $(VENV)/.core
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

# lm-evaluation-harness beside the runner (bench/eval_speed.py's other side; in the bench extra, which make test installs).
bench-eval: $(VENV)/.installed
	$(PY) bench/eval_speed.py

clean:
	rm -rf artifacts

# make image-cpu | image-cuda    build the container image (images/build.sh; options in IMAGE_ARGS, e.g.
#                                IMAGE_ARGS="--base localhost/qlora-base:bookworm --ca-bundle /etc/ssl/certs/ca-certificates.crt")
# make test-container            the image test: CPU image from a local Debian base, native vs container
# make check-image-cuda          the CUDA image built from a local Debian base (no registry) and checked with
#                                no GPU: torch's CUDA, bitsandbytes' CUDA library, runner profile/validate/plan.
#                                Downloads gigabytes; never in CI. RUNNER_BASE_IMAGE picks another base.
IMAGE_ARGS ?=

.PHONY: image-cpu image-cuda test-container check-image-cuda

image-cpu:
	images/build.sh cpu $(IMAGE_ARGS)

image-cuda:
	images/build.sh cuda $(IMAGE_ARGS)

test-container: $(VENV)/.installed
	RUNNER_CONTAINER_TESTS=1 $(PY) -m pytest -q tests/container

check-image-cuda: $(VENV)/.installed
	RUNNER_CUDA_IMAGE_TESTS=1 $(PY) -m pytest -q -s tests/container/test_cuda_image.py

# make docs    regenerate docs/spec-reference.md from the schema (tests/unit/test_docs.py fails while it is stale)
.PHONY: docs
docs:
	$(PYTHON) tools/specref.py
