"""Record formats: turning one raw row into a prompt and a completion, or a reason to drop it.

Pure Python (no torch), so every format is unit-tested on real rows. The multiple-choice prompt is
the lm-evaluation-harness one (`Question: ...\nA. ...\nAnswer:`), so training and scoring agree.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from runner.spec.typed import Fields, Reasoning

LETTERS = string.ascii_uppercase
THINKING = Reasoning()  # the schema's delimiters, where a caller reads rows without a spec's data section
T = TypeVar("T")


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


def to_example(row: dict[str, Any], fmt: str, fields: Fields, thinking: Reasoning = THINKING) -> Example:
    """One training example, or Dropped with the reason. `thinking`: the delimiters of a `reasoning` trace."""
    if fmt == "reasoning":
        return reasoning_example(row, fields, thinking)
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


def reasoning_example(row: dict[str, Any], fields: Fields, thinking: Reasoning) -> Example:
    """A question (with its options and context), then the trace between the delimiters and the answer.
    With options (MedMCQA and its `exp`) the prompt is the multiple-choice one and the answer `B. text`, as
    `multiple_choice` trains it, so the first line after the trace is what the evaluation reads."""
    has_options = isinstance(fields.options, tuple) or fields.options in row
    if has_options:
        q = to_question(row, fields)
        prompt, answer = q.prompt, f"{LETTERS[q.answer]}. {q.choices[q.answer]}"
    else:
        prompt = f"Question: {_text(row, fields.question, 'question')}\nAnswer:"
        if fields.context is not None:
            prompt = f"Context: {_text(row, fields.context, 'context')}\n{prompt}"
        answer = _text(row, fields.answer, "answer").strip()
    trace = _text(row, fields.trace, "reasoning trace").strip()
    return Example((("user", prompt), ("assistant", thought(trace, answer, thinking))))


def thought(trace: str, answer: str, thinking: Reasoning) -> str:
    """The assistant turn of a reasoning example; `split_thought` reads it back."""
    return f"{thinking.think_start}\n{trace}\n{thinking.think_end}\n\n{answer}"


def split_thought(content: str, thinking: Reasoning) -> tuple[str, str]:
    """(trace, answer) of a turn `thought` wrote."""
    head, answer = content.rsplit(f"\n{thinking.think_end}\n\n", 1)
    return head[len(thinking.think_start) + 1 :], answer


def chat_messages(example: Example, system_prompt: str | None, thinking: Reasoning | None = None) -> list[dict[str, str]]:
    """The messages a chat template reads: the system prompt, then the turns. `thinking`: the example is a
    reasoning one (its trace written between these delimiters) and the template takes `reasoning_content`
    (runner.rows.templates): the last turn goes as {reasoning_content: trace, content: answer}, so the
    template writes the trace with its own thinking tokens, where it puts it."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": role, "content": content} for role, content in example.messages]
    if thinking is not None:
        trace, answer = split_thought(messages[-1]["content"], thinking)
        messages[-1] = {"role": "assistant", "reasoning_content": trace, "content": answer}
    return messages


# Role names as the common chat layouts write them (OpenAI `role`, ShareGPT `from`), to the three
# roles every chat template knows.
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "chatgpt": "assistant", "bard": "assistant", "model": "assistant"}
# Tool turns need a template and a data shape (calls, results) of their own: refused, each counted.
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")


def _chat(row: dict[str, Any], fields: Fields) -> Example:
    """OpenAI rows (`messages`: [{role, content}]) and ShareGPT rows (`conversations`: [{from, value}]),
    told apart per row by the key present; `fields.messages` names another key."""
    key = next((k for k in (fields.messages, "messages", "conversations") if k in row), fields.messages)
    messages = row.get(key)
    if not isinstance(messages, list) or not messages:
        raise Dropped(f"missing messages ({fields.messages})")
    turns = tuple(_turn(m) for m in messages)
    if not any(role == "assistant" for role, _ in turns):
        raise Dropped("no assistant message")
    return Example(turns)


def _turn(message: Any) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise Dropped("a message that is not an object")
    role_key, content_key = ("role", "content") if "role" in message else ("from", "value")
    name = message.get(role_key)
    if not isinstance(name, str) or not name:
        raise Dropped("a message without a role (role or from)")
    if name.lower() in TOOL_ROLES:
        raise Dropped(f"a {name.lower()} turn: tool calls are not trained")
    role = ROLES.get(name.lower())
    if role is None:
        raise Dropped(f"unknown role {name[:20]!r}")
    content = message.get(content_key)
    if isinstance(content, list):  # OpenAI content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise Dropped("a message with non-text content parts")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise Dropped("a message without text content")
    return role, content


def scored_turns(example: Example) -> Example:
    """A free-text benchmark's conversation up to its last assistant turn, which is the reference:
    the prompt is every turn before it, with at least one user turn."""
    last = max(i for i, (role, _) in enumerate(example.messages) if role == "assistant")
    if not any(role == "user" for role, _ in example.messages[:last]):
        raise Dropped("no user message before the last assistant message")
    return Example(example.messages[: last + 1])


def prompt_text(example: Example) -> str:
    """The question a scored example asks: its last user turn before the reference."""
    return next(text for role, text in reversed(example.messages[:-1]) if role == "user")


def convert_rows(rows: Iterable[dict[str, Any] | Dropped], convert: Callable[[dict[str, Any]], T],
                 limit: int | None = None) -> tuple[list[T], list[str]]:
    """Each row converted, and the reason of every row that could not be (the reader's Dropped or the
    converter's), in row order. `limit`: stop reading once that many are kept, so a file's rows past
    it are never read (nor can break the run)."""
    kept: list[T] = []
    dropped: list[str] = []
    for row in rows:
        if limit is not None and len(kept) >= limit:
            break
        if isinstance(row, Dropped):
            dropped.append(str(row))
            continue
        try:
            kept.append(convert(row))
        except Dropped as reason:
            dropped.append(str(reason))
    return kept, dropped


def count_reasons(reasons: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(reasons).items()))


TEXT_KEY = "\0text"  # where a whole-file document's text is put: a name no column has


def document_text(row: dict[str, Any], column: str) -> str:
    """The text of one document row, or Dropped with the reason."""
    value = row.get(TEXT_KEY, row.get(column))
    if value is None:
        raise Dropped(f"missing text ({column})")
    if not isinstance(value, str) or not value.strip():
        raise Dropped(f"empty text ({column})")
    return value
