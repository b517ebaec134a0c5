"""The report renders from its inputs alone: tables with intervals, the paired test, groups, pictures
inlined in the HTML and linked from the Markdown, answers side by side with their flags."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from runner.core.outputs import EvalMetrics, TrainSummary
from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.report.render import Inputs, plot_accuracy, to_html, to_markdown
from runner.report.sections import document
from runner.scoring.significance import summarize
from runner.spec.typed import parse_spec

SPEC = """
name: report-test
description: A run to render.
model: {source: init}
data: {train: {path: train.jsonl}, template: plain}
eval:
  benchmarks: [{name: medqa, format: medqa, path: train.jsonl}, {name: mine, path: train.jsonl}]
  queries: ["What is the dose of aspirin?"]
"""
ROW = '{"question": "q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "A"}\n'


def inputs(tmp_path: Path) -> Inputs:
    (tmp_path / "train.jsonl").write_text(ROW)
    spec = parse_spec(SPEC, base_dir=tmp_path)
    profile = resolve_profile(spec, Probe(cpu_count=2, ram_mib=16000, torch="2.13.0+cpu", bitsandbytes="0.50.2"))
    answers = [0, 1, 2, 3] * 10
    medqa = summarize(answers, ["step1", "step2&3"] * 20,
                      {"base": [0] * 40, "tuned": [a if i % 4 else 0 for i, a in enumerate(answers)]}, {"bad row": 1})
    medqa |= {"format": "medqa", "harness_task": "medqa_4options", "chance": 0.25}
    mine = summarize(answers[:8], [None] * 8, {"base": answers[:8], "tuned": answers[:8]}, {})
    mine |= {"format": "multiple_choice", "harness_task": None, "chance": 0.25}
    metrics = {"benchmarks": {"medqa": medqa, "mine": mine}, "chat_template": False}
    plot_accuracy(metrics["benchmarks"], tmp_path / "accuracy.png")
    (tmp_path / "loss.png").write_bytes((tmp_path / "accuracy.png").read_bytes())  # any picture will do
    generated = [{"query": "What is the dose of aspirin?", "prompt": "Question: ...", "answers":
                  {"base": "Take 900 mg now.\x08", "tuned": "Ask your doctor."},
                  "flags": {"base": [{"rule": "definite dose", "match": "900 mg"}], "tuned": []},
                  "generation": {"max_new_tokens": 32, "temperature": 0.0, "top_p": None, "decoding": "greedy"}}]
    summary = {"steps": 30, "train_loss_first": 7.9, "train_loss_last": 2.5, "eval_loss_before": 7.8,
               "eval_loss_after": 3.0, "train_rows": 200, "validation_rows": 20, "trainable_parameters": 10,
               "total_parameters": 1000, "seconds": 42.0}
    return Inputs(spec=spec, profile=profile, metrics=EvalMetrics.of(metrics), answers=generated,
                  model_info={"source": "init", "random_init": True, "parameters": 336192},
                  train_summary=TrainSummary.of(summary),
                  artifacts={"model": "/store/model/abc", "train": "/store/train/def"},
                  pictures={"loss": "loss.png", "accuracy": "accuracy.png"})


def test_markdown_has_the_tables_and_links_the_pictures(tmp_path: Path) -> None:
    md = to_markdown(document(inputs(tmp_path)))
    assert md.startswith("# report-test: evaluation report")
    assert "| benchmark | task | n | base [95% CI] | fine-tuned [95% CI] | change [95% CI] | McNemar p |" in md
    medqa = next(line for line in md.splitlines() if line.startswith("| medqa |"))
    assert "`medqa_4options`" in medqa and "| 40 |" in medqa and "25.0% [14.2, 40.2]" in medqa  # base: 10 of 40
    assert "100.0% [91.2, 100.0]" in medqa and "+75.0 pt [+57.5, +85.8]" in medqa
    assert "| < 0.001 | 0 / 30 |" in medqa  # 30 flipped to right, none to wrong
    assert "| step1 | 20 |" in md and "| step2&3 | 20 |" in md  # the groups table
    for picture in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (tmp_path / picture).is_file()
    assert "random-initialised demo model" in md and "bad row: 1" in md
    assert "| What is the dose of aspirin? | Take 900 mg now. | Ask your doctor. |" in md  # control byte gone
    assert "| 1 | base | definite dose | `900 mg` |" in md
    assert "validation perplexity (answer tokens), before -> after | 2440.6 -> 20.1" in md
    assert "`/store/model/abc`" in md


def test_html_is_one_self_contained_page(tmp_path: Path) -> None:
    page = to_html(document(inputs(tmp_path)), tmp_path)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count('src="data:image/png;base64,') == 2 and "src=\"accuracy.png\"" not in page
    assert page.count("<table>") == 8  # results, groups, training, answers, flags, spec, profile, artifacts
    assert "<code>medqa_4options</code>" in page and "<b>random-initialised demo model</b>" in page
    assert "<th>McNemar p</th>" in page and "Take 900 mg now." in page


def test_the_training_table_shows_validation_per_source_and_early_stopping(tmp_path: Path) -> None:
    from runner.core.recap import training_notes

    base = inputs(tmp_path)
    stopping = {"stopped_early": True, "stopped_at_step": 18, "best_step": 14, "best_eval_loss": 6.1548,
                "evaluations": 9, "reason": "stopped at step 18: the validation loss did not improve on the best "
                                            "by more than 0 for 2 evaluations in a row"}
    summary = TrainSummary.of(base.train_summary.raw | {"early_stopping": stopping, "eval_loss_by_source": {
        "medqa": {"before": 7.5, "after": 2.5}, "notes": {"before": 8.0, "after": 4.0}}})
    md = to_markdown(document(dataclasses.replace(base, train_summary=summary)))
    assert "| validation loss, source medqa, before -> after | 7.500 -> 2.500 |" in md
    assert "| validation loss, source notes, before -> after | 8.000 -> 4.000 |" in md
    assert ("| early stopping | stopped at step 18: the validation loss did not improve on the best by more than 0 "
            "for 2 evaluations in a row; the adapter is step 14's (validation 6.155) |") in md
    assert training_notes(summary) == [
        "  validation by source: medqa 7.500 -> 2.500, notes 8.000 -> 4.000",
        "  early stopping: " + stopping["reason"] + "; the adapter is the best step 14, validation 6.155"]
    assert training_notes(base.train_summary) == []  # a run without either: no line
