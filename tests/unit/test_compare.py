"""`runner compare` reading a store: runs found by record or spec, paired on the questions both
answered, against the baseline or the best, Holm over every test, cost and further metrics as
written. The store here is written by hand in the shapes the stages write (see the integration
test for a store the stages wrote themselves)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from runner.core.outputs import EvalMetrics
from runner.experiments.compare import CompareError, compare, cost, extra, find_run, load_run, sections, summary_lines
from runner.scoring.significance import holm, paired


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(store: Path, name: str, r: int, right: dict[str, list[bool]], started: float,
             extra_metrics: dict[str, Any] | None = None) -> Path:
    """A completed run whose fine-tuned model answered benchmark b's question i right where right[b][i]."""
    keys = {stage: f"{stage}{name}".ljust(64, "0") for stage in ("model", "data", "train", "export", "eval")}
    spec = {"name": name, "lora": {"r": r}, "train": {"batch_size": 4}}
    preds, benches = [], {}
    for bench, marks in right.items():
        for i, ok in enumerate(marks):
            preds.append({"benchmark": bench, "index": i, "id": f"q{i}", "answer": 1, "base": 0, "tuned": 1 if ok else 2})
        acc = sum(marks) / len(marks)
        benches[bench] = {"tuned": {"n": len(marks), "acc": acc, "ci95": [min(acc, 0.1), max(acc, 0.9)]},
                          "base": {"n": len(marks), "acc": 0.25, "ci95": [0.1, 0.5]}}
        benches[bench] |= (extra_metrics or {}).get("benchmarks", {}).get(bench, {})
    metrics = {"benchmarks": benches} | {k: v for k, v in (extra_metrics or {}).items() if k != "benchmarks"}
    _write(store / "eval" / keys["eval"] / "metrics.json", metrics)
    (store / "eval" / keys["eval"] / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    train = store / "train" / keys["train"]
    _write(train / "summary.json", {"seconds": 12.5, "trainable_parameters": 1000 * r, "total_parameters": 100000,
                                    "steps": 10, "train_rows": 20, "eval_loss_before": 3.0, "eval_loss_after": 2.0})
    _write(train / "manifest.json", {"info": {"seconds": 20.0}})
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10, "memory_mib": 500 + s})
                                                 + "\n" for s in range(1, 11)))
    _write(store / "data" / keys["data"] / "stats.json", {"train_tokens": {"total": 3000}})
    record = store / "runs" / f"{name}.json"
    _write(record, {"spec_path": str(store / f"{name}.yaml"), "spec": spec, "status": "completed", "started": started,
                    "profile": {"device": "cpu"}, "stages": [{"stage": s, "key": k} for s, k in keys.items()]})
    return record


def test_runs_are_paired_question_by_question_and_holm_corrected(tmp_path: Path) -> None:
    a = [True, True, False, False, True, False, True, False]
    b = [True, False, True, True, True, True, True, True]
    c = [False, False, False, False, True, False, True, False]
    runs = [load_run(make_run(tmp_path, n, r, {"x": marks, "y": marks[:4]}, i))
            for i, (n, r, marks) in enumerate((("a", 4, a), ("b", 8, b), ("c", 16, c)))]
    found = compare(runs)
    assert [(f.benchmark, f.run, f.reference, f.n) for f in found] == [
        ("x", "b", "a", 8), ("x", "c", "a", 8), ("y", "b", "a", 4), ("y", "c", "a", 4)]
    assert found[0].test == paired(a, b)  # the eval stage's own test, reference as "base"
    assert [f.holm_p for f in found] == holm([f.test["mcnemar_p"] for f in found if f.test])
    best = compare(runs, "best")
    assert {f.reference for f in best} == {"b"} and {f.run for f in best} == {"a", "c"}
    assert "Holm p" in summary_lines(runs, found)[2]


def test_only_questions_both_runs_answered_are_paired(tmp_path: Path) -> None:
    first = load_run(make_run(tmp_path, "a", 4, {"x": [True, False, True]}, 1))
    other = load_run(make_run(tmp_path, "b", 8, {"x": [True, True, True, True]}, 2))
    other.outcomes["x"]["q0"] = (3, 3)  # another answer key for q0: not the same question
    found = compare([first, other])
    assert found[0].n == 2 and found[0].test is not None and found[0].test["only_tuned_right"] == 1
    other.outcomes["x"] = {"z": (1, 1)}
    assert compare([first, other])[0].test is None and compare([first, other])[0].holm_p is None


def test_cost_and_further_metrics_are_read_as_written(tmp_path: Path) -> None:
    more = {"benchmarks": {"x": {"calibration": {"tuned": {"n": 2, "ece": 0.12, "brier": 0.6,
                                                           "selective_acc": {"80": 0.5}, "reliability": [{"n": 1}]},
                                                 "bins": 10}}},
            "free_text": {"notes": {"tuned": {"n": 5, "rougeL": 31.5, "bleu": 12.25, "max_new_tokens": 64}}},
            "perplexity": {"tuned": {"ppl": 40.5, "nll": 3.7}, "path": "corpus.txt"}, "flags": 2}
    run = load_run(make_run(tmp_path, "a", 4, {"x": [True, False]}, 1, more))
    assert extra(run.metrics.raw["benchmarks"]["x"]) == {"calibration ece": 0.12, "calibration brier": 0.6,
                                                     "calibration selective_acc 80": 0.5}
    assert extra(run.metrics.raw["free_text"]["notes"]) == {"rougeL": 31.5, "bleu": 12.25}
    assert extra(run.metrics.raw) == {"perplexity ppl": 40.5, "perplexity nll": 3.7}
    assert dataclasses.asdict(cost(run)) == {"train_seconds": 12.5, "stage_seconds": 20.0, "peak_memory_mib": 510, "device": "cpu",
                         "trainable": 4000, "total": 100000, "steps": 10, "tokens": 3000 * 10 * 4 // 20}
    titles = [title for title, _ in sections([run], [], "baseline", {})]
    assert titles == ["Runs", "Accuracy", "More metrics", "Loss", "Cost"]


def test_a_spec_names_its_newest_completed_run(tmp_path: Path) -> None:
    old = make_run(tmp_path, "a", 4, {"x": [True]}, 1)
    newer = tmp_path / "runs" / "a-2.json"
    newer.write_text(old.read_text().replace('"started": 1', '"started": 5'))
    failed = tmp_path / "runs" / "a-3.json"
    failed.write_text(old.read_text().replace('"started": 1', '"started": 9').replace("completed", "failed"))
    (tmp_path / "a.yaml").write_text("name: a\n")
    assert find_run(tmp_path / "a.yaml", tmp_path) == newer
    assert find_run(old, tmp_path) == old
    (tmp_path / "b.yaml").write_text("name: b\n")
    with pytest.raises(CompareError, match="no completed run of this spec"):
        find_run(tmp_path / "b.yaml", tmp_path)


def test_the_base_column_appears_only_when_the_runs_bases_differ(tmp_path: Path) -> None:
    runs = [load_run(make_run(tmp_path, n, 4, {"x": [True, False]}, i)) for i, n in enumerate("ab")]

    def header() -> list[str]:
        blocks = dict(sections(runs, compare(runs), "baseline", {}))["Accuracy"]
        return next(b[1] for b in blocks if b[0] == "table")

    assert "base model [95% CI]" not in header() and "generative [95% CI]" not in header()
    runs[1].metrics.raw["benchmarks"]["x"]["base"]["acc"] = 0.5  # another base model (a model-size sweep)
    runs[1].metrics = EvalMetrics.of(runs[1].metrics.raw)
    assert header()[:4] == ["run", "n", "base model [95% CI]", "accuracy [95% CI]"]


def test_a_malformed_run_record_is_one_line_and_a_stray_file_is_skipped(tmp_path: Path) -> None:
    record = make_run(tmp_path, "a", 4, {"x": [True]}, 1)
    (tmp_path / "a.yaml").write_text("name: a\n")
    for name, content, problem in (("list.json", [], "a JSON list, not a run record (an object)"),
                                   ("nospec.json", {"stages": []}, "no spec in it"),
                                   ("stages.json", {"spec": {}, "stages": [1]}, "its stages are not a list of {stage, key}")):
        _write(tmp_path / "runs" / name, content)  # strays in runs/: the spec's run is still found
        with pytest.raises(CompareError) as raised:
            load_run(tmp_path / "runs" / name)
        assert str(raised.value) == (f"{tmp_path / 'runs' / name}: not a run record: {problem}; "
                                     "give a file from STORE/runs/ or a spec file")
    _write(tmp_path / "runs" / "text.json", "a string")
    assert find_run(tmp_path / "a.yaml", tmp_path) == record
    preds = next((tmp_path / "eval").iterdir()) / "predictions.jsonl"
    preds.write_text('{"index": 0}\n')
    with pytest.raises(CompareError, match="predictions.jsonl line 1: a row without benchmark, answer and tuned"):
        load_run(record)


def test_a_path_field_naming_the_same_file_is_no_difference(tmp_path: Path) -> None:
    from runner.experiments.compare import differences

    runs = []
    for name, r, where, spec_dir in (("base", 16, "../data/t.jsonl", tmp_path / "specs"),  # as the base spec has it
                                     ("v", 8, str(tmp_path / "data" / "t.jsonl"), tmp_path / "sweeps")):  # a variant
        record = make_run(tmp_path, name, r, {"x": [True]}, 1)
        data = json.loads(record.read_text())
        data["spec"]["data"] = {"train": {"path": where}}
        data["spec_path"] = str(spec_dir / f"{name}.yaml")
        record.write_text(json.dumps(data))
        runs.append(load_run(record))
    assert differences(runs[1], runs[0]) == ["lora.r=8"]
    runs[1].record.spec["data"]["train"]["path"] = "other.jsonl"
    assert differences(runs[1], runs[0]) == [f"data.train.path={tmp_path / 'sweeps' / 'other.jsonl'}", "lora.r=8"]


def test_tokens_seen_count_each_epoch_once_whatever_its_last_batch(tmp_path: Path) -> None:
    # 18 rows in batches of 4: an epoch is 5 steps (the last holds 2 rows), so 10 steps are 2 epochs,
    # 2 x 3000 tokens, not 10 x 4 = 40 examples' worth (6,667).
    record = make_run(tmp_path, "a", 4, {"x": [True]}, 1)
    train = load_run(record).artifacts["train"]
    summary = json.loads((train / "summary.json").read_text())
    _write(train / "summary.json", summary | {"train_rows": 18})
    assert cost(load_run(record)).tokens == 6000
    # Where the Trainer logged its epoch, that is the count (here the run stopped half into the third).
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "epoch": s / 4}) + "\n"
                                                 for s in range(1, 11)))
    assert cost(load_run(record)).tokens == 7500


def test_a_run_is_compared_once_and_every_clashing_label_is_told_apart(tmp_path: Path) -> None:
    from runner import api
    from runner.experiments.compare import unique_labels

    record = make_run(tmp_path, "a", 4, {"x": [True]}, 1)
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(CompareError) as raised:  # the record, and the spec naming that same record
        api.compare([record, tmp_path / "a.yaml"], store=tmp_path, out=tmp_path / "out")
    assert str(raised.value) == f"{record} and {tmp_path / 'a.yaml'} are the same run ({record}); give each run once"
    assert not (tmp_path / "out").exists()
    copy = tmp_path / "runs" / "a-copy.json"  # another run of the spec that reused the first one's stages
    copy.write_text(record.read_text())
    other = make_run(tmp_path / "s2", "b", 8, {"x": [False]}, 2)
    runs = [load_run(p) for p in (record, copy, other)]
    runs[2].label = "a"  # the same spec name, another eval
    unique_labels(runs)
    eval_key = runs[0].artifacts["eval"].name[:8]
    assert [r.label for r in runs] == [f"a@{eval_key}@a", f"a@{eval_key}@a-copy", "a@evalb000"]


def test_the_paired_n_is_shown_when_the_runs_question_sets_differ(tmp_path: Path) -> None:
    runs = [load_run(make_run(tmp_path, n, 4, {"x": marks}, i))
            for i, (n, marks) in enumerate((("a", [True, False, True]), ("b", [True, True, True, False])))]

    def table() -> tuple[list[str], list[list[str]]]:
        blocks = dict(sections(runs, compare(runs), "baseline", {}))["Accuracy"]
        return next((b[1], b[2]) for b in blocks if b[0] == "table")

    header, rows = table()  # b answered a fourth question a did not: 3 of its 4 are paired
    assert header[:3] == ["run", "n", "accuracy [95% CI]"] and "paired n" in header
    assert rows[1][1] == "4" and rows[1][header.index("paired n")] == "3"
    assert "on 3 shared questions" in summary_lines(runs, compare(runs))[2]
    runs[1].outcomes["x"].pop("q3")
    runs[1].metrics.raw["benchmarks"]["x"]["tuned"]["n"] = 3
    runs[1].metrics = EvalMetrics.of(runs[1].metrics.raw)
    assert "paired n" not in table()[0] and "shared questions" not in summary_lines(runs, compare(runs))[2]
