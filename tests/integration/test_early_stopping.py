"""Early stopping: training stops when the validation loss stops improving, the adapter written is the
best one, the summary says where and why, and a run killed after a checkpoint resumes to the same result.

The tiny spec at learning rate 0.02 to 0.05: fast enough that the validation loss turns up within
its 22 steps (measured: at lr 0.05, evaluations at steps 2, 4, 6 give 6.66, 6.51, 6.87)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from runner.core.stage import StageContext
from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.spec.typed import EarlyStopping, load_spec
from runner.stages import train as stage
from tests.integration.conftest import Tiny, runner
from tests.integration.test_crash import copy_store, digests, glob_any, start, wait_for


def test_stops_when_validation_stops_improving_and_writes_the_best_adapter(tiny: Tiny, tmp_path: Path) -> None:
    spec = load_spec(tiny.spec)
    spec = dataclasses.replace(spec, train=dataclasses.replace(
        spec.train, learning_rate=0.05, eval_steps=2, early_stopping=EarlyStopping(patience=1, min_delta=0.0)))
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    upstream = {name: tiny.artifacts[name] for name in ("model", "data")}
    stage.run(StageContext(spec=spec, profile=resolve_profile(spec, probe_machine()), out=out, work=work,
                           upstream=upstream, files={}, log=lambda message: None))
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    stopping = summary["early_stopping"]
    assert [step for step, _ in evals] == list(range(2, stopping["stopped_at_step"] + 1, 2))
    assert stopping["stopped_early"] and stopping["stopped_at_step"] < 22 and summary["steps"] == stopping["stopped_at_step"]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert (stopping["best_step"], stopping["best_eval_loss"]) == (best_step, best_loss)
    assert best_step < stopping["stopped_at_step"], evals  # the last evaluation was worse: patience 1 stops there
    assert evals[-1][1] > best_loss and "did not improve" in stopping["reason"]
    # The adapter written is the best one: its weights are those kept at the best step, and the loss
    # after training is the best evaluation's, not the last one's.
    kept = load_file(str(work / "best" / f"step-{best_step}.safetensors"))
    written = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert kept.keys() == written.keys() and all(kept[k].equal(written[k]) for k in kept)
    assert summary["eval_loss_after"] == pytest.approx(best_loss, rel=1e-9)
    assert next(r["loss"] for r in rows if "loss" in r) == summary["train_loss_first"]


ES_TRAIN = ("train: {epochs: 2, learning_rate: 0.02, batch_size: 8, save_steps: 4, eval_steps: 2,\n"
            "        early_stopping: {patience: 2}}\n")


def test_killed_after_a_checkpoint_it_resumes_to_the_same_stop_and_bytes(tiny: Tiny, tmp_path: Path) -> None:
    text = tiny.spec.read_text()
    train_line = next(line for line in text.splitlines() if line.startswith("train:"))
    spec = tmp_path / "es.yaml"
    spec.write_text(text.replace(train_line + "\n", ES_TRAIN))
    # Model and data are the tiny run's (same fields); only train and what follows it run.
    whole, killed = copy_store(tiny, tmp_path / "a"), copy_store(tiny, tmp_path / "b")
    for store in (whole, killed):
        for name in ("train", "export", "eval"):
            shutil.rmtree(store / name)
    done = runner("run", str(spec), "--store", str(whole), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "  early stopping: stopped at step " in done.stdout  # the run summary says where and why
    # Measured with these settings: the best at step 14, stopped at 18 (checkpoints at 4, 8, 12, 16):
    # killed after checkpoint-16, the resumed run must know that step 16 already failed to improve.
    proc = start(spec, killed)
    hit = wait_for(proc, glob_any(killed, "train/.work/*/checkpoints/checkpoint-16/trainer_state.json"))
    if hit:
        proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert hit, f"the run finished before the kill point\n{output[-2000:]}"
    again = runner("run", str(spec), "--store", str(killed), "--only", "train")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resuming from checkpoint-" in again.stdout
    assert digests(killed)["train"] == digests(whole)["train"]
    summaries = [json.loads(next(store.glob("train/*/summary.json")).read_text()) for store in (whole, killed)]
    assert summaries[0]["early_stopping"]["stopped_early"]
    assert summaries[1]["early_stopping"] == summaries[0]["early_stopping"]
