#!/bin/sh
# The builder stage's install steps (images/Dockerfile), one per layer:
#   torch   a virtual environment in /opt/venv and torch alone, from TORCH_WHEEL or TORCH_INDEX
#   deps    the runner's dependencies from pyproject.toml, pinned by the constraints file
#   wheel   the runner itself as a wheel, which the final stage installs (and checks)
# Build args arrive as environment variables.
set -eu
pip=/opt/venv/bin/pip
if [ -n "${CA_BUNDLE:-}" ]; then
    export PIP_CERT="/tmp/local/$CA_BUNDLE"
fi

case "$1" in
torch)
    python3 -m venv /opt/venv
    # --no-deps: the torch index may lack the pinned versions of torch's own dependencies; they
    # come with the next step, from PyPI, under the same constraints as everything else.
    if [ -n "${TORCH_WHEEL:-}" ]; then
        "$pip" install --no-deps "/tmp/local/$TORCH_WHEEL"
    else
        "$pip" install --no-deps --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
    fi
    # Pin the exact build (2.13.0+cpu): no later step may swap it for PyPI's CUDA torch.
    /opt/venv/bin/python -c 'from importlib.metadata import version; print("torch==" + version("torch"))' \
        > /tmp/torch-pin.txt
    ;;
deps)
    /opt/venv/bin/python - <<'PY' > /tmp/requirements.txt
import tomllib
with open("/tmp/src/pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
    "$pip" install -c /tmp/constraints.txt -c /tmp/torch-pin.txt -r /tmp/requirements.txt
    # The bitsandbytes backend follows the torch build: keep the CPU library and the CUDA one that
    # matches torch.version.cuda; the other CUDA, ROCm and XPU builds go (about 120 MB).
    /opt/venv/bin/python - <<'PY'
import importlib.util, pathlib, torch
folder = pathlib.Path(importlib.util.find_spec("bitsandbytes").origin).parent
keep = {"libbitsandbytes_cpu.so"}
if torch.version.cuda:
    keep.add(f"libbitsandbytes_cuda{torch.version.cuda.replace('.', '')}.so")
missing = keep - {lib.name for lib in folder.glob("libbitsandbytes_*.so")}
if missing:
    raise SystemExit(f"bitsandbytes has no {sorted(missing)} for torch {torch.__version__}")
for lib in folder.glob("libbitsandbytes_*.so"):
    if lib.name not in keep:
        lib.unlink()
print("bitsandbytes backends:", ", ".join(sorted(keep)))
PY
    ;;
wheel)
    "$pip" wheel --no-deps --wheel-dir /tmp/wheel /tmp/src
    ;;
*)
    echo "install.sh: unknown step $1" >&2
    exit 2
    ;;
esac
