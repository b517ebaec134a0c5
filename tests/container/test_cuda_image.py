"""The CUDA image, built for real on Podman from a local Debian base, checked for what needs no GPU: the
torch inside is a CUDA build, bitsandbytes keeps the CUDA library that matches it, and `runner profile`,
`validate` and `plan` work in it. Prints the build time and the image's size.

It downloads gigabytes (PyPI's CUDA torch and its CUDA packages), so it runs only when asked:
RUNNER_CUDA_IMAGE_TESTS=1, or `make check-image-cuda`. Never in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("RUNNER_BASE_IMAGE", "localhost/qlora-base:bookworm")
NAME = f"qlora-runner-cudatest{os.getpid()}"
TAG = f"{NAME}:cuda"
SITE = "/opt/venv/lib/python3*/site-packages"

pytestmark = pytest.mark.slow

if not os.environ.get("RUNNER_CUDA_IMAGE_TESTS"):
    pytest.skip("builds the CUDA image (gigabytes of downloads): set RUNNER_CUDA_IMAGE_TESTS=1 or run "
                "`make check-image-cuda`", allow_module_level=True)
if shutil.which("podman") is None:
    pytest.skip("podman is not installed (apt-get install podman runc debootstrap)", allow_module_level=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(ROOT / "images" / "podman.conf")  # runc and ulimits, as the CPU image test
    return env


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), check=check,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The CUDA image as `make image-cuda` builds it, on the local base (no registry needed)."""
    if podman("image", "exists", BASE, check=False).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE}, and making one needs root and debootstrap")
        made = subprocess.run(["bash", str(ROOT / "images" / "local-base.sh"), BASE], capture_output=True, text=True,
                              env=podman_env(), timeout=1200)
        assert made.returncode == 0, made.stderr[-3000:]
    started = time.time()
    built = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), "cuda", "--base", BASE, "--tag", TAG],
                           capture_output=True, text=True, env=podman_env() | {"ENGINE": "podman"}, timeout=3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    size = int(podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip())
    print(f"\nimage {TAG}: built in {time.time() - started:.0f} s, {size / 1e9:.2f} GB")
    yield TAG
    version = json.loads(podman("image", "inspect", TAG).stdout)[0]["Config"]["Labels"]["org.opencontainers.image.version"]
    podman("image", "rm", "--force", TAG, f"{NAME}:{version}-cuda", check=False)  # the layers stay cached


def inside(image: str, script: str) -> str:
    done = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_torch_is_a_cuda_build_and_bitsandbytes_keeps_its_cuda_library(image: str) -> None:
    cuda = inside(image, "python -c 'import torch; print(torch.version.cuda)'").strip()
    assert cuda not in ("", "None"), "the CUDA image holds a torch without CUDA"
    libs = inside(image, f"ls {SITE}/bitsandbytes/ | grep '^libbitsandbytes'").split()
    assert libs == ["libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"]
    labels = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["io.qlora-runner.flavor"] == "cuda"
    print(f"\ntorch CUDA {cuda}; bitsandbytes: {', '.join(libs)}")


def test_profile_validate_and_plan_work_in_the_image(image: str, tmp_path: Path) -> None:
    """No GPU here: the CUDA torch runs on the CPU, and the light commands need none."""
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)
    spec = ROOT / "specs" / "smoke.yaml"
    mounts = [f"{ROOT / 'specs'}:{ROOT / 'specs'}:ro", f"{ROOT / 'data'}:{ROOT / 'data'}:ro", f"{store}:{store}"]
    volumes = [a for m in mounts for a in ("-v", m)]
    outputs = {}
    for argv in (["profile", str(spec)], ["validate", str(spec)], ["plan", str(spec), "--store", str(store)]):
        done = podman("run", "--rm", "--network", "none", *volumes, image, *argv, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[argv[0]] = done.stdout
    assert "torch 2." in outputs["profile"] and "bitsandbytes 0." in outputs["profile"]
    assert f"profile for {spec}: cpu" in outputs["profile"]  # no GPU on the build machine
    assert f"{spec}: valid" in outputs["validate"]
    assert [line.split()[0] for line in outputs["plan"].splitlines() if "will run" in line] == [
        "model", "data", "train", "export", "eval"]
    print("\n" + "".join(outputs.values()))
