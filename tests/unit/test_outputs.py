"""Typed outputs: each file a stage writes reads back as what was written (write then read), in the
bytes the stage always wrote (indent 1, sorted keys; parity.json in its order), and a damaged field is
one line naming the file and the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from runner.core.outputs import (
    DataStats,
    EvalMetrics,
    ExportMetadata,
    JsonFile,
    OutputError,
    ParityReport,
    Prediction,
    RunRecord,
    TrainRow,
    TrainSummary,
)

SCORE = {"n": 60, "correct": 21, "acc": 0.35, "ci95": [0.2417, 0.4764]}
BASE = {"n": 60, "correct": 16, "acc": 0.2667, "ci95": [0.1713, 0.3901]}
PAIRED = {"ci95": [-0.0968, 0.2566], "delta": 0.0833, "mcnemar_p": 0.4731, "only_base_right": 13, "only_tuned_right": 18}
CALIBRATED = {"brier": 0.9, "confidence": 0.57, "ece": 0.337, "n": 60, "reliability": [{"acc": 0.0, "bin": [0.3, 0.4],
                                                                                      "confidence": 0.39, "n": 3}],
              "selective_acc": {"100": 0.2667, "20": 0.4167}}
METRICS: dict[str, Any] = {
    "benchmarks": {"medmc": {
        "tuned": SCORE, "base": BASE, "paired": PAIRED, "chance": 0.25, "format": "multiple_choice", "harness_task": None,
        "dropped": {"no answer": 2}, "groups": {"g": {"tuned": SCORE, "base": BASE, "paired": PAIRED}},
        "calibration": {"base": CALIBRATED, "tuned": CALIBRATED, "bins": 10, "probabilities": "softmax"},
        "generative": {"tuned": SCORE | {"unreadable": 0}, "base": BASE | {"unreadable": 58}, "paired": PAIRED,
                       "max_new_tokens": 8, "decoding": "greedy"}}},
    "chat_template": False, "flags": 0,
    "free_text": {"qa": {"base": {"bleu": 0.0, "rougeL": 0.0}, "tuned": {"bleu": 2.0, "rougeL": 6.67}, "n": 30,
                         "format": "qa", "max_new_tokens": 32, "decoding": "greedy", "dropped": {}}},
    "perplexity": {"base": {"nll": 8.13, "ppl": 3411.5}, "tuned": {"nll": 7.98, "ppl": 2932.1}, "path": "c.jsonl",
                   "texts": 60, "tokens": 561, "max_length": 256}}
STATS: dict[str, Any] = {
    "dropped": {}, "examples_before_tokenizing": 240, "rows": {"train": 328, "validation": 24},
    "epochs": [{"by_source": {"a": 81}, "epoch": 0, "rows": 328, "seed": 6128312900891916981}],
    "sources": {"a": {"dropped": {}, "dropped_total": 0, "kept": 240, "read": 240, "share": 0.25, "tokens": 9652,
                      "train": 216, "validation": 24}},
    "train_tokens": {"answer": 1145, "max": 72, "mean": 44.7, "min": 33, "p50": 43, "p95": 62, "total": 9652},
    "validation_sources": {}}
SUMMARY: dict[str, Any] = {
    "early_stopping": {"reason": "stopped at step 18", "best_step": 14, "best_eval_loss": 6.15}, "eval_loss_after": 4.37,
    "eval_loss_before": 7.8, "eval_loss_by_source": {"a": {"before": 7.5, "after": 2.5}}, "packing": False,
    "seconds": 28.86, "steps": 420, "total_parameters": 368960, "train_loss_first": 7.903410911560059,
    "train_loss_last": 2.58, "train_rows": 216, "trainable_parameters": 32768, "validation_rows": 24}
METADATA: dict[str, Any] = {
    "base_model": {"id": "org/model", "commit": "abc123", "source": "hub"},
    "metrics": {k: SUMMARY[k] for k in ("train_loss_first", "train_loss_last", "eval_loss_before", "eval_loss_after",
                                        "steps", "trainable_parameters")},
    "profile": {"device": "cpu", "quantization": "nf4"}, "spec": {"lora": {"r": 8}}, "stage_keys": {"model": "m"}}
PARITY: dict[str, Any] = {"questions": 8, "reference": "adapter", "forms": {
    "adapter": {"agreement": 1.0, "max_logprob_diff": 0.0, "accuracy": 0.5},
    "merged": {"agreement": 1.0, "max_logprob_diff": 1.2e-05, "accuracy": 0.5},
    "f16": {"agreement": 0.875, "max_logprob_diff": math.nan, "accuracy": 0.5, "tokens_identical": 1.0}}}
RECORD: dict[str, Any] = {
    "spec_path": "/specs/smoke.yaml", "spec": {"name": "smoke", "train": {"batch_size": 4}}, "profile": {"device": "cpu"},
    "started": 1.5, "finished": None, "status": "completed", "error": None, "versions": {}, "git_commit": None,
    "gates": {}, "sets": [], "side_effects": {"push": {"identity": {"key": "k"}, "result": {"commit": "c"}}},
    "stages": [{"stage": "model", "key": "a" * 64, "action": "ran"}, {"stage": "data", "key": None}]}


@pytest.mark.parametrize(("kind", "data"), [(EvalMetrics, METRICS), (DataStats, STATS), (TrainSummary, SUMMARY),
                                            (ExportMetadata, METADATA), (ParityReport, PARITY), (RunRecord, RECORD)],
                         ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_each_file_reads_back_as_written_in_the_stages_bytes(tmp_path: Path, kind: type[JsonFile],
                                                               data: dict[str, Any]) -> None:
    path = tmp_path / "out.json"
    written = kind.of(json.loads(json.dumps(data)))
    written.write(path)
    expected = json.dumps(data, indent=1, sort_keys=kind is not ParityReport)  # what the stages wrote before
    assert path.read_text("utf-8") == expected
    again = kind.read(path)
    assert again.raw == json.loads(expected) or kind is ParityReport  # NaN != NaN: compared as text above
    assert again == written or kind is RunRecord  # a record read knows its path, one checked before writing does not
    assert again.dumped() == written.dumped() == expected
    assert kind.VERSION >= 1


def test_the_typed_fields_are_what_the_readers_need(tmp_path: Path) -> None:
    m = EvalMetrics.of(METRICS)
    bench = m.benchmarks["medmc"]
    assert (bench.tuned.acc, bench.tuned.ci95, bench.base and bench.base.n) == (0.35, (0.2417, 0.4764), 60)
    assert bench.paired and (bench.paired.delta, bench.paired.only_tuned_right) == (0.0833, 18)
    assert bench.generative and bench.generative.base and bench.generative.base.unreadable == 58
    assert bench.calibration["tuned"].selective_acc == {"100": 0.2667, "20": 0.4167} and bench.dropped == {"no answer": 2}
    assert m.free_text["qa"].scores["tuned"] == {"rougeL": 6.67, "bleu": 2.0}
    assert m.perplexity and m.perplexity.ppl == {"base": 3411.5, "tuned": 2932.1} and m.chat_template is False
    stats = DataStats.of(STATS)
    assert stats.mixture and stats.epochs == 1 and stats.train_tokens.max == 72 and stats.sources["a"].share == 0.25
    summary = TrainSummary.of(SUMMARY)
    assert summary.early_stopping and summary.early_stopping.best_step == 14
    assert summary.by_source and summary.by_source["a"].after == 2.5 and summary.trainable == 32768
    assert TrainSummary.read(tmp_path / "absent.json") == TrainSummary() and TrainSummary().steps is None
    meta = ExportMetadata.of(METADATA)
    assert (meta.base_model.id, meta.base_model.commit, meta.quantization, meta.steps) == ("org/model", "abc123", "nf4", 420)
    parity = ParityReport.of(PARITY)
    assert list(parity.forms) == ["adapter", "merged", "f16"] and parity.forms["f16"].tokens_identical == 1.0
    record = RunRecord.parse_at(RECORD, tmp_path / "r.json")
    assert record.stages == (("model", "a" * 64),) and record.batch_size == 4 and record.device == "cpu"
    assert record.side_effect("push") == {"identity": {"key": "k"}, "result": {"commit": "c"}}


PREDICTIONS = ('{"benchmark": "b", "index": 0, "id": "q0", "answer": 1, "base": 0, "tuned": 2, "text": "répond"}\n'
               '{"benchmark": "b", "index": 1, "answer": 1, "tuned": 1}\n')  # keys in the order scored, not sorted
TRAIN_ROWS = ('{"step": 1, "epoch": 0.07, "loss": 2.5, "learning_rate": 0.0002, "grad_norm": null, "memory_mib": 564.1, '
              '"seconds": 0.5}\n{"step": 2, "epoch": 0.14, "eval_loss": NaN, "eval_loss_a": 3.0}\n')


def test_jsonl_rows_read_back_and_write_the_same_bytes(tmp_path: Path) -> None:
    preds, rows = tmp_path / "predictions.jsonl", tmp_path / "metrics.jsonl"
    preds.write_text(PREDICTIONS, "utf-8")
    read = Prediction.read(preds)
    assert [(p.question, p.answer, p.tuned) for p in read] == [("q0", 1, 2), (1, 1, 1)]
    Prediction.write(tmp_path / "again.jsonl", read)
    assert (tmp_path / "again.jsonl").read_text("utf-8") == PREDICTIONS
    rows.write_text(TRAIN_ROWS, "utf-8")
    train = TrainRow.read(rows)
    assert [(r.step, r.loss, r.eval_loss, r.memory_mib) for r in train] == [(1, 2.5, None, 564.1), (2, None, None, None)]
    TrainRow.write(tmp_path / "again.jsonl", train)
    assert (tmp_path / "again.jsonl").read_text("utf-8") == TRAIN_ROWS


def test_each_files_version_is_its_writing_stages_version() -> None:
    # A stage whose version moves may write another layout: its reader here is looked at in the same change.
    for kind in (DataStats, TrainSummary, EvalMetrics, ExportMetadata, ParityReport):
        source = (Path(__file__).parents[2] / "runner" / "stages" / str(kind.STAGE) / "__init__.py").read_text("utf-8")
        found = re.search(r"^version = (\d+)", source, re.MULTILINE)
        assert found and int(found.group(1)) == kind.VERSION, kind.__name__


WRITTEN: list[tuple[type[JsonFile], dict[str, Any]]] = [(EvalMetrics, METRICS), (DataStats, STATS), (TrainSummary, SUMMARY),
                                                        (ExportMetadata, METADATA), (ParityReport, PARITY)]


def _in_artifact(tmp_path: Path, kind: type[JsonFile], data: dict[str, Any], version: int) -> Path:
    """The file inside an artifact folder whose manifest says which stage version wrote it."""
    folder = tmp_path / str(kind.STAGE) / ("k" * 64)
    path = folder / ("adapter/" * kind.DEPTH + "out.json")
    path.parent.mkdir(parents=True)
    kind.of(json.loads(json.dumps(data))).write(path)
    (folder / "manifest.json").write_text(json.dumps({"stage": kind.STAGE, "key": "k" * 64,
                                                      "inputs": {"stage": kind.STAGE, "version": version}}))
    return path


@pytest.mark.parametrize(("kind", "data"), WRITTEN, ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_a_file_of_another_stage_version_is_one_line(tmp_path: Path, kind: type[JsonFile], data: dict[str, Any]) -> None:
    assert kind.read(_in_artifact(tmp_path / "now", kind, data, kind.VERSION)).dumped() == kind.of(data).dumped()
    newer = _in_artifact(tmp_path / "newer", kind, data, kind.VERSION + 1)
    with pytest.raises(OutputError, match=re.escape(str(newer))) as caught:
        kind.read(newer)
    message = str(caught.value)
    assert f"the {kind.STAGE} stage version {kind.VERSION + 1}" in message and f"to {kind.VERSION}" in message
    assert "\n" not in message
    with pytest.raises(OutputError, match=f"version 0, .*--force {kind.STAGE}$"):
        kind.read(_in_artifact(tmp_path / "older", kind, data, 0))


@pytest.mark.parametrize(("kind", "data"), WRITTEN, ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_a_missing_key_is_one_line_naming_it(tmp_path: Path, kind: type[JsonFile], data: dict[str, Any]) -> None:
    assert kind.REQUIRED, kind.__name__
    for key in kind.REQUIRED:
        path = tmp_path / f"without-{key}.json"
        path.write_text(json.dumps({k: v for k, v in data.items() if k != key}))
        with pytest.raises(OutputError, match=re.escape(str(path))) as caught:
            kind.read(path)
        assert f"no {key} in it" in str(caught.value) and f"--force {kind.STAGE}" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_a_benchmark_without_usable_questions_reads(tmp_path: Path) -> None:
    # The eval stage writes acc null and ci95 [null, null] when every row was dropped; the reader refused it
    # before (compare, then the whole summary, stopped on a run that had one such benchmark).
    empty = {"n": 0, "correct": 0, "acc": None, "ci95": [None, None]}
    m = EvalMetrics.of({"benchmarks": {"x": {"tuned": empty, "base": empty, "dropped": {"bad": 3}}}})
    assert m.benchmarks["x"].tuned.acc is None and m.benchmarks["x"].tuned.ci95 is None


@pytest.mark.parametrize(("kind", "data", "message"), [
    (EvalMetrics, {"benchmarks": {"x": {"tuned": {"acc": 1.5, "ci95": [0, 1]}}}}, "benchmarks.x.tuned: acc is 1.5"),
    (EvalMetrics, {"benchmarks": {"x": {"tuned": SCORE, "paired": {"delta": "big"}}}}, "benchmarks.x.paired: delta"),
    (DataStats, {"rows": {}, "train_tokens": {"max": "72"}}, "train_tokens: max is '72', not a whole number"),
    (TrainSummary, {"steps": 1.5}, "steps is 1.5, not a whole number"),
    (ExportMetadata, {"base_model": {"id": 3}, "metrics": {}}, "base_model: id is 3, not text"),
    (ParityReport, {"forms": {"merged": {"agreement": "all"}}}, "forms.merged: agreement is 'all', not a number"),
    (RunRecord, {"stages": []}, "no spec in it"),
])
def test_a_damaged_field_is_one_line_naming_file_and_field(tmp_path: Path, kind: type[JsonFile], data: dict[str, Any],
                                                            message: str) -> None:
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(data))
    with pytest.raises(OutputError, match=str(path)) as caught:
        kind.read(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
