"""`validate` reads the first rows of every local data file the spec names and reports a column the
spec expects that none of them has, at the spec's line:col, with every other problem, before any
stage runs. Bounded: a hostile file neither crashes nor stalls it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.spec.preview import FIRST_ROWS, MAX_BYTES, first_columns
from runner.spec.typed import parse_spec

ALPACA = {"instruction": "Name the antidote.", "input": "Paracetamol", "output": "N-acetylcysteine"}


def problems(text: str, folder: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.yaml", base_dir=folder)
    return info.value.problems


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_field_mapping_no_row_has_fails_at_the_mapping(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", [ALPACA] * 3)
    text = ("model: {source: init}\n"
            "data:\n"
            "  train: {path: train.jsonl}\n"
            "  format: alpaca\n"
            "  fields: {output: response}\n")
    assert problems(text, tmp_path) == [
        "data.fields.output: no column 'response' in the first rows of 'train.jsonl'; "
        "its columns: input, instruction, output (x.yaml:5:12)"]


def test_a_default_column_missing_points_at_the_path_and_comes_with_the_other_problems(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", [{"prompt": "q", "completion": "a"}])
    write_rows(tmp_path / "bench.jsonl", [{"q": "?"}])
    text = ("model: {source: hub}\n"
            "data:\n"
            "  train: {path: train.jsonl}\n"
            "  format: qa\n"
            "eval:\n"
            "  benchmarks: [{name: b, format: medqa, path: bench.jsonl}]\n")
    found = problems(text, tmp_path)
    assert found[0].startswith("model.id: required when source is hub")
    assert found[1] == ("data.train.path: no column 'answer' (data.fields.answer) in the first rows of 'train.jsonl'; "
                        "its columns: completion, prompt (x.yaml:3:11)")
    assert found[2].startswith("data.train.path: no column 'question' (data.fields.question)")
    assert found[3].startswith("eval.benchmarks[0].path: no column 'question' or 'sent1' (format medqa)")
    assert len(found) == 4


def test_chat_files_of_either_layout_pass_and_a_file_of_neither_fails(tmp_path: Path) -> None:
    write_rows(tmp_path / "share.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    write_rows(tmp_path / "openai.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    write_rows(tmp_path / "other.jsonl", [{"dialog": []}])
    ok = ("model: {source: init}\ndata: {format: chat, train: {path: share.jsonl}, validation: {path: openai.jsonl}}\n"
          "eval: {benchmarks: [{name: c, format: chat, path: share.jsonl}]}\n")
    parse_spec(ok, base_dir=tmp_path)
    found = problems("model: {source: init}\ndata: {format: chat, train: {path: other.jsonl}}\n", tmp_path)
    assert found == ["data.train.path: no column 'messages' or 'conversations' (data.fields.messages) in the first "
                     "rows of 'other.jsonl'; its columns: dialog (x.yaml:2:30)"]


def test_mixture_sources_benchmarks_and_the_corpus_are_read(tmp_path: Path) -> None:
    write_rows(tmp_path / "a.jsonl", [ALPACA])
    write_rows(tmp_path / "corpus.jsonl", [{"body": "text"}])
    (tmp_path / "b.csv").write_text("question,answer\nq,a\n")
    text = ("model: {source: init}\n"
            "data:\n"
            "  train:\n"
            "    - {path: a.jsonl, format: alpaca}\n"
            "    - {path: b.csv, format: qa, fields: {answer: reply}}\n"
            "eval:\n"
            "  benchmarks: [{name: q, format: qa, path: b.csv}]\n"
            "  perplexity: {path: corpus.jsonl}\n")
    assert [p.split(" (x.yaml")[0].split(";")[0] for p in problems(text, tmp_path)] == [
        "data.train[1].fields.answer: no column 'reply' in the first rows of 'b.csv'",
        "eval.perplexity.path: no column 'text' (eval.perplexity.field) in the first rows of 'corpus.jsonl'"]


def test_real_benchmark_files_pass(shared_data: Path, tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", [{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}])
    text = ("model: {source: init}\ndata: {train: {path: train.jsonl}}\n"
            f"eval: {{benchmarks: [{{name: m, format: medqa, path: {shared_data / 'medqa' / 'test.jsonl'}}},"
            f" {{name: p, format: pubmedqa, path: {shared_data / 'pubmedqa' / 'test.jsonl'}}}]}}\n")
    parse_spec(text, base_dir=tmp_path)


def test_only_the_first_rows_are_read(tmp_path: Path) -> None:
    rows = [{"a": 1}] * FIRST_ROWS + [{"b": 1}]
    assert first_columns(write_rows(tmp_path / "rows.jsonl", rows)) == {"a"}
    big = [{"a": "x" * 1000, "n": i} for i in range(3000)]  # 3 MB: read as far as MAX_BYTES, element by element
    (tmp_path / "big.json").write_text(json.dumps(big))
    assert first_columns(tmp_path / "big.json") == {"a", "n"}


@pytest.mark.parametrize(("name", "data"), [
    ("huge-line.jsonl", b'{"a": "' + b"x" * (8 * MAX_BYTES)),  # one line, no end, 8 MiB
    ("deep.jsonl", b"[" * 200_000 + b"\n"),
    ("deep.json", b'{"data": ' + b"[" * 200_000),
    ("bad-utf8.jsonl", b'{"\xff\xfe": 1}\n\xc3\x28\n'),
    ("nul.csv", b"a\0b,c\n" + b"x" * (2 * MAX_BYTES)),
    ("huge-field.csv", b'"' + b"x" * (MAX_BYTES + 10) + b'"\n'),
    ("binary.parquet", b"PAR1 not really"),
    ("empty.json", b""),
])
def test_hostile_files_neither_crash_nor_stall(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    started = time.monotonic()
    first_columns(tmp_path / name)  # whatever it finds, it returns
    assert time.monotonic() - started < 2.0
