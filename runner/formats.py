"""Record formats: turning one raw row into a prompt and a completion, or a reason to drop it.

Pure Python (no torch), so every format is unit-tested on real rows. The multiple-choice prompt is
the lm-evaluation-harness one (`Question: ...\nA. ...\nAnswer:`), so training and scoring agree.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import DataError
from runner.spec import Fields

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Example:
    """Chat messages; the loss covers the assistant turns. Single-turn formats give [user, assistant]."""

    messages: tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class Question:
    """A multiple-choice question for scoring."""

    prompt: str  # ends with "Answer:"
    choices: tuple[str, ...]  # option texts
    answer: int  # index of the correct choice
    group: str | None  # the data's own grouping (MedQA meta_info), for breakdowns


class Dropped(Exception):
    """This row cannot be used; the message is the reason counted in stats.json."""


def read_local(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    """Rows of a local file. A line that is not a JSON object is yielded as Dropped, never raised."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    yield Dropped("not valid JSON")
                    continue
                yield row if isinstance(row, dict) else Dropped("not a JSON object")
    elif suffix == ".json":
        data = json.loads(path.read_text("utf-8"))
        rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
        for row in rows:
            yield row if isinstance(row, dict) else Dropped("not a JSON object")
    elif suffix == ".csv":
        import csv

        with open(path, encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # comes with datasets

        yield from pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _text(row: dict[str, Any], column: str, what: str) -> str:
    value = row.get(column)
    if value is None:
        raise Dropped(f"missing {what} ({column})")
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    if not isinstance(value, (str, int, float)) or not str(value).strip():
        raise Dropped(f"empty {what} ({column})")
    # Verbatim, trailing spaces included: the harness builds its prompts from the raw text.
    return str(value)


def _options(row: dict[str, Any], fields: Fields) -> list[str]:
    if isinstance(fields.options, tuple):
        return [_text(row, column, "option") for column in fields.options]
    value = row.get(fields.options)
    if isinstance(value, dict):
        keys = sorted(value)  # MedQA: {"A": ..., "B": ...}
        if keys != list(LETTERS[: len(keys)]):
            raise Dropped(f"options keys are not A, B, C...: {keys[:6]}")
        return [_text(value, key, "option") for key in keys]
    if isinstance(value, list) and value:
        return [_text({"o": v}, "o", "option") for v in value]
    raise Dropped(f"missing options ({fields.options})")


def _answer_index(row: dict[str, Any], fields: Fields, count: int) -> int:
    value = row.get(fields.answer_key)
    if value is None or value == "":
        raise Dropped(f"missing answer ({fields.answer_key})")
    if fields.answer_key_type == "letter":
        index = LETTERS.find(str(value).strip().upper()) if len(str(value).strip()) == 1 else -1
    else:
        try:
            index = int(value) - (1 if fields.answer_key_type == "index1" else 0)
        except (TypeError, ValueError):
            raise Dropped(f"answer is not an index ({fields.answer_key})") from None
    if not 0 <= index < count:
        raise Dropped(f"answer out of range ({fields.answer_key})")
    return index


def to_question(row: dict[str, Any], fields: Fields) -> Question:
    options = _options(row, fields)
    if len(set(options)) != len(options):
        raise Dropped("duplicate options")
    answer = _answer_index(row, fields, len(options))
    lines = []
    if fields.context is not None:
        lines.append(f"Context: {_text(row, fields.context, 'context')}")
    lines.append(f"Question: {_text(row, fields.question, 'question')}")
    lines += [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    lines.append("Answer:")
    group = row.get("meta_info") or row.get("subject_name")
    return Question("\n".join(lines), tuple(options), answer, str(group) if group is not None else None)


def to_example(row: dict[str, Any], fmt: str, fields: Fields) -> Example:
    """One training example, or Dropped with the reason."""
    if fmt == "multiple_choice":
        q = to_question(row, fields)
        return Example((("user", q.prompt), ("assistant", f"{LETTERS[q.answer]}. {q.choices[q.answer]}")))
    if fmt == "qa":
        prompt = f"Question: {_text(row, fields.question, 'question')}\nAnswer:"
        if fields.context is not None:
            prompt = f"Context: {_text(row, fields.context, 'context')}\n{prompt}"
        return Example((("user", prompt), ("assistant", _text(row, fields.answer, "answer"))))
    if fmt == "alpaca":
        instruction = _text(row, fields.instruction, "instruction")
        extra = row.get(fields.input)
        prompt = f"{instruction}\n\n{str(extra).strip()}" if extra and str(extra).strip() else instruction
        return Example((("user", prompt), ("assistant", _text(row, fields.output, "output"))))
    return _chat(row, fields)


def _chat(row: dict[str, Any], fields: Fields) -> Example:
    messages = row.get(fields.messages)
    if not isinstance(messages, list) or not messages:
        raise Dropped(f"missing messages ({fields.messages})")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise Dropped("a message without role system/user/assistant")
        if not isinstance(m.get("content"), str):
            raise Dropped("a message without text content")
        turns.append((m["role"], m["content"]))
    if not any(role == "assistant" for role, _ in turns):
        raise Dropped("no assistant message")
    return Example(tuple(turns))


def count_reasons(reasons: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(reasons).items()))
