"""The whole chain on CPU with a tiny random Llama: run, re-run (nothing executes), change one field
(only the stages it reaches rerun), change a cosmetic field (nothing reruns)."""

from __future__ import annotations

import json

from tests.integration.conftest import DEMO, Tiny, runner, statuses


def test_first_run_writes_every_stage_output(tiny: Tiny) -> None:
    assert "ran model, data, train, export, eval" in tiny.output
    assert "RANDOM-INITIALISED" in tiny.output  # the demo model says plainly what it is
    # No library deprecation noise: the known messages are filtered exactly (runner/core/quiet.py).
    assert "Warning" not in tiny.output and "deprecated" not in tiny.output, tiny.output
    assert "Failed to load CPU gemm_4bit_forward" not in tiny.output
    model = tiny.artifacts["model"]
    assert (model / "tokenizer" / "tokenizer.json").is_file() and (model / "weights" / "model.safetensors").is_file()
    data = tiny.artifacts["data"]
    stats = json.loads((data / "stats.json").read_text())
    assert stats["rows"]["train"] + stats["rows"]["validation"] == 96 and stats["rows"]["validation"] > 0
    train = tiny.artifacts["train"]
    assert (train / "adapter" / "adapter_model.safetensors").is_file()
    assert (train / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((train / "summary.json").read_text())
    assert summary["steps"] == 2 * -(-stats["rows"]["train"] // 8)  # 2 epochs of ceil(rows / batch 8)
    assert len(rows) == summary["steps"] and {"step", "loss", "learning_rate", "memory_mib"} <= set(rows[0])
    export = tiny.artifacts["export"]
    meta = json.loads((export / "adapter" / "metadata.json").read_text())
    assert meta["stage_keys"]["train"] == train.name and meta["base_model"]["random_init"] is True
    assert (export / "adapter" / "README.md").read_text().startswith("---\nlibrary_name: peft")
    assert (export / "merged" / "model.safetensors").is_file() and (export / "merged" / "tokenizer.json").is_file()
    metrics = json.loads((tiny.artifacts["eval"] / "metrics.json").read_text())
    demo = metrics["benchmarks"]["demo"]
    assert demo["base"]["n"] == demo["tuned"]["n"] == 24 and 0 <= demo["tuned"]["acc"] <= 1
    records = list((tiny.store / "runs").glob("*.json"))
    assert any(json.loads(p.read_text())["status"] == "completed" for p in records)


def test_second_run_executes_no_stage_and_loads_no_model(tiny: Tiny) -> None:
    done = runner("run", str(tiny.spec), "--store", str(tiny.store))
    assert done.returncode == 0, done.stderr
    for stage in ("model", "data", "train", "export", "eval"):
        assert f"[runner] {stage}: cached" in done.stdout
    assert "ran nothing; reused model, data, train, export, eval" in done.stdout
    assert "Loading weights" not in done.stdout + done.stderr
    plan = runner("plan", str(tiny.spec), "--store", str(tiny.store))
    assert list(statuses(plan.stdout).values()) == ["cached"] * 5


def test_cosmetic_change_reruns_nothing(tiny: Tiny) -> None:
    other = tiny.folder / "renamed.yaml"
    other.write_text(tiny.spec.read_text().replace("name: tiny-test", "name: renamed\ndescription: words")
                     .replace("save_steps: 10", "save_steps: 5, logging_steps: 2"))
    plan = runner("plan", str(other), "--store", str(tiny.store))
    assert plan.returncode == 0, plan.stderr
    assert list(statuses(plan.stdout).values()) == ["cached"] * 5


def test_learning_rate_change_reruns_train_export_eval_only(tiny: Tiny) -> None:
    # `plan` explains a change against the last run of the same spec file: edit it in place.
    original = tiny.spec.read_text()
    tiny.spec.write_text(original.replace("learning_rate: 3e-3", "learning_rate: 1e-3"))
    try:
        plan = runner("plan", str(tiny.spec), "--store", str(tiny.store))
        assert "train   " in plan.stdout and "stale, train.learning_rate 0.003 → 0.001" in plan.stdout, plan.stdout
        done = runner("run", str(tiny.spec), "--store", str(tiny.store))
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ran train, export, eval; reused model, data" in done.stdout, done.stdout[-2000:]
    finally:
        tiny.spec.write_text(original)
    again = runner("plan", str(tiny.spec), "--store", str(tiny.store))
    assert list(statuses(again.stdout).values()) == ["cached"] * 5


def test_contamination_is_reported_before_training_and_can_stop_the_run(tiny: Tiny) -> None:
    # The fixture's run checked its benchmark against its training rows before training.
    assert "contamination: demo: 0 of 24 questions are in the training data" in tiny.output
    assert tiny.output.index("contamination: demo:") < tiny.output.index("train: running")
    # A benchmark made of training rows, with the spec saying stop, and a train field changed so
    # training would run: the run ends before training, the finished stages stay.
    seen = tiny.folder / "seen.yaml"
    seen.write_text(tiny.spec.read_text().replace("epochs: 2", "epochs: 3").replace(
        "limit: 24}]", f"limit: 24}}, {{name: seen, path: {DEMO / 'medmc_train.jsonl'}, limit: 12}}]\n"
                      "  contamination: {action: stop}"))
    trains = set((tiny.store / "train").iterdir())
    done = runner("run", str(seen), "--store", str(tiny.store))
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[runner] model: cached" in done.stdout and "[runner] data: cached" in done.stdout
    assert "contamination: seen: 12 of 12 questions are in the training data (12 exact" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: benchmark questions are in the training data "
                                                           "(seen 12/12); remove them from")
    assert "train: running" not in done.stdout and set((tiny.store / "train").iterdir()) == trains
    record = max((tiny.store / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    saved = json.loads(record.read_text())
    assert saved["status"] == "failed" and saved["gates"]["contamination"]["seen"]["exact"] == 12
