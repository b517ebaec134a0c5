"""Benchmark rows as scoring items: the prompt lm-evaluation-harness builds, the choices it scores.

Pure Python (no torch), so every built-in format is unit-tested on real rows. The prompts copy the
harness's own `doc_to_text` functions (`lm_eval/tasks/{medqa,medmcqa,pubmedqa}`) character for
character; the scorer adds the target delimiter (" ") before each choice, as the harness does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.rows.formats import LETTERS, Dropped, convert_rows, count_reasons, to_question
from runner.spec.typed import Benchmark, Fields


@dataclass(frozen=True)
class Item:
    """One scored question."""

    prompt: str  # ends with "Answer:"
    choices: tuple[str, ...]  # the continuations without the delimiter: "A".."D", or "yes", "no", "maybe"
    answer: int  # index into `choices`
    group: str | None  # the data's own grouping (MedQA meta_info, MedMCQA subject_name), for breakdowns
    id: str | None  # the row's own id when it has one, so a prediction can be traced to its row


PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def _str(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise Dropped(f"missing {column}")
    return str(value)  # verbatim: the harness formats the raw value


def _id(row: dict[str, Any], *columns: str) -> str | None:
    for column in columns:
        if row.get(column) not in (None, ""):
            return str(row[column])
    return None


def medqa(row: dict[str, Any], fields: Fields) -> Item:
    """`medqa_4options`. Reads the original rows (question, options{A..D}, answer_idx, meta_info) or
    the harness's Hub copy (sent1, ending0..3, label)."""
    if "sent1" in row:
        question, options = _str(row, "sent1"), [_str(row, f"ending{i}") for i in range(4)]
        answer = _index(row.get("label"), 4, base=0, column="label")
    else:
        opts = row.get("options")
        if not isinstance(opts, dict) or sorted(opts) != list("ABCD"):
            raise Dropped("options are not a mapping with keys A, B, C, D")
        question, options = _str(row, "question"), [_str(opts, k) for k in "ABCD"]
        letter = str(row.get("answer_idx", "")).strip()
        if letter not in ("A", "B", "C", "D"):
            raise Dropped("answer_idx is not one of A, B, C, D")
        answer = "ABCD".index(letter)
    answers = "".join(f"{k}. {v}\n" for k, v in zip("ABCD", options))
    return Item(f"Question: {question}\n{answers}Answer:", tuple("ABCD"), answer,
                _group(row, "meta_info"), _id(row, "id"))


def medmcqa(row: dict[str, Any], fields: Fields) -> Item:
    """`medmcqa`: `cop` is 0-based as on the Hub (what the harness reads); `fields.answer_key_type:
    index1` reads the original 1-based release."""
    prompt = "Question: " + _str(row, "question") + "\nChoices:\n"
    for letter, column in zip("ABCD", ("opa", "opb", "opc", "opd")):
        prompt += f"{letter}. {_str(row, column)}\n"
    base = 1 if fields.answer_key_type == "index1" else 0
    return Item(prompt + "Answer:", tuple("ABCD"), _index(row.get("cop"), 4, base, "cop"),
                _group(row, "subject_name"), _id(row, "id"))


def pubmedqa(row: dict[str, Any], fields: Fields) -> Item:
    """`pubmedqa`. Reads the BigBio source rows (QUESTION, CONTEXTS, final_decision) or the
    `qiaojin/PubMedQA` ones (question, context.contexts, final_decision)."""
    if "QUESTION" in row:
        question, contexts = _str(row, "QUESTION"), row.get("CONTEXTS")
    else:
        context = row.get("context")
        question, contexts = _str(row, "question"), context.get("contexts") if isinstance(context, dict) else None
    if not isinstance(contexts, list):
        raise Dropped("missing CONTEXTS (a list of abstract sections)")
    decision = str(row.get("final_decision", "")).strip()
    if decision not in PUBMEDQA_CHOICES:
        raise Dropped("final_decision is not yes, no or maybe")
    ctxs = "\n".join(str(c) for c in contexts)
    return Item(f"Abstract: {ctxs}\nQuestion: {question}\nAnswer:", PUBMEDQA_CHOICES,
                PUBMEDQA_CHOICES.index(decision), None, _id(row, "pubid", "id"))


def multiple_choice(row: dict[str, Any], fields: Fields) -> Item:
    """Any multiple-choice file with a field mapping: the MedQA prompt shape over the mapped columns."""
    q = to_question(row, fields)
    return Item(q.prompt, tuple(LETTERS[: len(q.choices)]), q.answer, q.group, _id(row, "id"))


FORMATS = {"medqa": medqa, "medmcqa": medmcqa, "pubmedqa": pubmedqa, "multiple_choice": multiple_choice}
# The lm-evaluation-harness task each built-in format reproduces (for the report and the bench).
HARNESS_TASKS = {"medqa": "medqa_4options", "medmcqa": "medmcqa", "pubmedqa": "pubmedqa"}


def _index(value: Any, count: int, base: int, column: str) -> int:
    try:
        index = int(value) - base
    except (TypeError, ValueError):
        raise Dropped(f"{column} is not an index") from None
    if not 0 <= index < count:
        raise Dropped(f"{column} out of range")
    return index


def _group(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    return str(value) if value not in (None, "") else None


def to_items(rows: Iterable[dict[str, Any] | Dropped], fmt: str, fields: Fields, limit: int | None,
             keep: set[str] | None = None) -> tuple[list[Item], dict[str, int]]:
    """Items of a benchmark and the dropped rows counted by reason. `keep`: only rows with these ids;
    `limit` then keeps the first N items."""
    convert = FORMATS[fmt]

    def item(row: dict[str, Any]) -> Item:
        found = convert(row, fields)
        if keep is not None and found.id not in keep:
            raise Dropped("id not in the ids file")
        return found

    items, dropped = convert_rows(rows, item, limit)
    return items, count_reasons(dropped)


def read_ids(path: Path) -> set[str]:
    """Ids one a line; blank lines and # comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


def benchmark_items(bench: Benchmark, rows: Iterable[dict[str, Any] | Dropped],
                    ids: Path | None = None) -> tuple[list[Item], dict[str, int]]:
    """A benchmark's items from its rows (read by the data stage's `read_rows`, local file or Hub),
    only the rows listed in the `ids` file if given, at most `bench.limit` of them."""
    return to_items(rows, bench.format, bench.fields, bench.limit, read_ids(ids) if ids is not None else None)


def extract_choice(text: str, choices: tuple[str, ...]) -> int | None:
    """The choice a generated answer names, or None when none can be read off it.

    Letters: an explicit "answer is (B)" / "Answer: B" first, then a letter opening the text ("B",
    "(B)", "B. Imatinib"), then the only choice letter standing alone anywhere in it. Words (yes, no,
    maybe): the first of them in the text. Case is ignored for words, kept for letters (the article
    "a" is not choice A).
    """
    if all(len(c) == 1 and c.isupper() for c in choices):
        letters = "".join(choices)
        # "answer" in any case; the letter itself as written (after "Answer:", "b" is B; in prose "a" is a word).
        for pattern in (rf"(?i:answer)(?:\s+(?i:is))?\s*[:\-]?\s*\(?([{letters}{letters.lower()}])(?![A-Za-z])",
                        rf"^\W*\(?([{letters}])(?![A-Za-z])"):
            match = re.search(pattern, text)
            if match and (match.group(1).isupper() or ":" in match.group(0)):
                return choices.index(match.group(1).upper())
        alone = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text))
        return choices.index(alone.pop()) if len(alone) == 1 else None
    words = "|".join(re.escape(c) for c in choices)
    match = re.search(rf"(?<![A-Za-z])({words})(?![A-Za-z])", text, flags=re.IGNORECASE)
    return [c.lower() for c in choices].index(match.group(1).lower()) if match else None
