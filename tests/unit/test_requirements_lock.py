"""The lock: one file of exact versions that make, CI and both images install, inside pyproject's ranges."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in LOCK.read_text().splitlines()]
    found = [line.split("==") for line in lines if line]
    assert all(len(pair) == 2 for pair in found), "every line of the lock is NAME==VERSION"
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in named]


def test_every_dependency_pyproject_names_is_pinned_inside_its_range() -> None:
    locked = pins()
    for requirement in requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{requirement.name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(Version(locked[name]), prereleases=True), (
            f"{name}=={locked[name]} in the lock is outside pyproject's {requirement.specifier}")


def test_make_ci_and_the_images_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-c requirements.lock" in makefile and "LOCK := requirements.lock" in makefile
    assert "tools/lock.py check" in makefile  # a fresh install is checked against the lock
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "ARG CONSTRAINTS=requirements.lock" in (ROOT / "images" / "Dockerfile").read_text()
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text()
    assert not (ROOT / "images" / "constraints.txt").exists(), "one lock, not two"
    torch = pins()["torch"]
    assert re.search(r'^torch==\S+$', f"torch=={torch}")
    assert "sed -n 's/^torch==//p'" in (ROOT / "images" / "build.sh").read_text()


def test_this_environment_is_what_the_lock_pins() -> None:
    """What `make` installed is exactly the lock (run under .venv-latest, this is the diff)."""
    if Path(sys.prefix).name != ".venv":
        import pytest

        pytest.skip(f"not make's .venv ({sys.prefix}): `make test-latest` prints the differences instead")
    checked = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), "check"], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def load_lock_tool():  # type: ignore[no-untyped-def]
    import importlib.util

    found = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def test_check_compares_only_what_is_installed(tmp_path: Path) -> None:
    """`make run` installs the core only: the extras' pins it lacks are no difference; a wrong or an
    unpinned package still is."""
    tool = load_lock_tool()
    have = tool.installed()
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(f"{n}=={v}\n" for n, v in have.items()) + "not-installed-extra==1.0\n")
    assert tool.differences(lock) == []
    name = sorted(have)[0]
    lock.write_text("".join(f"{n}=={'0.0.0' if n == name else v}\n" for n, v in have.items() if n != sorted(have)[1]))
    assert tool.differences(lock) == [f"{name}: locked 0.0.0, installed {have[name]}",
                                      f"{sorted(have)[1]}: installed {have[sorted(have)[1]]}, not in the lock"]


def make_dry_run(target: str, torch: str) -> str:
    """What `make TARGET` would run on a fresh clone (-B: as if nothing were installed), TORCH forced."""
    import shutil

    import pytest

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-nB", target, f"TORCH={torch}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_the_core_and_torch_only() -> None:
    """A fresh `make run` compiles nothing: no extra (gguf builds llama.cpp from source), no test tools."""
    commands = make_dry_run("run", "cpu")
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert any(line.endswith("-c requirements.lock -e .") for line in installs), installs
    assert not re.search(r"\[|gguf|llama", "\n".join(installs)), installs
    assert "tools/lock.py check" in commands and "-m runner run specs/smoke.yaml" in commands
    for target in ("validate", "plan"):
        assert "-e .[" not in make_dry_run(target, "cpu") and '-e ".[' not in make_dry_run(target, "cpu")


def test_make_test_installs_every_extra_on_top_of_the_core() -> None:
    commands = make_dry_run("test", "cpu")
    assert '-e ".[test,lint,serve,track,gguf,bench,cluster,deepspeed]"' in commands and commands.index("-e .\n") < commands.index('-e ".[')
    assert '-e ".[gguf]"' in make_dry_run("gguf", "cpu")


def test_torch_build_follows_the_machine_or_torch_variable() -> None:
    cpu = make_dry_run("run", "cpu")
    if sys.platform == "linux":  # a wheel at hand (find-links) first, else the CPU index; never PyPI's CUDA build
        assert '--no-index "torch==' in cpu and "+cpu" in cpu
        assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    cuda = make_dry_run("run", "cuda")
    assert "download.pytorch.org/whl/cpu" not in cuda and "torch.version.cuda" in cuda  # checked after install
    wrong = subprocess.run(["make", "-n", "run", "TORCH=rocm"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "TORCH=rocm: choose cpu or cuda" in wrong.stderr
