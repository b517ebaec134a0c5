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
