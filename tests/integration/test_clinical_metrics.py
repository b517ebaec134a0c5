"""Issue 14's trackers and clinical metrics on a real tiny run of its own (a fresh store, 6 steps):
TensorBoard and MLflow logs read back with their own readers and compared with metrics.jsonl;
calibration, free-text scores and perplexity in metrics.json, the summary and the report; the
perplexity checked against transformers' own loss; logging in no key; wandb asked for but absent.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from tests.integration.conftest import DEMO, TINY, runner, statuses

EXTRA = f"""
  perplexity: {{path: {DEMO / "medmc_test.jsonl"}, field: question, max_texts: 10}}
  generation: {{max_new_tokens: 8}}
logging: {{report_to: [tensorboard, mlflow], dir: logs}}
"""


def spec_text(logging: bool = True) -> str:
    text = TINY.replace("train: {epochs: 2,", "train: {max_steps: 6,").replace("max_rows: 96", "max_rows: 64")
    text = text.replace("limit: 24}]", f"limit: 24}}, {{name: demo-qa, format: qa, path: {DEMO / 'medmc_test.jsonl'}, limit: 6}}]")
    return text + (EXTRA if logging else EXTRA.split("logging:")[0])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "spec.yaml").write_text(spec_text())
    done = runner("run", str(folder / "spec.yaml"), "--store", str(folder / "store"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = dict(re.findall(r"^  (train|eval)\s+(/\S+)$", done.stdout, re.MULTILINE))
    return {"folder": folder, "stdout": done.stdout, "train": Path(found["train"]), "eval": Path(found["eval"])}


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


def test_clinical_metrics_in_metrics_json_summary_and_report(tracked: dict[str, object]) -> None:
    folder = tracked["eval"]
    assert isinstance(folder, Path)
    metrics = json.loads((folder / "metrics.json").read_text())
    cal = metrics["benchmarks"]["demo"]["calibration"]
    assert cal["bins"] == 10 and "softmax" in cal["probabilities"]
    for label in ("base", "tuned"):
        m = cal[label]
        assert m["n"] == 24 and 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 2 and 0.25 <= m["confidence"] <= 1
        assert set(m["selective_acc"]) == {"100", "80", "60", "40", "20"}  # coverage in percent
        assert m["selective_acc"]["100"] == metrics["benchmarks"]["demo"][label]["acc"]  # all answered: plain accuracy
        assert sum(b["n"] for b in m["reliability"]) == 24
    assert "demo-qa" not in metrics["benchmarks"]  # free text is scored apart
    qa = metrics["free_text"]["demo-qa"]
    assert qa["n"] == 6 and qa["format"] == "qa"
    assert all(0 <= qa[label][k] <= 100 for label in ("base", "tuned") for k in ("rougeL", "bleu"))
    rows = [json.loads(line) for line in (folder / "free_text.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["reference"] == "imatinib" and isinstance(rows[0]["tuned"], str)
    ppl = metrics["perplexity"]
    assert ppl["texts"] == 10 and ppl["tuned"]["ppl"] == pytest.approx(math.exp(ppl["tuned"]["nll"]), rel=1e-4)
    out = str(tracked["stdout"])
    assert re.search(r"demo calibration: ECE base [\d.]+ -> fine-tuned [\d.]+; Brier", out), out[-2000:]
    assert "demo-qa (free text, n=6): ROUGE-L base" in out and "perplexity (" in out
    md = (folder / "report.md").read_text()
    for heading in ("## Calibration and selective accuracy", "## Free-text answers", "## Perplexity on a held-out corpus"):
        assert heading in md
    assert "![reliability diagrams, base vs fine-tuned](calibration.png)" in md
    assert (folder / "calibration.png").stat().st_size > 5000
    assert (folder / "report.html").read_text().count('src="data:image/png;base64,') == 3


def test_perplexity_is_the_training_losss_count(tracked: dict[str, object]) -> None:
    import torch
    from peft import PeftModel

    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base, load_tokenizer
    from runner.spec.typed import load_spec

    folder = tracked["folder"]
    assert isinstance(folder, Path)
    spec = load_spec(folder / "spec.yaml")
    store = folder / "store"
    model_dir = next(p for p in (store / "model").iterdir() if (p / "manifest.json").is_file())
    export_dir = next(p for p in (store / "export").iterdir() if (p / "manifest.json").is_file())
    model = PeftModel.from_pretrained(load_base(model_dir, spec, resolve_profile(spec, probe_machine())),
                                      str(export_dir / "adapter")).eval()
    tok = load_tokenizer(model_dir)
    texts = [json.loads(line)["question"] for line in (DEMO / "medmc_test.jsonl").read_text().splitlines()[:10]]
    metrics = json.loads((tracked["eval"] / "metrics.json").read_text())  # type: ignore[operator]
    for label in ("tuned", "base"):
        total, count = 0.0, 0
        with torch.inference_mode(), (model.disable_adapter() if label == "base" else torch.inference_mode()):
            for text in texts:  # one at a time, no padding: transformers' own shifted cross-entropy
                ids = torch.tensor([tok(text).input_ids])
                loss = model(input_ids=ids, labels=ids).loss
                total += float(loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
        assert metrics["perplexity"][label]["tokens"] == count
        assert metrics["perplexity"][label]["nll"] == pytest.approx(total / count, abs=2e-4)


def test_logging_is_in_no_key(tracked: dict[str, object]) -> None:
    folder = tracked["folder"]
    assert isinstance(folder, Path)
    (folder / "quiet.yaml").write_text(spec_text(logging=False))
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
    (folder / "wandb.yaml").write_text(spec_text().replace("[tensorboard, mlflow]", "[wandb]"))
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
    spec.write_text(spec_text().replace("seed: 7", "seed: 7\nhardware: {processes: 2}").replace("dir: logs", f"dir: {tmp_path / 'logs'}"))
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
