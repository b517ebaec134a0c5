"""`validate` and `plan` must stay instant: they never import torch (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from runner.cli import main
code = main({argv!r})
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "bitsandbytes") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("spec", ["specs/smoke.yaml", "specs/medqa.yaml"])
def test_light_commands_do_not_import_torch(root: Path, tmp_path: Path, command: str, spec: str) -> None:
    argv = [command, spec] + (["--store", str(tmp_path)] if command == "plan" else [])
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "HEAVY: \n" in done.stdout, done.stdout


def test_bad_spec_exits_2_with_one_line_per_problem(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {source: init}\ndata: {train: {path: nope.jsonl}}\ntrain: {learnig_rate: 1}\n")
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(bad)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: train.learnig_rate: unknown key; did you mean learning_rate? ({bad}:3:9)"]
    assert "Traceback" not in done.stderr
