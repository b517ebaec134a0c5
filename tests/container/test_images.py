"""The CPU image for real, on Podman: built from a Debian base made here (no registry needed), it
runs specs/smoke.yaml with no network and must produce the stage keys and metrics of a native run
on this machine: the same program. Then `runner run --image cpu` drives the same engine through
the Docker SDK (Podman's Docker-compatible socket).

Minutes of work (a base image, an image build, two smoke runs), so it runs in CI (`CI` set) or with
RUNNER_CONTAINER_TESTS=1 (`make test-container`); elsewhere it skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from runner.containers.launch import LABEL, source_digest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "smoke.yaml"
BASE = "localhost/qlora-base:bookworm"
# A name of this session's own: another session (a CI run beside a developer's) can neither
# replace the image under the test nor leave containers that look like this test's leftovers.
NAME = f"qlora-runner-test{os.getpid()}"
TAG = f"{NAME}:cpu"
SECRET = "hf_container_test_secret_7c1d"
# Timing keys differ between any two runs; everything else in these files must be equal.
TIMINGS = {"seconds"}

pytestmark = pytest.mark.slow

if not (os.environ.get("CI") or os.environ.get("RUNNER_CONTAINER_TESTS")):
    pytest.skip("builds a container image (minutes): set RUNNER_CONTAINER_TESTS=1 or run `make test-container`",
                allow_module_level=True)
if shutil.which("podman") is None:
    pytest.skip("podman is not installed (apt-get install podman runc debootstrap)", allow_module_level=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(ROOT / "images" / "podman.conf")  # runc and ulimits for this host kind
    return env


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), check=check,
                          timeout=timeout)


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The build's inputs, as RUNNER_* variables: a local base, this interpreter's torch wheel and
    library versions (those of the native run the image is compared with)."""
    if podman("image", "exists", BASE, check=False).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE}, and making one needs root and debootstrap")
        made = subprocess.run(["bash", str(ROOT / "images" / "local-base.sh"), BASE], capture_output=True, text=True,
                              env=podman_env(), timeout=1200)
        assert made.returncode == 0, made.stderr[-3000:]
    folder = tmp_path_factory.mktemp("build")
    constraints = folder / "native-constraints.txt"
    pins = {d.metadata["Name"]: d.version for d in metadata.distributions()}
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())
                                   if name not in ("torch", "qlora-runner")))
    return {"RUNNER_BASE_IMAGE": BASE, "RUNNER_TORCH_WHEEL": str(torch_wheel(folder)),
            "RUNNER_CONSTRAINTS": str(constraints)}


@pytest.fixture(scope="module")
def image(build_inputs: dict[str, str]) -> Iterator[str]:
    """The CPU image as `make image-cpu` builds it, with build.sh's options."""
    started = time.time()
    options = ["--base", build_inputs["RUNNER_BASE_IMAGE"], "--torch-wheel", build_inputs["RUNNER_TORCH_WHEEL"],
               "--constraints", build_inputs["RUNNER_CONSTRAINTS"], "--tag", TAG]
    built = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), "cpu", *options], capture_output=True,
                           text=True, env=podman_env() | {"ENGINE": "podman"}, timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    size = podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip()
    print(f"\nimage {TAG}: built in {time.time() - started:.0f} s, {int(size) / 1e9:.2f} GB")
    yield TAG
    remove_image(NAME)  # the layers stay in the build cache for the next run


def remove_image(name: str) -> None:
    podman("image", "rm", "--force", f"{name}:cpu", f"{name}:{metadata.version('qlora-runner')}-cpu", check=False)


def torch_wheel(folder: Path) -> Path:
    """The wheel of the torch this interpreter runs, from pip's usual sources (here: /opt/wheels)."""
    if os.environ.get("RUNNER_TORCH_WHEEL"):
        return Path(os.environ["RUNNER_TORCH_WHEEL"])
    version = metadata.version("torch")
    extra = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"] if "+cpu" in version else []
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(folder),
                           f"torch=={version}", *extra], capture_output=True, text=True, timeout=1200)
    wheels = list(folder.glob("torch-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot get the wheel of torch {version} for the image: {done.stderr[-500:]}")
    return wheels[0]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("native") / "store"
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(SPEC), "--store", str(store)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return store


@pytest.fixture(scope="module")
def contained(image: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`podman run` as the README shows it: the image's own user, no network, same-path mounts."""
    store = tmp_path_factory.mktemp("contained") / "store"
    store.mkdir()
    store.chmod(0o777)  # the image's user (uid 1000) writes here
    mounts = [f"{ROOT / 'specs'}:{ROOT / 'specs'}:ro", f"{ROOT / 'data'}:{ROOT / 'data'}:ro", f"{store}:{store}"]
    done = podman("run", "--rm", "--network", "none", *[a for m in mounts for a in ("-v", m)],
                  image, "run", str(SPEC), "--store", str(store), check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return store, done.stdout + done.stderr


def stage_keys(store: Path) -> dict[str, list[str]]:
    """The stage keys of a store: the folder names under each stage."""
    return {stage: sorted(p.name for p in (store / stage).iterdir() if not p.name.startswith("."))
            for stage in ("model", "data", "train", "export", "eval")}


def results(store: Path) -> dict[str, object]:
    (train,), (evaluation,) = stage_keys(store)["train"], stage_keys(store)["eval"]
    summary = json.loads((store / "train" / train / "summary.json").read_text())
    return {"train": {k: v for k, v in summary.items() if k not in TIMINGS},
            "eval": json.loads((store / "eval" / evaluation / "metrics.json").read_text())}


def test_image_runs_as_a_non_root_user_with_the_runner_as_entry_point(image: str) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    version = metadata.version("qlora-runner")
    assert config["User"] == "1000:1000" and config["Entrypoint"] == ["python", "-m", "runner"]
    assert config["Labels"]["org.opencontainers.image.version"] == version
    assert config["Labels"][f"{LABEL}.source-digest"] == source_digest(ROOT)
    libs = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                  "id -u; ls /opt/venv/lib/python3*/site-packages/bitsandbytes/ | grep '^libbitsandbytes'").stdout
    assert libs.split() == ["1000", "libbitsandbytes_cpu.so"]  # the CPU image keeps the CPU backend only


def test_smoke_in_the_image_has_the_keys_and_metrics_of_a_native_run(native: Path,
                                                                    contained: tuple[Path, str]) -> None:
    store, _ = contained
    assert stage_keys(store) == stage_keys(native)
    assert results(store) == results(native)
    print("\nnative == image:", ", ".join(f"{stage} {keys[0][:12]}" for stage, keys in stage_keys(store).items()))
    (record,) = (store / "runs").glob("*.json")
    (native_record,) = (native / "runs").glob("*.json")
    assert json.loads(record.read_text())["versions"] == json.loads(native_record.read_text())["versions"]


@pytest.fixture(scope="module")
def docker_host(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Podman's Docker-compatible API on a socket of the test's own, stopped afterwards."""
    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"], env=podman_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not socket.exists() and time.time() < deadline:
        time.sleep(0.2)
    try:
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def sdk_runner(docker_host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DOCKER_HOST": docker_host, "RUNNER_IMAGE": NAME, "HF_TOKEN": SECRET}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=1800)


def test_sdk_run_reuses_what_the_image_made_and_never_shows_the_token(docker_host: str,
                                                                      contained: tuple[Path, str]) -> None:
    store, _ = contained
    done = sdk_runner(docker_host, "run", str(SPEC), "--store", str(store), "--image", "cpu")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "ran nothing; reused model, data, train, export, eval" in output
    assert "not found: building" not in output and "rebuilding" not in output  # the image is current
    assert SECRET not in output
    assert not [p for p in store.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leftover_containers() == []


def test_sdk_run_returns_the_exit_code_of_the_run_inside(docker_host: str, tmp_path: Path) -> None:
    # A spec that insists on CUDA passes the host's checks and fails inside, on the profile (exit 3),
    # exactly as it fails natively on this machine.
    spec = tmp_path / "specs" / "cuda.yaml"
    spec.parent.mkdir()
    spec.write_text(SPEC.read_text().replace("../data/demo/", f"{ROOT / 'data' / 'demo'}/")
                    + "hardware: {device: cuda, on_unsupported: error}\n")
    inside = sdk_runner(docker_host, "run", str(spec), "--store", str(tmp_path / "a"), "--image", "cpu")
    outside = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(tmp_path / "b")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert outside.returncode == 3 and inside.returncode == 3, inside.stdout[-2000:] + inside.stderr[-2000:]
    assert "no CUDA GPU found" in inside.stderr
    assert leftover_containers() == []


def test_sdk_builds_a_missing_image_the_way_build_sh_does(docker_host: str, image: str, build_inputs: dict[str, str],
                                                          tmp_path: Path) -> None:
    # Under another name, so the image exists nowhere yet: the SDK builds it (a full build, minutes),
    # from the same build arguments, given as RUNNER_* variables instead of build.sh's options.
    name = f"{NAME}-sdk"
    remove_image(name)
    env = os.environ | build_inputs | {"DOCKER_HOST": docker_host, "RUNNER_IMAGE": name}
    try:
        done = subprocess.run([sys.executable, "-m", "runner", "run", str(SPEC), "--store", str(tmp_path), "--only",
                               "model", "--image", "cpu"], cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"image {name}:cpu not found: building it" in done.stderr
        labels = [json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]["Labels"]
                  for tag in (image, f"{name}:cpu")]
        assert labels[0] == labels[1]
        assert installed(f"{name}:cpu") == installed(image)  # the same packages at the same versions
        assert leftover_containers(f"{name}:cpu") == []
    finally:
        remove_image(name)


def installed(image: str) -> str:
    return podman("run", "--rm", "--network", "none", "--entrypoint", "pip", image, "freeze").stdout


def test_ctrl_c_stops_and_removes_the_container(docker_host: str, tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "runner", "run", str(SPEC), "--store", str(tmp_path),
                                "--image", "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=os.environ | {"DOCKER_HOST": docker_host, "RUNNER_IMAGE": NAME})
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, b"")))  # type: ignore[union-attr]
    reader.start()
    deadline = time.time() + 600
    while not any(b"train: running" in line for line in lines) and time.time() < deadline:
        time.sleep(0.5)
    assert process.poll() is None, b"".join(lines)[-3000:]
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    reader.join(timeout=10)
    assert code == 130, b"".join(lines)[-3000:]
    assert leftover_containers() == []
    assert stage_keys_so_far(tmp_path) == {"model": 1, "data": 1}  # finished stages are kept, as natively


def stage_keys_so_far(store: Path) -> dict[str, int]:
    return {stage: len([p for p in (store / stage).iterdir() if not p.name.startswith(".")])
            for stage in ("model", "data", "train") if (store / stage).is_dir()
            and any(not p.name.startswith(".") for p in (store / stage).iterdir())}


def leftover_containers(image: str = TAG) -> list[str]:
    return podman("ps", "--all", "--quiet", "--filter", f"label={LABEL}={image}").stdout.split()
