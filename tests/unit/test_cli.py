"""The command line's basics: --version, --set on validate/plan/run, help on every option, the exit
codes in --help, a missing optional extra as one line, and the API's spec path and plan summary."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import EXTRAS, PACKAGE, _parser, exit_codes, missing_extra
from runner.core import errors
from runner.core.errors import SpecError, StageError
from runner.spec.overrides import load_spec_with
from runner.spec.typed import load_spec
from tests.unit.test_keys import keys

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "specs" / "smoke.yaml"

# Runs the CLI with some top-level modules unimportable, as on a machine without their extra.
BLOCKED = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from runner.cli import main
code = main({argv!r})
print("HEAVY:", ",".join(m for m in ("torch", "transformers") if m in sys.modules))
sys.exit(code)
"""


def cli(*argv: str, blocked: tuple[str, ...] = (), cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    code = BLOCKED.format(blocked=list(blocked), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_version_is_the_package_version_and_imports_no_torch() -> None:
    done = cli("--version")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert version and done.returncode == 0, done.stderr
    assert done.stdout == f"runner {version.group(1)}\n"  # argparse exits before the HEAVY line: nothing imported


def _actions(parser: argparse.ArgumentParser, where: str = "runner") -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _actions(sub, f"{where} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((where, action))
    return found


def test_every_option_of_every_command_has_help() -> None:
    found = _actions(_parser())
    assert {"runner serve", "runner run", "runner sweep", "runner compare"} <= {where for where, _ in found}
    missing = [f"{where} {'/'.join(a.option_strings) or a.dest}" for where, a in found if not (a.help or "").strip()]
    assert missing == []


def test_the_exit_codes_in_help_come_from_the_error_classes() -> None:
    shown = cli("--help").stdout
    for cls in (errors.RunnerError, errors.SpecError, errors.ProfileError, errors.DataError, errors.StageError,
                errors.StoreError, errors.ContainerError):
        assert re.search(rf"^  {cls.exit_code}\s+{cls.__name__}: ", shown, re.MULTILINE), cls.__name__
    assert re.search(r"^  130\s+interrupted by SIGINT", shown, re.MULTILINE)

    class QuotaError(errors.RunnerError):  # a class added later is listed without touching the CLI
        """The quota is spent."""

        exit_code = 9

    QuotaError.__module__ = errors.__name__
    assert "  9    QuotaError: The quota is spent." in exit_codes().splitlines()


def test_a_set_changes_the_keys_exactly_as_editing_the_file(tmp_path: Path) -> None:
    text = SMOKE.read_text().replace("../data/", f"{ROOT}/data/")  # the same data wherever the copy lives
    original, edited = tmp_path / "smoke.yaml", tmp_path / "edited.yaml"
    original.write_text(text)
    edited.write_text(text.replace("epochs: 30 ", "epochs: 1  "))
    from_set = load_spec_with(original, ["train.epochs=1"])
    assert from_set.train.epochs == load_spec(edited).train.epochs == 1
    assert from_set.as_dict() == load_spec(edited).as_dict()
    before, after = keys(load_spec(original)), keys(from_set)
    assert after == keys(load_spec(edited))
    assert after["train"] != before["train"] and after["model"] == before["model"] and after["data"] == before["data"]
    lora = load_spec_with(original, ["lora={r: 4}", "name=quick"]).lora  # a mapping sets its leaves; the rest stays
    assert (lora.r, lora.alpha, lora.target_modules) == (4, 32, "all-linear")


@pytest.mark.parametrize(("sets", "message"), [
    (["train.epochs=-1"], "--set train.epochs=-1: must be > 0, got integer -1"),
    (["train.epoch=1"], "--set train.epoch: no such spec field; did you mean train.epochs?"),
    (["lora.r=8,16"], '--set lora.r=8,16: must be an integer, got string "8,16"; one value per --set (a grid of '
                      "values is `runner sweep --set`)"),
    (["train.epochs"], "--set train.epochs: write PATH=VALUE, e.g. --set train.epochs=1"),
    (["train.epochs=1", "train.epochs=2"], "--set train.epochs=2: train.epochs is already set by --set "
                                           "train.epochs=1; set it once"),
    # a cross-field rule on a field the command line set names the --set, not a line of the file
    (["model.init.num_kv_heads=3"], "model.init.num_kv_heads: must divide model.init.num_heads "
                                    "(--set model.init.num_kv_heads=3)"),
])
def test_a_bad_set_is_one_line_naming_it(sets: list[str], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_with(SMOKE, sets)
    assert caught.value.problems == [message]


def test_a_bad_set_on_the_command_line_exits_2_with_one_line() -> None:
    done = cli("validate", "specs/smoke.yaml", "--set", "train.epochs=-1")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: --set train.epochs=-1: must be > 0, got integer -1"]


def test_plan_applies_the_set(tmp_path: Path) -> None:
    done = cli("plan", "specs/smoke.yaml", "--store", str(tmp_path), "--set", "data.max_length=128")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^memory: .* 128 tokens;", done.stdout, re.MULTILINE), done.stdout
    assert "HEAVY: \n" in done.stdout  # planning with --set stays light


def test_the_api_plan_summary_is_what_the_cli_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import api

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as `cli` runs it: the thread count is in the profile and the keys
    done = cli("plan", "specs/smoke.yaml", "--store", str(tmp_path))
    planned = api.plan(SMOKE, tmp_path)
    assert done.stdout.split("HEAVY:")[0] == planned.summary() + "\n" == repr(planned) + "\n"
    assert planned.summary().startswith("profile: ") and "<pre>profile: " in planned._repr_html_()


def test_a_missing_spec_says_the_current_directory_and_the_checkouts_copy(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import api

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        api.plan("specs/smoke.yaml", tmp_path / "store")
    assert caught.value.problems == [f"specs/smoke.yaml: no such spec file (relative to the current directory, "
                                     f"{tmp_path}); did you mean {SMOKE}?"]
    with pytest.raises(SpecError, match=r"no such spec file \(relative to the current directory, .*\); give an absolute"):
        api.validate("nowhere.yaml")


@pytest.mark.parametrize(("argv", "blocked", "line"), [
    (["serve"], ("fastapi",), "error: runner serve needs the `serve` extra (fastapi not installed): "
                              f"run `make extras` (or `pip install '{PACKAGE}[serve]'`)"),
    (["serve"], ("sse_starlette",), "error: runner serve needs the `serve` extra (sse_starlette not installed): "
                                    f"run `make extras` (or `pip install '{PACKAGE}[serve]'`)"),
    (["run", "specs/smoke.yaml", "--image", "cpu"], ("docker",),
     f"error: runner run --image needs the `docker` extra (docker not installed): run `pip install '{PACKAGE}[docker]'`"),
])
def test_a_missing_extra_is_one_line_naming_it(argv: list[str], blocked: tuple[str, ...], line: str) -> None:
    done = cli(*argv, blocked=blocked)
    assert done.returncode == errors.ProfileError.exit_code, done.stderr[-2000:]
    assert done.stderr.splitlines() == [line]


def test_a_stage_that_met_a_missing_extra_says_which() -> None:
    try:
        try:
            raise ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
        except ModuleNotFoundError as exc:
            raise StageError("train failed: ModuleNotFoundError: No module named 'tensorboard'") from exc
    except StageError as exc:
        assert missing_extra(exc, "runner run") == ("runner run needs the `track` extra (tensorboard not installed): "
                                                   f"run `make track` (or `pip install '{PACKAGE}[track]'`)")
    assert missing_extra(ModuleNotFoundError("No module named 'numpyy'", name="numpyy"), "runner run") is None


def test_the_extras_named_are_pyprojects() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'name = "{PACKAGE}"' in text
    for extra in EXTRAS:
        assert re.search(rf"^{extra} = \[", text, re.MULTILINE), extra
