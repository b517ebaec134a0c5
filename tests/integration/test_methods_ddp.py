"""DPO and GRPO in two real gloo processes through `accelerate launch`, as `hardware.processes: 2`
runs them: DPO still learns its held-out pairs, GRPO generates and is rewarded in both processes, and
each run record says the world the trainer really used (two processes, not one: the failure others
ship silently, Axolotl PR #3839)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import runner
from tests.integration.test_grpo import write_chain
from tests.integration.test_preference import write_spec

TWO = "hardware: {processes: 2}\n"


def run_train(spec: Path, store: Path) -> tuple[Path, dict, str]:
    """(train artifact, the run record, stdout) of `runner run SPEC --only train`."""
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    artifact = Path(re.findall(r"^  train\s+(/\S+)$", done.stdout, re.MULTILINE)[0])
    record = Path(re.findall(r"^  record\s+(/\S+)$", done.stdout, re.MULTILINE)[0])
    return artifact, json.loads(record.read_text()), done.stdout


def test_dpo_in_two_processes_learns_the_held_out_pairs(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "dpo")
    spec.write_text(spec.read_text().replace("seed: 7\n", "seed: 7\n" + TWO))
    artifact, record, out = run_train(spec, tmp_path / "store")
    assert "train: launching 2 processes with accelerate (gloo on CPU)" in out
    # ddp: gradients averaged. An evaluation before training (the held-out "before") used to leave the
    # model marked prepared, so Accelerate never wrapped it and each process trained alone.
    assert record["world"] == {**record["world"], "world_size": 2, "backend": "gloo", "sharding": "ddp"}
    held = json.loads((artifact / "summary.json").read_text())["held_out"]
    assert held["preference_accuracy"]["before"] == 0.0 and held["preference_accuracy"]["after"] >= 0.75, held
    assert held["reward_margin"]["before"] == pytest.approx(0.0, abs=1e-6) and held["reward_margin"]["after"] > 0.5, held


def test_grpo_in_two_processes_generates_and_is_rewarded_every_step(tmp_path: Path) -> None:
    sft, spec = write_chain(tmp_path)
    sft.write_text(sft.read_text().replace("max_steps: 80", "max_steps: 10"))
    spec.write_text(spec.read_text().replace("seed: 5\n", "seed: 5\n" + TWO).replace("max_steps: 24", "max_steps: 4"))
    artifact, record, out = run_train(spec, tmp_path / "store")
    assert "train: launching 2 processes with accelerate (gloo on CPU)" in out and "starting from the adapter" in out
    assert record["world"]["world_size"] == 2
    rows = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:  # every step generated, was rewarded (gathered over both processes) and logged
        assert 0 <= row["rewards/answer_correct/share_correct"] <= 1 and row["completions/mean_length"] > 0, row
    assert artifact.joinpath("adapter", "adapter_model.safetensors").is_file()
