"""Benchmark questions in the training data: exact copies after normalising, near duplicates by
word 8-gram Jaccard similarity, and no false alarms between distinct real MedQA questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.errors import DataError
from runner.rows.contamination import normalise, overlaps, stop_if_found
from runner.rows.rowfiles import read_local
from runner.scoring.benchmarks import to_items
from runner.spec.typed import Fields, Spec, parse_spec
from runner.stages.train.gate import before_training

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"

Q = ("A 45-year-old man presents with crushing chest pain radiating to the left arm for two hours. "
     "His ECG shows ST elevation in leads II, III and aVF. Which artery is most likely occluded?")


def test_exact_copies_are_found_whatever_the_case_punctuation_and_spacing() -> None:
    assert normalise("  Which ARTERY, is occluded?\n") == "which artery is occluded"
    (o,) = overlaps(["unrelated text about kidneys", Q], [Q.upper().replace(" ", "  ")], threshold=0.6)
    assert (o.item, o.row, o.similarity) == (0, 1, 1.0)


def test_near_duplicates_pass_the_threshold_and_distinct_questions_do_not() -> None:
    edited = Q.replace("45-year-old man", "52-year-old woman")
    (o,) = overlaps([Q], [edited], threshold=0.5)
    assert 0.5 <= o.similarity < 1.0
    assert overlaps([Q], [edited], threshold=0.99) == []
    other = "Which vitamin deficiency causes scurvy in sailors on long voyages without fresh fruit?"
    assert overlaps([Q], [other], threshold=0.1) == []


def test_real_medqa_test_questions_are_not_flagged_against_each_other(shared_data: Path) -> None:
    items = to_items(read_local(shared_data / "medqa" / "test.jsonl"), "medqa", Fields(), None)[0]
    prompts = [i.prompt for i in items]
    found = overlaps(prompts[:500], prompts[500:1000], threshold=0.6)
    assert found == []
    assert len(overlaps(prompts[:500], prompts[:100], threshold=0.6)) == 100  # each one finds itself


def _spec(tmp_path: Path, action: str, seen: int, check: bool = True) -> Spec:
    """Trains on 40 demo rows; the benchmark holds `seen` of them (one re-worded) among held-out ones."""
    train = [json.loads(line) for line in (DEMO / "medmc_train.jsonl").read_text().splitlines()[:40]]
    held_out = [json.loads(line) for line in (DEMO / "medmc_test.jsonl").read_text().splitlines()[:20]]
    copied = [dict(row) for row in train[:seen]]
    if copied:
        copied[0]["question"] = copied[0]["question"].upper() + "  "  # still an exact copy once normalised
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out + copied))
    return parse_spec(f"""
model: {{source: init}}
data: {{train: {{path: train.jsonl}}, template: plain}}
eval:
  benchmarks: [{{name: mixed, path: bench.jsonl}}]
  contamination: {{action: {action}, check: {str(check).lower()}}}
""", base_dir=tmp_path)


def test_before_training_counts_copies_and_stop_names_the_way_out(tmp_path: Path) -> None:
    lines: list[str] = []
    found = before_training(_spec(tmp_path, "stop", 3), lines.append)
    assert found["mixed"]["n"] == 23 and (found["mixed"]["exact"], found["mixed"]["near"]) == (3, 0)
    assert [(p["item"], p["row"]) for p in found["mixed"]["pairs"]] == [(20, 0), (21, 1), (22, 2)]
    assert lines == ["contamination: mixed: 3 of 23 questions are in the training data (3 exact, 0 near, "
                     "similarity >= 0.6); e.g. question 20 ~ training row 0 of train.jsonl (exact copy)"]
    with pytest.raises(DataError, match=r"\(mixed 3/23\); remove them from train.jsonl or set "
                                        r"eval.contamination.action: report"):
        stop_if_found(_spec(tmp_path, "stop", 3), found)


def test_report_goes_on_and_a_clean_set_never_stops(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "report", 3)
    stop_if_found(spec, before_training(spec, lambda line: None))  # found, but the spec says go on
    clean = _spec(tmp_path, "stop", 0)
    found = before_training(clean, lambda line: None)
    assert found["mixed"]["exact"] + found["mixed"]["near"] == 0
    stop_if_found(clean, found)


def test_check_off_reads_nothing_and_says_nothing(tmp_path: Path) -> None:
    off = _spec(tmp_path, "stop", 3, check=False)
    lines: list[str] = []
    assert before_training(off, lines.append) == {} and lines == []
    stop_if_found(off, {})


def test_every_source_of_a_mixture_is_checked_and_named(tmp_path: Path) -> None:
    _spec(tmp_path, "stop", 3)  # writes train.jsonl (40 rows, 3 of them in the benchmark) and bench.jsonl
    (tmp_path / "notes.md").write_text("Scurvy follows a lack of vitamin C.\n")
    (tmp_path / "qa.jsonl").write_text('{"question": "What treats scurvy?", "answer": "Vitamin C."}\n')
    spec = parse_spec("""
model: {source: init}
data:
  train:
    - {name: notes, path: notes.md, format: text}
    - {name: answers, path: qa.jsonl, format: qa}
    - {name: mcq, path: train.jsonl}
  template: plain
eval:
  benchmarks: [{name: mixed, path: bench.jsonl}]
  contamination: {action: stop}
""", base_dir=tmp_path)
    lines: list[str] = []
    found = before_training(spec, lines.append)
    assert found["mixed"]["sources"] == {"mcq": 3} and {p["source"] for p in found["mixed"]["pairs"]} == {"mcq"}
    assert "question 20 ~ training row 0 of mcq (exact copy)" in lines[0]
    with pytest.raises(DataError, match=r"\(mixed 3/23\); remove them from mcq or set"):
        stop_if_found(spec, found)
