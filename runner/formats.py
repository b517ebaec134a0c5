"""Record formats: turning one raw row into a prompt and a completion, or a reason to drop it.

Pure Python (no torch), so every format is unit-tested on real rows. The multiple-choice prompt is
the lm-evaluation-harness one (`Question: ...\nA. ...\nAnswer:`), so training and scoring agree.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner.errors import DataError
from runner.spec import Fields

ROW_BYTES = 64 << 20  # one row at most (a JSONL line, a CSV field): past it the row is dropped, not parsed


def row_bytes() -> int:
    """The bound on one row, `RUNNER_MAX_ROW_BYTES` where set (the tests lower it to stay fast)."""
    import os

    value = os.environ.get("RUNNER_MAX_ROW_BYTES", "")
    return int(value) if value.isdigit() and int(value) > 0 else ROW_BYTES

LETTERS = string.ascii_uppercase
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


def read_local(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    """Rows of a local file. A bad line or row is yielded as Dropped, never raised; a file that cannot
    be read at all raises DataError naming it, and the line where there is one."""
    readers = {".jsonl": _read_json_lines, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix.lower()!r}; use .jsonl, .json, .csv or .parquet")
    try:
        yield from reader(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check the path in the spec") from exc


NOT_UTF8, NOT_JSON, TOO_DEEP = "not UTF-8", "not valid JSON", "not valid JSON (nested too deeply)"


def _parse_line(raw: bytes) -> dict[str, Any] | Dropped | None:
    """One JSON Lines row, or None for a blank line."""
    try:
        # A BOM is what some editors put before the first line; it is not part of the row.
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        return Dropped(NOT_UTF8)
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except RecursionError:  # "[[[[..." deeper than the interpreter's stack allows
        return Dropped(TOO_DEEP)
    except ValueError:
        return Dropped(NOT_JSON)
    return row if isinstance(row, dict) else Dropped("not a JSON object")


def _read_json_lines(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    limit = row_bytes()
    with open(path, "rb") as handle:  # bytes: one line of bad UTF-8 is one dropped row
        # A bounded readline: a 200 MB line is skipped in 1 MiB steps, never held or parsed whole.
        while raw := handle.readline(limit + 1):
            if len(raw) > limit and not raw.endswith(b"\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield Dropped(f"row over {limit} bytes")
                continue
            row = _parse_line(raw)
            if row is not None:
                yield row


def _read_json(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    """One document (an array of rows, `{"data": [...]}` or a single row), or JSON Lines under a
    `.json` name, as MedMCQA's own release (`dev.json`) is."""
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        yield from _json_lines_or_error(path, data, exc)
        return
    if isinstance(document, dict):
        rows = document["data"] if isinstance(document.get("data"), list) else [document]
    else:
        rows = document if isinstance(document, list) else [document]
    for row in rows:
        yield row if isinstance(row, dict) else Dropped("not a JSON object")


def _json_lines_or_error(path: Path, data: bytes, exc: Exception) -> list[dict[str, Any] | Dropped]:
    """The rows if the file is JSON Lines, else DataError for the broken document.

    JSON Lines if most lines parse on their own: that holds with a few broken rows (even a broken
    first one), and fails for a broken pretty-printed document, whose lines (`"a": 1,`) rarely do."""
    numbered = [(n, row) for n, row in enumerate(map(_parse_line, data.split(b"\n")), 1) if row is not None]
    unreadable = [n for n, row in numbered if isinstance(row, Dropped) and str(row) in (NOT_UTF8, NOT_JSON, TOO_DEEP)]
    if 2 * len(unreadable) < len(numbered):
        return [row for _, row in numbered]
    if isinstance(exc, UnicodeDecodeError):
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from exc
    if isinstance(exc, json.JSONDecodeError):
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    raise DataError(f"{path}:{unreadable[0] if unreadable else 1}: {TOO_DEEP}") from exc


def _read_csv(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    import csv

    # surrogateescape keeps a bad byte as a marker in its row, so only that row is dropped.
    limit, before = row_bytes(), csv.field_size_limit()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        csv.field_size_limit(limit)  # the default (128 KiB) stopped the whole file at one long field
        try:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    if "field larger than field limit" not in str(exc):
                        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc
                    yield Dropped(f"row over {limit} bytes")  # the reader goes on at the next line
                    continue
                yield row if _is_utf8(row) else Dropped(NOT_UTF8)
        finally:
            csv.field_size_limit(before)


def _is_utf8(row: dict[Any, Any]) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    import pyarrow.parquet as pq  # comes with datasets

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)  # a batch at a time: memory stays flat
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else exc!r})") from exc


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
