"""Benchmark questions in the training data: exact copies after normalising, near duplicates by
word 8-gram Jaccard similarity, and no false alarms between distinct real MedQA questions."""

from __future__ import annotations

from pathlib import Path

from runner.benchmarks import to_items
from runner.contamination import normalise, overlaps
from runner.formats import read_local
from runner.spec import Fields

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
