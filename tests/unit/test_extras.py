"""A spec that asks for an optional feature whose extra is not installed stops at plan/run time with one
line naming the install command, before any stage; faked by hiding the modules from find_spec."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from runner.core.errors import ProfileError
from runner.spec import extras
from runner.spec.typed import Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
GGUF_SPEC = ROOT / "specs" / "smoke-export.yaml"
BASE = """
model: {source: init}
data: {train: {path: train.jsonl}}
eval: {benchmarks: [{name: b, path: train.jsonl}]}
"""
ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


def hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """find_spec answers None for `names`, as in an environment without them."""
    real = importlib.util.find_spec

    def find(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name in names else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find)


def spec_with(tmp_path: Path, extra: str) -> Spec:
    (tmp_path / "train.jsonl").write_text(ROW)
    return parse_spec(BASE + extra, base_dir=tmp_path)


def test_gguf_without_llama_cpp_is_one_line_naming_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(GGUF_SPEC)
    assert spec.export.gguf is not None
    hide(monkeypatch, "llama_cpp")
    with pytest.raises(ProfileError) as err:
        extras.require_extras(spec)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 3
    assert message.startswith("export.gguf needs the `gguf` extra (llama_cpp not installed): run `make gguf`")
    assert "pip install 'qlora-runner[gguf]'" in message


def test_installed_extras_and_specs_that_ask_for_none_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    extras.require_extras(load_spec(ROOT / "specs" / "smoke.yaml"))  # asks for nothing optional
    hide(monkeypatch, "llama_cpp", "gguf", "sentencepiece", "tensorboard", "mlflow")
    extras.require_extras(load_spec(ROOT / "specs" / "smoke.yaml"))


def test_a_run_that_stops_before_export_needs_no_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "llama_cpp")
    spec = load_spec(GGUF_SPEC)
    extras.require_extras(spec, until="train")  # `run --only train`
    with pytest.raises(ProfileError):
        extras.require_extras(spec, until="export")


def test_trackers_name_the_track_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "logging: {report_to: [tensorboard, mlflow, wandb]}")
    hide(monkeypatch, "tensorboard", "mlflow", "wandb")
    with pytest.raises(ProfileError) as err:
        extras.require_extras(spec)
    found = str(err.value).split("; ")
    assert found[0] == ("logging.report_to: tensorboard needs the `track` extra (tensorboard not installed): run "
                        "`make track` (or `pip install 'qlora-runner[track]'`), or remove it from the spec")
    assert found[1].startswith("logging.report_to: mlflow needs the `track` extra")
    assert len(found) == 2  # wandb, no extra, is checked by the stages that log to it
    assert "\n" not in str(err.value)


def test_a_broken_module_counts_as_missing() -> None:
    def broken(name: str) -> ModuleSpec | None:
        raise ValueError(f"{name}.__spec__ is None")

    assert extras.missing(("x", "y"), broken) == ["x", "y"]


def test_every_extra_checked_is_an_extra_of_pyproject() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.MODULES) <= set(declared) and set(extras.TARGETS) <= set(extras.MODULES)
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"\n{target.split()[1]}" in makefile or f" {target.split()[1]}:" in makefile
               for target in extras.TARGETS.values())


def hidden_cli(argv: list[str], hidden: str) -> subprocess.CompletedProcess[str]:
    """`runner ARGV` in a process where module `hidden` cannot be found."""
    code = ("import importlib.util as u, sys\n"
            "real = u.find_spec\n"
            f"u.find_spec = lambda name, package=None: None if name == {hidden!r} else real(name, package)\n"
            "from runner.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_plan_stops_before_any_stage_through_the_cli(tmp_path: Path) -> None:
    """`runner plan` in a process where llama_cpp is hidden: exit 3, one line, an untouched store."""
    done = hidden_cli(["plan", str(GGUF_SPEC), "--store", str(tmp_path / "store")], "llama_cpp")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: export.gguf needs the `gguf` extra") and "make gguf" in done.stderr
    assert done.stdout == "" and not (tmp_path / "store").exists()


def test_serve_without_the_serve_extra_is_one_line() -> None:
    done = hidden_cli(["serve", "--port", "0"], "fastapi")
    assert done.returncode == 3 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr == ("error: runner serve needs the `serve` extra (fastapi not installed): run `make extras` "
                           "(or `pip install 'qlora-runner[serve]'`)\n")
