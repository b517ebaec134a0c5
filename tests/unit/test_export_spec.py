"""export.gguf / export.parity / export.push: what the spec refuses, and what reaches the export key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.spec.typed import Gguf, Push, Q4Tolerance, parse_spec
from runner.stages import export

BASE = """
model: {source: init}
data: {train: {path: train.jsonl}}
eval: {benchmarks: [{name: b, path: train.jsonl}]}
"""
ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text(ROW)
    return tmp_path


def problems(folder: Path, extra: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE + extra, base_dir=folder)
    return err.value.problems


def test_gguf_needs_the_merged_model(folder: Path) -> None:
    found = problems(folder, "export: {gguf: {types: [f16]}}")
    assert len(found) == 1 and found[0].startswith("export.gguf: needs `export.merged: true`")


def test_gguf_needs_questions_for_the_parity_gate(folder: Path) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE.replace("eval: {benchmarks: [{name: b, path: train.jsonl}]}", "")
                   + "export: {merged: true, gguf: {}}", base_dir=folder)
    assert err.value.problems[0].startswith("export.gguf: needs a benchmark under eval.benchmarks")


def test_push_needs_a_repository_and_a_known_gguf_type(folder: Path) -> None:
    assert problems(folder, "export: {push: {private: false}}")[0].startswith("export.push.repo_id: required")
    assert problems(folder, "export: {push: {repo_id: no-slash}}")[0].startswith("export.push.repo_id:")
    assert problems(folder, "export: {merged: true, gguf: {types: [q3_k]}}")[0].startswith("export.gguf.types[0]:")


def test_defaults(folder: Path) -> None:
    spec = parse_spec(BASE + "export: {merged: true, gguf: {}, push: {repo_id: me/x}}", base_dir=folder)
    assert spec.export.gguf == Gguf(types=("f16",))
    assert spec.export.push == Push(repo_id="me/x", private=True, revision="main")
    assert spec.export.parity.q4 == Q4Tolerance(min_agreement=0.6, max_logprob_diff=2.0)
    assert spec.export.parity.on_fail == "error"


def test_gguf_and_parity_change_the_export_key_and_push_does_not(folder: Path) -> None:
    plain = parse_spec(BASE + "export: {merged: true}", base_dir=folder)
    gguf = parse_spec(BASE + "export: {merged: true, gguf: {types: [f16]}}", base_dir=folder)
    pushed = parse_spec(BASE + "export: {merged: true, push: {repo_id: me/x, revision: dev}}", base_dir=folder)
    assert export.spec_slice(pushed) == export.spec_slice(plain)  # a side effect, in no key
    assert export.local_files(plain) == {}  # benchmarks are read only by the parity gate
    assert export.spec_slice(gguf) != export.spec_slice(plain) and "benchmark/b" in export.local_files(gguf)
    stricter = dataclasses.replace(gguf, export=dataclasses.replace(
        gguf.export, parity=dataclasses.replace(gguf.export.parity, on_fail="warn")))
    assert export.spec_slice(stricter) != export.spec_slice(gguf)  # a failed gate keeps no output; warn keeps it
