"""The perplexity corpus and its windows (the model's part is in tests/integration/test_eval_metrics.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import DataError
from runner.stages.eval.perplexity import read_corpus, windows


def test_windows_cover_every_token_and_drop_what_predicts_nothing() -> None:
    assert windows([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4]]  # [5] alone predicts no token
    assert windows([1, 2, 3, 4, 5, 6], 4) == [[1, 2, 3, 4], [5, 6]]
    assert windows([7], 4) == []


def test_a_text_file_is_its_non_empty_lines_and_jsonl_its_field(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("first text\n\n  \nsecond text\nthird\n")
    assert read_corpus(tmp_path / "c.txt", "text", None) == ["first text", "second text", "third"]
    assert read_corpus(tmp_path / "c.txt", "text", 2) == ["first text", "second text"]
    (tmp_path / "c.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    assert read_corpus(tmp_path / "c.jsonl", "body", None) == ["a", "b"]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.jsonl", '{"text": "a"}\n{"body": "b"}\n', "c.jsonl:2: not a JSON object with a text field `text`"),
    ("c.jsonl", '{"text": 3}\n', "c.jsonl:1: `text` is not text"),
    ("c.txt", "\n \n", "holds no text"),
])
def test_a_broken_corpus_is_one_line_naming_the_place(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match="eval.perplexity: ") as caught:
        read_corpus(tmp_path / name, "text", None)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_corpus_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="cannot read .* as UTF-8 text"):
        read_corpus(tmp_path / "c.txt", "text", None)
