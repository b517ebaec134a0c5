"""Reading local data files: JSON Lines whatever the extension, bad lines dropped with a reason,
and a file that cannot be read at all named with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.errors import DataError, RunnerError
from runner.rows.formats import Dropped, to_example
from runner.rows.rowfiles import read_local
from runner.scoring.benchmarks import benchmark_items
from runner.spec.typed import Benchmark, Fields
from runner.stages.data import read_rows

# The shape of MedMCQA's original release (`dev.json`): one object a line, `cop` 1-based.
MEDMCQA = {"question": "Which vitamin deficiency causes scurvy?", "exp": "", "cop": 3, "opa": "Vitamin A",
           "opb": "Vitamin D", "opc": "Vitamin C", "opd": "Vitamin K", "subject_name": "Biochemistry",
           "topic_name": None, "id": "e9ad821a-c438-4965-9f77-760819dfa155", "choice_type": "single"}
MEDMCQA_FIELDS = Fields(options=("opa", "opb", "opc", "opd"), answer_key="cop", answer_key_type="index1")


def medmcqa_file(tmp_path: Path, rows: int = 5) -> Path:
    path = tmp_path / "dev.json"
    path.write_text("".join(json.dumps({**MEDMCQA, "id": f"q{i}"}) + "\n" for i in range(rows)), "utf-8")
    return path


def test_json_lines_under_a_json_name_is_a_benchmark(tmp_path: Path) -> None:
    path = medmcqa_file(tmp_path)
    bench = Benchmark(name="medmcqa", format="medmcqa", path=str(path), fields=Fields(answer_key_type="index1"))
    items, dropped = benchmark_items(bench, read_rows(bench, path, None))
    assert dropped == {} and [item.id for item in items] == [f"q{i}" for i in range(5)]
    assert items[0].answer == 2 and items[0].group == "Biochemistry"


def test_json_lines_under_a_json_name_is_training_data(tmp_path: Path) -> None:
    rows = list(read_local(medmcqa_file(tmp_path, rows=3)))
    assert len(rows) == 3 and all(isinstance(r, dict) for r in rows)
    example = to_example(rows[0], "multiple_choice", MEDMCQA_FIELDS)  # type: ignore[arg-type]
    assert example.messages[1] == ("assistant", "C. Vitamin C")


def test_json_lines_whose_first_line_is_broken_is_still_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text("{broken\n" + "".join(json.dumps(MEDMCQA) + "\n" for _ in range(3)), "utf-8")
    rows = list(read_local(path))
    assert [str(r) for r in rows if isinstance(r, Dropped)] == ["not valid JSON"] and len(rows) == 4


@pytest.mark.parametrize("document", [[MEDMCQA, MEDMCQA], {"data": [MEDMCQA, MEDMCQA]}])
def test_one_json_document_is_still_read(tmp_path: Path, document: object) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(document, indent=2), "utf-8")  # pretty-printed: many lines, one document
    assert list(read_local(path)) == [MEDMCQA, MEDMCQA]


def test_a_one_line_json_file_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(MEDMCQA) + "\n", "utf-8")
    assert list(read_local(path)) == [MEDMCQA]


def test_a_broken_json_document_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    text = json.dumps([MEDMCQA] * 3, indent=2)
    lines = text.splitlines()
    lines[7] = lines[7].rstrip(",")  # a missing comma on line 8
    path.write_text("\n".join(lines), "utf-8")
    with pytest.raises(DataError) as caught:
        list(read_local(path))
    message = str(caught.value)
    assert isinstance(caught.value, RunnerError) and "\n" not in message
    assert message.startswith(f"{path}:9: not valid JSON ("), message


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_deep_nesting_and_bad_utf8_lines_are_dropped_with_a_reason(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    good = json.dumps(MEDMCQA).encode()
    path.write_bytes(b"\n".join([good, b"[" * 100_000, good, b'{"question": "caf\xe9"}', good, b""]))
    rows = list(read_local(path))
    assert [r for r in rows if not isinstance(r, Dropped)] == [MEDMCQA] * 3
    assert sorted(str(r) for r in rows if isinstance(r, Dropped)) == ["not UTF-8", "not valid JSON (nested too deeply)"]


def test_a_deeply_nested_json_document_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000, "utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: not valid JSON \(nested too deeply\)$"):
        list(read_local(path))


def test_a_csv_row_that_is_not_utf8_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"question,answer\nq1,a1\nq\xe92,a2\nq3,a3\n")
    rows = list(read_local(path))
    assert [r for r in rows if not isinstance(r, Dropped)] == [{"question": "q1", "answer": "a1"},
                                                                {"question": "q3", "answer": "a3"}]
    assert [str(r) for r in rows if isinstance(r, Dropped)] == ["not UTF-8"]


def test_a_missing_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jsonl: cannot be read"):
        list(read_local(tmp_path / "missing.jsonl"))
