"""A chat set as a free-text benchmark: the prompt is the conversation up to its last assistant turn,
rendered as training renders it; the reference is that turn's text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runner.rows.formats import Dropped
from runner.spec.typed import Benchmark, parse_spec
from runner.stages.eval.freetext import free_text_examples, prompt_ids

SHAREGPT = {"conversations": [{"from": "system", "value": "Answer in one line."},
                              {"from": "human", "value": "Antidote for paracetamol?"},
                              {"from": "gpt", "value": "N-acetylcysteine."},
                              {"from": "human", "value": "And for opioids?"},
                              {"from": "gpt", "value": "Naloxone."},
                              {"from": "human", "value": "Thanks!"}]}


class Renderer:
    """A tokenizer stand-in: the chat template writes `role: text` lines; ids are characters."""

    def __init__(self) -> None:
        self.rendered: list[tuple[list[dict[str, str]], bool]] = []

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        self.rendered.append((messages, add_generation_prompt))
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant:" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = True) -> Any:
        return type("Encoded", (), {"input_ids": [ord(c) for c in text]})()


def test_the_reference_is_the_last_assistant_turn_and_the_prompt_every_turn_before(tmp_path: Path) -> None:
    bench = Benchmark(name="c", format="chat")
    rows = [SHAREGPT, {"conversations": [{"from": "gpt", "value": "no question"}]}, Dropped("not valid JSON")]
    examples, dropped = free_text_examples(bench, rows)
    assert [e.messages[-1] for e in examples] == [("assistant", "Naloxone.")]
    assert dropped == {"no user message before the last assistant message": 1, "not valid JSON": 1}

    (tmp_path / "t.jsonl").write_text('{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}\n')
    spec = parse_spec("model: {source: init}\ndata: {train: {path: t.jsonl}, system_prompt: Be safe.}\n",
                      base_dir=tmp_path)
    tok = Renderer()
    ids = prompt_ids(examples[0], tok, spec)
    assert "".join(map(chr, ids)) == ("system: Be safe.\nsystem: Answer in one line.\nuser: Antidote for paracetamol?\n"
                                      "assistant: N-acetylcysteine.\nuser: And for opioids?\nassistant:")
    plain = dataclasses.replace(spec, data=dataclasses.replace(spec.data, template="plain"))
    assert "".join(map(chr, prompt_ids(examples[0], tok, plain))) == (
        "Answer in one line.\n\nAntidote for paracetamol?\n\nN-acetylcysteine.\n\nAnd for opioids?")


def test_a_chat_benchmark_validates(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}\n')
    (tmp_path / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                         '{"role": "assistant", "content": "a"}]}\n')
    spec = parse_spec("model: {source: init}\ndata: {train: {path: t.jsonl}}\n"
                      "eval: {benchmarks: [{name: c, format: chat, path: chat.jsonl}]}\n", base_dir=tmp_path)
    assert spec.eval.benchmarks[0].format == "chat"
