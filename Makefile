# make run [SPEC=specs/x.yaml]   run a spec end to end (creates .venv on first use)
# make test                      install what the tests need and run them
SPEC ?= specs/smoke.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU wheel of torch: a plain `pip install torch` would pull gigabytes of CUDA packages.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run test test-unit test-integration validate plan bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch==2.13.0" --index-url $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(PY) -m runner run $(SPEC)

validate: $(VENV)/.installed
	$(PY) -m runner validate $(SPEC)

plan: $(VENV)/.installed
	$(PY) -m runner plan $(SPEC)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

bench: $(VENV)/.installed
	$(PY) bench/train_speed.py

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
