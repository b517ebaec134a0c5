"""Trackers on a real tiny run of its own (conftest's `tracked`): TensorBoard and MLflow logs read back
with their own readers and compared with metrics.jsonl; logging in no key; wandb asked for but absent
is one line; two processes log once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import runner, statuses, tracked_spec


def _rows(train: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_what_metrics_jsonl_holds(tracked: dict[str, object]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = tracked["train"]
    assert isinstance(train, Path) and isinstance(tracked["folder"], Path)
    runs = list((tracked["folder"] / "logs" / "tensorboard").iterdir())
    assert [r.name for r in runs] == [f"tiny-test-{train.name[:12]}"]
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    rows = _rows(train)
    assert len(rows) == 6
    for name in ("loss", "learning_rate", "grad_norm", "memory_mib"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{name}")]
        assert [s for s, _ in logged] == [r["step"] for r in rows]
        assert [v for _, v in logged] == pytest.approx([r[name] for r in rows], rel=1e-6)  # float32 in the event file
    summary = json.loads((train / "summary.json").read_text())
    validation = [(e.step, e.value) for e in events.Scalars("eval/loss")]
    assert validation == [(0, pytest.approx(summary["eval_loss_before"], rel=1e-6)),
                          (6, pytest.approx(summary["eval_loss_after"], rel=1e-6))]
    metrics = json.loads((tracked["eval"] / "metrics.json").read_text())  # type: ignore[operator]
    assert events.Scalars("eval/demo/tuned/acc")[0].value == pytest.approx(metrics["benchmarks"]["demo"]["tuned"]["acc"])
    assert events.Scalars("eval/demo-qa/base/rougeL")[0].value == pytest.approx(metrics["free_text"]["demo-qa"]["base"]["rougeL"])


def test_mlflow_holds_what_metrics_jsonl_holds(tracked: dict[str, object]) -> None:
    from mlflow.tracking import MlflowClient

    train, folder = tracked["train"], tracked["folder"]
    assert isinstance(train, Path) and isinstance(folder, Path)
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the runner set it for its own calls only
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # as a user opening the store does (see docs/evaluation.md)
    try:
        client = MlflowClient(tracking_uri=(folder / "logs" / "mlruns").as_uri())
        experiment = client.get_experiment_by_name("tiny-test")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.data.tags["runner.train_key"] == train.name and run.info.status == "FINISHED"
        assert run.data.params["lora.r"] == "8" and run.data.params["train.max_steps"] == "6"
        rows = _rows(train)
        for name in ("loss", "learning_rate", "grad_norm", "memory_mib"):
            history = sorted(client.get_metric_history(run.info.run_id, f"train/{name}"), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == [(r["step"], r[name]) for r in rows]  # exact: doubles
        summary = json.loads((train / "summary.json").read_text())
        validation = sorted(client.get_metric_history(run.info.run_id, "eval/loss"), key=lambda m: m.step)
        assert [m.value for m in validation] == [summary["eval_loss_before"], summary["eval_loss_after"]]
        metrics = json.loads((tracked["eval"] / "metrics.json").read_text())  # type: ignore[operator]
        assert run.data.metrics["eval/perplexity/tuned"] == metrics["perplexity"]["tuned"]["ppl"]
        assert run.data.metrics["eval/demo/base/ece"] == metrics["benchmarks"]["demo"]["calibration"]["base"]["ece"]
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]


def test_logging_is_in_no_key(tracked: dict[str, object]) -> None:
    folder = tracked["folder"]
    assert isinstance(folder, Path)
    (folder / "quiet.yaml").write_text(tracked_spec(logging=False))
    done = runner("plan", str(folder / "quiet.yaml"), "--store", str(folder / "store"))
    assert set(statuses(done.stdout).values()) == {"cached"}, done.stdout


def test_wandb_asked_for_but_not_installed_is_one_line(tracked: dict[str, object]) -> None:
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    folder = tracked["folder"]
    assert isinstance(folder, Path)
    (folder / "wandb.yaml").write_text(tracked_spec().replace("[tensorboard, mlflow]", "[wandb]"))
    for stage in ("train", "eval"):  # each stops before its work
        done = runner("run", str(folder / "wandb.yaml"), "--store", str(folder / "store"), "--force", stage)
        assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
        error = [line for line in done.stderr.splitlines() if "wandb" in line]
        assert error == ["error: logging.report_to: wandb is not installed; `pip install wandb` (WANDB_MODE=offline "
                         "keeps it local) or remove wandb from logging.report_to"], done.stderr[-2000:]
        assert f"{stage}: running" in done.stdout and "eval: demo, base model" not in done.stdout


def test_two_processes_log_once(tracked: dict[str, object], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tracked["folder"]
    assert isinstance(folder, Path)
    spec = tmp_path / "two.yaml"
    spec.write_text(tracked_spec().replace("seed: 7", "seed: 7\nhardware: {processes: 2}").replace("dir: logs", f"dir: {tmp_path / 'logs'}"))
    store = tmp_path / "store"
    for stage in ("model", "data"):  # the module's own: same keys
        (store / stage).mkdir(parents=True)
        (only,) = [p for p in (folder / "store" / stage).iterdir() if (p / "manifest.json").is_file()]
        (store / stage / only.name).symlink_to(only)
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train: trained in 2 processes (gloo)" in done.stdout
    (run,) = list((tmp_path / "logs" / "tensorboard").iterdir())  # rank 0 alone writes
    events = EventAccumulator(str(run))
    events.Reload()
    (train,) = [p for p in (store / "train").iterdir() if (p / "manifest.json").is_file()]
    rows = _rows(train)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(r["step"], pytest.approx(r["loss"], rel=1e-6))
                                                                        for r in rows]
    assert [e.step for e in events.Scalars("eval/loss")] == [0, rows[-1]["step"]]
