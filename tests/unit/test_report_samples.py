"""Every report shows sample answers and the contamination finding, whatever the benchmark kinds: a
free-text-only run's report too (it once said only "No multiple-choice benchmarks")."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from runner.core.outputs import EvalMetrics
from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.report.render import Inputs, sample_answers, to_html, to_markdown
from runner.report.sections import document, free_text_contamination
from runner.scoring.benchmarks import Item
from runner.spec.typed import parse_spec

SPEC = """
name: free-only
model: {source: init}
data: {train: {path: train.jsonl}, format: qa, template: plain}
eval:
  benchmarks: [{name: notes, format: qa, path: train.jsonl}]
"""
QUESTIONS = ["What treats anaphylaxis first in the emergency department today?", "Which drug lowers blood pressure fast?",
             "What is the antidote for paracetamol overdose in adults?", "Name a loop diuretic."]


def _write(folder: Path, name: str, rows: list[dict[str, object]]) -> None:
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def free_text_run(tmp_path: Path) -> tuple[Inputs, list[str]]:
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    spec = parse_spec(SPEC, base_dir=tmp_path)
    rows = [{"benchmark": "notes", "index": i, "prompt": q, "reference": f"reference {i}", "base": f"base says {i}",
             "tuned": f"reference {i}"} for i, q in enumerate(QUESTIONS)]
    _write(tmp_path, "free_text.jsonl", rows)
    train_texts = [QUESTIONS[0], "an unrelated training question about the kidney and its many functions"]
    found = free_text_contamination(spec, rows, train_texts)
    metrics = {"benchmarks": {}, "chat_template": False, "free_text": {"notes": {
        "format": "qa", "n": 4, "max_new_tokens": 16, "decoding": "greedy", "dropped": {},
        "base": {"rougeL": 20.0, "bleu": 1.0}, "tuned": {"rougeL": 100.0, "bleu": 100.0}}}}
    profile = resolve_profile(spec, Probe(cpu_count=2, ram_mib=16000, torch="2.13.0+cpu", bitsandbytes="0.50.2"))
    inputs = Inputs(spec=spec, profile=profile, metrics=EvalMetrics.of(metrics), answers=[], model_info={}, train_summary=None,
                    artifacts={}, pictures={}, samples=sample_answers(tmp_path, SimpleNamespace(choice={})),
                    free_contamination=found)
    return inputs, train_texts


def test_a_free_text_only_report_has_sample_answers_and_the_contamination_finding(tmp_path: Path) -> None:
    inputs, _ = free_text_run(tmp_path)
    assert inputs.free_contamination["notes"]["exact"] == 1 and inputs.free_contamination["notes"]["clean"]["tuned"]["n"] == 3
    md = to_markdown(document(inputs))
    assert "No multiple-choice benchmarks" not in md and "the free-text scores follow" in md
    assert "## Sample answers" in md and "### notes (free text, the first 3)" in md
    assert "| question | reference | base | fine-tuned |" in md
    assert f"| {QUESTIONS[0]} | reference 0 | base says 0 | reference 0 |" in md
    assert "Name a loop diuretic." not in md  # the first 3 only
    assert "## Benchmark questions in the training data" in md
    assert "| notes | 4 | 1 | 0 | 25.0% |" in md and "| 100.0 |" in md  # found, and ROUGE-L on the other three
    assert "Some benchmark questions are in the training data" in md
    assert "every question is in `free_text.jsonl`" in md and "predictions.jsonl" not in md.split("## Sample")[1].split("## Spec")[0]
    page = to_html(document(inputs), tmp_path)
    assert "<h2>Sample answers</h2>" in page and "<td>base says 1</td>" in page
    assert "<h2>Benchmark questions in the training data</h2>" in page and "<th>free-text benchmark</th>" in page


def test_multiple_choice_samples_name_the_choice_and_whether_it_was_right(tmp_path: Path) -> None:
    items = [Item(prompt=f"Question: q{i}?\nA. x\nB. y\nAnswer:", choices=("A", "B"), answer=i % 2, group=None, id=None)
             for i in range(5)]
    _write(tmp_path, "predictions.jsonl", [{"benchmark": "mc", "index": i, "answer": i % 2, "base": 0, "tuned": i % 2,
                                            "tuned_generated": "B. y\nmore", "base_generated": ""} for i in range(5)])
    found = sample_answers(tmp_path, SimpleNamespace(choice={"mc": (items, {})}))
    assert found["mc"]["kind"] == "multiple choice" and len(found["mc"]["rows"]) == 3
    second = found["mc"]["rows"][1]
    assert second == {"question": "Question: q1?\nA. x\nB. y", "reference": "B", "base": "A (wrong); wrote: ''",
                      "tuned": "B (right); wrote: 'B. y'"}
