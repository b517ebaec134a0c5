"""The preference methods' records: `preference` rows (a prompt, a chosen and a rejected answer) and
`kto` rows (a prompt, a completion, desirable or not), each value a text or a list of messages.

Pure Python (no torch). UltraFeedback's binarized layout (`prompt` a text; `chosen` and `rejected`
the whole conversation, user turn included) and TRL's explicit layout (`prompt` messages, `chosen`
and `rejected` the assistant turn alone) read the same: the prompt is what both answers share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.rows.formats import Dropped, Example, _turn, to_example
from runner.spec.typed import Fields

Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Pair:
    """One preference: the conversation so far, and the assistant's answer preferred and less preferred."""

    prompt: Turns  # ends with a user turn
    chosen: str
    rejected: str

    def example(self) -> Example:
        """The conversation with the chosen answer: what SFT would train on, and what contamination reads."""
        return Example((*self.prompt, ("assistant", self.chosen)))


@dataclass(frozen=True)
class Labelled:
    """One KTO row: a prompt, a completion, and whether the completion is desirable."""

    prompt: Turns
    completion: str
    desirable: bool

    def example(self) -> Example:
        return Example((*self.prompt, ("assistant", self.completion)))


def _turns(value: Any, role: str, what: str, column: str) -> Turns:
    """A text as one turn of `role`, or a list of messages as theirs."""
    if isinstance(value, str):
        if not value.strip():
            raise Dropped(f"empty {what} ({column})")
        return ((role, value),)
    if isinstance(value, list) and value:
        return tuple(_turn(m) for m in value)
    if value is None:
        raise Dropped(f"missing {what} ({column})")
    raise Dropped(f"{what} is neither a text nor a list of messages ({column})")


def _prompt(row: dict[str, Any], column: str) -> Turns:
    return () if row.get(column) is None else _turns(row[column], "user", "prompt", column)


def _answer(prompt: Turns, turns: Turns, what: str, column: str) -> tuple[Turns, str]:
    """(the prompt, the answer) of one side: its turns after the prompt, when they repeat it (UltraFeedback),
    else the prompt's then its own; the answer is the last turn, the assistant's."""
    full = turns if prompt and turns[: len(prompt)] == prompt else prompt + turns
    if full[-1][0] != "assistant":
        raise Dropped(f"{what} does not end with an assistant message ({column})")
    if not full[-1][1].strip():
        raise Dropped(f"empty {what} ({column})")
    return full[:-1], full[-1][1]


def to_pair(row: dict[str, Any], fields: Fields) -> Pair:
    """One preference pair, or Dropped with the reason."""
    prompt = _prompt(row, fields.prompt)
    before_c, chosen = _answer(prompt, _turns(row.get(fields.chosen), "assistant", "chosen", fields.chosen),
                               "chosen", fields.chosen)
    before_r, rejected = _answer(prompt, _turns(row.get(fields.rejected), "assistant", "rejected", fields.rejected),
                                 "rejected", fields.rejected)
    if before_c != before_r:
        raise Dropped("chosen and rejected answer different conversations")
    if not any(role == "user" for role, _ in before_c):
        raise Dropped(f"no user message before the answers ({fields.prompt})")
    if chosen == rejected:
        raise Dropped("chosen and rejected are the same")
    return Pair(before_c, chosen, rejected)


# True and False also match 1 and 0 (equal, same hash); 1.0 and 0.0 are made ints first.
LABELS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}


def to_labelled(row: dict[str, Any], fields: Fields) -> Labelled:
    """One KTO row, or Dropped with the reason."""
    prompt = _prompt(row, fields.prompt)
    before, completion = _answer(prompt, _turns(row.get(fields.completion), "assistant", "completion",
                                                fields.completion), "completion", fields.completion)
    if not any(role == "user" for role, _ in before):
        raise Dropped(f"no user message before the completion ({fields.prompt})")
    value = row.get(fields.label)
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, float) and key in (0.0, 1.0):
        key = int(key)
    if isinstance(key, (list, dict)) or key not in LABELS:
        raise Dropped(f"label is not true or false ({fields.label})")
    return Labelled(before, completion, LABELS[key])


def example_of(row: dict[str, Any], fmt: str, fields: Fields) -> Example:
    """Any format's row as a conversation (runner.rows.formats.to_example), a pair's or a KTO row's with its
    chosen (or only) answer: what the contamination check reads of the training data."""
    if fmt == "preference":
        return to_pair(row, fields).example()
    if fmt == "kto":
        return to_labelled(row, fields).example()
    return to_example(row, fmt, fields)
