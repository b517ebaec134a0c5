"""Every file the smoke, mixture and export specs write that another part of the runner reads goes through
its typed reader, and writing what was read gives the file's bytes again: the dataclasses in
runner/core/outputs and the files the stages write stay in step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.core.outputs import (
    DataStats,
    EvalMetrics,
    ExportMetadata,
    JsonFile,
    ParityReport,
    Prediction,
    RunRecord,
    TrainRow,
    TrainSummary,
)
from tests.integration.conftest import ROOT, runner

SPECS = ("smoke", "smoke-mix", "smoke-export")  # export reuses smoke's train stage: one store for the three
TYPED: dict[str, tuple[tuple[str, type[JsonFile]], ...]] = {
    "data": (("stats.json", DataStats),),
    "train": (("summary.json", TrainSummary),),
    "eval": (("metrics.json", EvalMetrics),),
    "export": (("adapter/metadata.json", ExportMetadata), ("parity.json", ParityReport)),
}


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("typed-outputs") / "store"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in SPECS:
        done = runner("run", str(ROOT / "specs" / f"{name}.yaml"), "--store", str(store), env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return store


def test_every_artifact_reads_through_its_type_and_writes_back_the_same_bytes(smoke_store: Path) -> None:
    seen: dict[str, int] = {}
    for stage, files in TYPED.items():
        for folder in sorted(f for f in (smoke_store / stage).iterdir() if len(f.name) == 64):  # keys, not .locks
            for name, kind in files:
                path = folder / name
                if name == "parity.json" and not path.exists():
                    continue  # only an export with GGUF forms scores parity
                read = kind.read(path)
                assert read.dumped() == path.read_text("utf-8"), path
                seen[name] = seen.get(name, 0) + 1
    assert seen == {"stats.json": 2, "summary.json": 2, "metrics.json": 3, "adapter/metadata.json": 3, "parity.json": 1}


def test_the_row_files_and_run_records_read_and_write_back_the_same_bytes(smoke_store: Path, tmp_path: Path) -> None:
    again, seen = tmp_path / "again", {"metrics.jsonl": 0, "predictions.jsonl": 0, "runs": 0}
    for stage, name, kind in (("train", "metrics.jsonl", TrainRow), ("eval", "predictions.jsonl", Prediction)):
        for folder in sorted(f for f in (smoke_store / stage).iterdir() if len(f.name) == 64):
            rows = kind.read(folder / name)
            assert rows, folder / name
            kind.write(again, rows)  # type: ignore[arg-type]  # each kind writes its own rows
            assert again.read_bytes() == (folder / name).read_bytes(), folder / name
            seen[name] += 1
    for path in sorted((smoke_store / "runs").glob("*.json")):
        assert RunRecord.read(path).dumped() == path.read_text("utf-8"), path
        seen["runs"] += 1
    assert seen == {"metrics.jsonl": 2, "predictions.jsonl": 3, "runs": 3}


def test_the_typed_figures_agree_across_stages(smoke_store: Path) -> None:
    records = [RunRecord.read(path) for path in sorted((smoke_store / "runs").glob("*.json"))]
    assert sorted(r.name for r in records) == sorted(["smoke", "smoke-mix", "smoke-export"])
    for record in records:
        folders = {stage: smoke_store / stage / key for stage, key in record.stages}
        assert set(folders) == {"model", "data", "train", "export", "eval"} and record.status == "completed"
        stats, summary = DataStats.read(folders["data"] / "stats.json"), TrainSummary.read(folders["train"] / "summary.json")
        assert stats.train_rows == summary.train_rows and summary.steps and summary.trainable
        assert stats.mixture == (record.name == "smoke-mix")
        rows = TrainRow.read(folders["train"] / "metrics.jsonl")
        assert rows and summary.train_loss_first == next(r.loss for r in rows if r.loss is not None)
        metadata = ExportMetadata.read(folders["export"] / "adapter" / "metadata.json")
        assert (metadata.steps, metadata.trainable_parameters) == (summary.steps, summary.trainable)
        metrics = EvalMetrics.read(folders["eval"] / "metrics.json")
        predictions = Prediction.read(folders["eval"] / "predictions.jsonl")
        for name, bench in metrics.benchmarks.items():
            assert bench.tuned.n == sum(p.benchmark == name for p in predictions) and bench.tuned.acc is not None
            right = sum(p.tuned == p.answer for p in predictions if p.benchmark == name)
            assert bench.tuned.acc == round(right / bench.tuned.n, 4)


def test_the_servers_readers_go_through_the_types(smoke_store: Path) -> None:
    # serve reads stats.json and the run records through runner.core.outputs too
    from runner.core.records import latest_record
    from runner.serve.jobs.checkpoints import train_keys
    from runner.serve.jobs.outputs import trained_tokens

    for path in sorted((smoke_store / "runs").glob("*.json")):
        record = RunRecord.read(path)
        keys, spec_path = dict(record.stages), Path(str(record.spec_path))
        assert train_keys(smoke_store, spec_path) == [keys["train"]]
        metadata = ExportMetadata.read(smoke_store / "export" / keys["export"] / "adapter" / "metadata.json")
        assert metadata.stage_keys == {"model": keys["model"], "train": keys["train"]}  # what serve's registry looks up
        rows = [row.raw for row in TrainRow.read(smoke_store / "train" / keys["train"] / "metrics.jsonl")]
        total = DataStats.read(smoke_store / "data" / keys["data"] / "stats.json").train_tokens.total
        epochs = max(row["epoch"] for row in rows if "epoch" in row)
        assert total and trained_tokens(smoke_store, latest_record(smoke_store, spec_path), rows) == round(total * epochs)
