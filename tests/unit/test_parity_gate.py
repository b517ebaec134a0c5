"""The parity gate's arithmetic (runner/stages/export/parity.py, light at import): a NaN anywhere in a
form's log-likelihoods is its largest difference, so the gate fails it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from runner.core.errors import StageError
from runner.scoring.benchmarks import Item
from runner.spec.typed import parse_spec
from runner.stages.export.parity import judge, summarize

ITEMS = [Item(f"q{i}? Answer:", ("A", "B"), 0, None, None) for i in range(3)]


def test_a_nan_past_the_first_question_is_the_largest_difference_and_fails_the_gate(tmp_path: Path) -> None:
    ref = {"predictions": [0, 0, 1], "logliks": [-1.0, -2.0, -3.0]}
    scores = {"adapter": ref, "f16": {"predictions": [0, 0, 1], "logliks": [-1.05, math.nan, -3.0]}}
    report = summarize(ITEMS, scores)
    assert report["forms"]["f16"]["agreement"] == 1.0 and math.isnan(report["forms"]["f16"]["max_logprob_diff"])
    (tmp_path / "t.jsonl").write_text('{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n')
    spec = parse_spec("model: {source: init}\ndata: {train: {path: t.jsonl}}\nexport: {merged: true, gguf: {types: [f16]}}\n"
                      "eval: {benchmarks: [{name: b, path: t.jsonl}]}\n", base_dir=tmp_path)
    with pytest.raises(StageError, match="f16 log-likelihoods differ by up to nan"):
        judge(spec, report, tmp_path / "parity.json", print)
