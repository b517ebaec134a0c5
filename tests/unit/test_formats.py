"""Record formats on real rows (MedQA, PubMedQA from ../shared/data) and on broken ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.rows.formats import Dropped, Example, convert_rows, to_example, to_question
from runner.rows.rowfiles import read_local
from runner.spec.typed import Fields

MEDQA = Fields()  # the defaults are MedQA's column names
MEDMCQA_HF = Fields(options=("opa", "opb", "opc", "opd"), answer_key="cop", answer_key_type="index0")
MEDMCQA_ORIG = Fields(options=("opa", "opb", "opc", "opd"), answer_key="cop", answer_key_type="index1")


def test_every_real_medqa_row_becomes_a_harness_prompt(shared_data: Path) -> None:
    rows = list(read_local(shared_data / "medqa" / "test.jsonl"))
    assert len(rows) == 1273
    questions = [to_question(r, MEDQA) for r in rows]  # type: ignore[arg-type]
    first, row = questions[0], rows[0]
    assert isinstance(row, dict)
    assert first.prompt == (f"Question: {row['question']}\nA. {row['options']['A']}\nB. {row['options']['B']}\n"
                            f"C. {row['options']['C']}\nD. {row['options']['D']}\nAnswer:")
    assert first.choices[first.answer] == row["answer"]
    assert all(q.choices[q.answer] == r["answer"] for q, r in zip(questions, rows))  # type: ignore[index]
    assert {q.group for q in questions} == {"step1", "step2&3"}


def test_medmcqa_index_bases() -> None:
    row = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "subject_name": "Anatomy"}
    assert to_question(row, MEDMCQA_HF).answer == 2
    assert to_question(row, MEDMCQA_ORIG).answer == 1
    assert to_question(row, MEDMCQA_ORIG).group == "Anatomy"
    with pytest.raises(Dropped, match="answer out of range"):
        to_question({**row, "cop": 0}, MEDMCQA_ORIG)


def test_pubmedqa_as_question_answer_with_context(shared_data: Path) -> None:
    fields = Fields(question="QUESTION", context="CONTEXTS", answer="final_decision")
    rows = list(read_local(shared_data / "pubmedqa" / "test.jsonl"))
    examples = [to_example(r, "qa", fields) for r in rows]  # type: ignore[arg-type]
    assert len(examples) == 500
    (role, prompt), _ = examples[0].messages
    assert role == "user" and prompt.startswith("Context: ") and prompt.endswith("\nAnswer:")
    assert {e.messages[1][1] for e in examples} == {"yes", "no", "maybe"}


def test_alpaca_and_chat() -> None:
    a = to_example({"instruction": "Name the antidote.", "input": "Paracetamol", "output": "N-acetylcysteine"}, "alpaca", Fields())
    assert a == Example((("user", "Name the antidote.\n\nParacetamol"), ("assistant", "N-acetylcysteine")))
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
    assert to_example(chat, "chat", Fields()).messages[-1] == ("assistant", "Hello")


@pytest.mark.parametrize("row, fmt, reason", [
    ({"options": {"A": "a", "B": "b"}, "answer_idx": "A"}, "multiple_choice", "missing question"),
    ({"question": "q", "options": {"A": "a", "C": "c"}, "answer_idx": "A"}, "multiple_choice", "options keys"),
    ({"question": "q", "options": {"A": "a", "B": "a"}, "answer_idx": "A"}, "multiple_choice", "duplicate options"),
    ({"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "E"}, "multiple_choice", "out of range"),
    ({"question": "q", "options": {"A": "a", "B": "b"}}, "multiple_choice", "missing answer"),
    ({"question": "  ", "answer": "x"}, "qa", "empty question"),
    ({"instruction": "do", "output": ""}, "alpaca", "empty output"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "chat", "no assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "chat", "role"),
])
def test_broken_rows_are_dropped_with_a_reason(row: dict, fmt: str, reason: str) -> None:
    with pytest.raises(Dropped, match=reason):
        to_example(row, fmt, Fields())


def test_broken_lines_are_yielded_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q"}\n{not json\n[1, 2]\n\n{"question": "r"}\n')
    rows = list(read_local(path))
    assert [type(r).__name__ for r in rows] == ["dict", "Dropped", "Dropped", "dict"]


def test_convert_rows_keeps_the_reader_and_converter_reasons_in_order_and_stops_at_the_limit() -> None:
    def rows() -> Iterator[dict[str, Any] | Dropped]:
        yield {"n": 1}
        yield Dropped("not valid JSON")
        yield {"n": -1}
        yield {"n": 2}
        yield {"n": 3}  # read, to see that the limit is reached, but not converted
        raise AssertionError("read past the limit")  # a broken tail after the limit is never reached

    def positive(row: dict[str, Any]) -> int:
        if row["n"] < 0:
            raise Dropped("negative")
        return int(row["n"])

    assert convert_rows(rows(), positive, limit=2) == ([1, 2], ["not valid JSON", "negative"])
    with pytest.raises(AssertionError, match="past the limit"):
        convert_rows(rows(), positive)
