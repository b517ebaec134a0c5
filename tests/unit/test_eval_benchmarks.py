"""Built-in benchmark formats on real rows (../shared/data): the prompts and choices of
lm-evaluation-harness's medqa_4options, medmcqa and pubmedqa tasks, character for character."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from runner.rows.rowfiles import read_local
from runner.scoring.benchmarks import FORMATS, Item, benchmark_items, extract_choice, read_ids, to_items
from runner.spec.typed import Benchmark, Fields
from runner.stages.data import read_rows


# The harness's own doc_to_text functions (lm_eval/tasks/*/), transcribed: the spec of what we build.
def harness_medqa(doc: dict[str, Any]) -> str:  # preprocess_medqa.doc_to_text on the -hf layout
    option_choices = {"A": doc["ending0"], "B": doc["ending1"], "C": doc["ending2"], "D": doc["ending3"]}
    answers = "".join((f"{k}. {v}\n") for k, v in option_choices.items())
    return f"Question: {doc['sent1']}\n{answers}Answer:"


def harness_medmcqa(doc: dict[str, Any]) -> str:  # utils_medmcqa.doc_to_text
    choices = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
    prompt = "Question: " + doc["question"] + "\nChoices:\n"
    for choice, option in zip("ABCD", choices):
        prompt += f"{choice.upper()}. {option}\n"
    return prompt + "Answer:"


def harness_pubmedqa(doc: dict[str, Any]) -> str:  # preprocess_pubmedqa.doc_to_text
    ctxs = "\n".join(doc["CONTEXTS"])
    return "Abstract: {}\nQuestion: {}\nAnswer:".format(ctxs, doc["QUESTION"])


def medqa_rows(shared_data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (shared_data / "medqa" / "test.jsonl").read_text().splitlines()]


def as_hf(row: dict[str, Any]) -> dict[str, Any]:
    """A MedQA row in the layout of GBaker/MedQA-USMLE-4-options-hf, which the harness reads."""
    return {"sent1": row["question"], "label": "ABCD".index(row["answer_idx"]),
            **{f"ending{i}": row["options"][k] for i, k in enumerate("ABCD")}}


def as_medmcqa(row: dict[str, Any], base: int) -> dict[str, Any]:
    opts = row["options"]
    return {"question": row["question"], "opa": opts["A"], "opb": opts["B"], "opc": opts["C"], "opd": opts["D"],
            "cop": "ABCD".index(row["answer_idx"]) + base, "subject_name": row["meta_info"], "id": "x1"}


def test_medqa_prompts_equal_the_harness_on_every_real_row(shared_data: Path) -> None:
    rows = medqa_rows(shared_data)
    items, dropped = to_items(rows, "medqa", Fields(), None)
    assert len(items) == 1273 and dropped == {}
    for item, row in zip(items, rows):
        assert item.prompt == harness_medqa(as_hf(row))
        assert item.choices == ("A", "B", "C", "D")
        assert row["options"]["ABCD"[item.answer]] == row["answer"]
    assert {i.group for i in items} == {"step1", "step2&3"}
    # The Hub copy the harness reads gives the same items (its rows carry no meta_info).
    hf_items, _ = to_items([as_hf(r) for r in rows[:50]], "medqa", Fields(), None)
    assert [(i.prompt, i.answer) for i in hf_items] == [(i.prompt, i.answer) for i in items[:50]]


def test_generic_multiple_choice_on_medqa_rows_is_the_medqa_prompt(shared_data: Path) -> None:
    rows = medqa_rows(shared_data)[:100]
    generic, _ = to_items(rows, "multiple_choice", Fields(), None)
    builtin, _ = to_items(rows, "medqa", Fields(), None)
    assert generic == builtin


@pytest.mark.parametrize("base, fields", [(0, Fields()), (1, Fields(answer_key_type="index1"))])
def test_medmcqa_prompts_equal_the_harness(shared_data: Path, base: int, fields: Fields) -> None:
    rows = [as_medmcqa(r, base) for r in medqa_rows(shared_data)[:200]]
    items, dropped = to_items(rows, "medmcqa", fields, None)
    assert len(items) == 200 and dropped == {}
    for item, row in zip(items, rows):
        assert item.prompt == harness_medmcqa(row)
        assert item.answer == row["cop"] - base and item.group == row["subject_name"] and item.id == "x1"


def test_pubmedqa_prompts_equal_the_harness_on_every_real_row(shared_data: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "pubmedqa" / "test.jsonl").read_text().splitlines()]
    items, dropped = to_items(rows, "pubmedqa", Fields(), None)
    assert len(items) == 500 and dropped == {}
    for item, row in zip(items, rows):
        assert item.prompt == harness_pubmedqa(row)
        assert item.choices == ("yes", "no", "maybe") and item.choices[item.answer] == row["final_decision"]
        assert item.id == row["pubid"]
    # The qiaojin/PubMedQA layout on the Hub gives the same items.
    other = [{"pubid": r["pubid"], "question": r["QUESTION"], "context": {"contexts": r["CONTEXTS"]},
              "final_decision": r["final_decision"]} for r in rows[:20]]
    assert to_items(other, "pubmedqa", Fields(), None)[0] == items[:20]


@pytest.mark.parametrize("fmt, row, reason", [
    ("medqa", {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}, "keys A, B, C, D"),
    ("medqa", {"question": "q", "options": {k: k for k in "ABCD"}, "answer_idx": "E"}, "answer_idx"),
    ("medqa", {"options": {k: k for k in "ABCD"}, "answer_idx": "A"}, "missing question"),
    ("medmcqa", {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4}, "cop out of range"),
    ("medmcqa", {"question": "q", "opa": "a", "opb": "b", "opc": "c", "cop": 1}, "missing opd"),
    ("pubmedqa", {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}, "final_decision"),
    ("pubmedqa", {"QUESTION": "q", "final_decision": "yes"}, "CONTEXTS"),
])
def test_broken_rows_are_dropped_and_counted(fmt: str, row: dict[str, Any], reason: str) -> None:
    items, dropped = to_items([row, row], fmt, Fields(), None)
    assert items == [] and len(dropped) == 1
    (found, count), = dropped.items()
    assert reason in found and count == 2


def test_limit_keeps_the_first_n_and_every_format_is_listed(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "medqa" / "test.jsonl"
    bench = Benchmark(name="m", format="medqa", path=str(path), limit=7)
    items, _ = benchmark_items(bench, read_rows(bench, path, None))
    assert len(items) == 7 and items[0] == to_items(read_local(path), "medqa", Fields(), 1)[0][0]
    assert isinstance(items[0], Item)
    assert set(FORMATS) == {"medqa", "medmcqa", "pubmedqa", "multiple_choice"}


@pytest.mark.parametrize(("text", "expected"), [
    (" B", 1), (" (C) Imatinib", 2), ("The answer is D.", 3), ("Answer: b", 1), (" B. Imatinib, not C", 1),
    ("Imatinib (B)", 1), (" a drug that", None), ("Either A or B", None), ("", None), (" Imatinib", None),
])
def test_a_generated_answer_names_its_letter(text: str, expected: int | None) -> None:
    assert extract_choice(text, tuple("ABCD")) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (" Yes, because", 0), (" It is not clear; maybe", 2), (" no.", 1), (" Nothing known", None),
])
def test_a_generated_answer_names_its_word(text: str, expected: int | None) -> None:
    assert extract_choice(text, ("yes", "no", "maybe")) == expected


def test_an_ids_file_keeps_the_official_fold_and_counts_the_rest(shared_data: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "pubmedqa" / "test.jsonl").read_text().splitlines()]
    # qiaojin/PubMedQA's layout (pubid, question, context.contexts), as the Hub serves all 1000 rows.
    hub = [{"pubid": int(r["pubid"]), "question": r["QUESTION"], "context": {"contexts": r["CONTEXTS"]},
            "final_decision": r["final_decision"]} for r in rows[:40]]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hub))
    (tmp_path / "ids.txt").write_text("# a fold\n" + "".join(f"{r['pubid']}\n" for r in rows[5:15]) + "\n")
    bench = Benchmark(name="p", format="pubmedqa", ids="ids.txt")
    items, dropped = benchmark_items(bench, read_rows(bench, tmp_path / "all.jsonl", None), tmp_path / "ids.txt")
    assert [it.id for it in items] == [r["pubid"] for r in rows[5:15]] and dropped == {"id not in the ids file": 30}
    limited, _ = benchmark_items(dataclasses.replace(bench, limit=3), read_local(tmp_path / "all.jsonl"),
                                 tmp_path / "ids.txt")
    assert [it.id for it in limited] == [r["pubid"] for r in rows[5:8]]


def test_the_shipped_pubmedqa_test_ids_are_the_official_500(shared_data: Path) -> None:
    shipped = read_ids(Path(__file__).resolve().parents[2] / "specs" / "pubmedqa_test_ids.txt")
    official = {json.loads(line)["pubid"] for line in (shared_data / "pubmedqa" / "test.jsonl").read_text().splitlines()}
    assert shipped == official and len(shipped) == 500
