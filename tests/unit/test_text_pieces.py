"""A long document is tokenized in pieces cut after a newline (a whole 40 MB document held ~8 GB in the
tokenizer); the blocks come out as a whole-document tokenization gives them when the cuts fall on
newlines the tokenizer keeps, and a short document is tokenized whole, as before."""

from __future__ import annotations

from typing import Any

import pytest

from runner.stages.data import encoding


class Chars:
    """A tokenizer of one id per character, BOS 1 added unless told not to, EOS 2; records each call."""

    eos_token_id = 2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> Any:
        self.calls.append(len(text))
        ids = ([1] if add_special_tokens else []) + [10 + ord(c) % 50 for c in text]
        return type("Encoded", (), {"input_ids": ids})()


def whole(text: str, max_length: int) -> list[list[int]]:
    ids = [1] + [10 + ord(c) % 50 for c in text] + [2]
    return [ids[i : i + max_length] for i in range(0, len(ids), max_length) if len(ids[i : i + max_length]) > 1]


@pytest.mark.parametrize("text", ["short", "line one\nline two\n" * 40, "x" * 333, "ab\n" * 100 + "z"])
def test_pieces_give_the_blocks_of_the_whole_document(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(encoding, "PIECE_CHARS", 50)
    tok = Chars()
    blocks = [b["input_ids"] for b in encoding.text_blocks(text, tok, 16)]
    assert blocks == whole(text, 16)
    assert max(tok.calls) <= 50 and (len(tok.calls) == 1) == (len(text) <= 50)


def test_a_document_of_exactly_full_blocks_drops_the_lone_eos() -> None:
    blocks = list(encoding.text_blocks("x" * 15, Chars(), 16))  # BOS + 15 = 16 ids, then EOS alone: left out
    assert [len(b["input_ids"]) for b in blocks] == [16]
