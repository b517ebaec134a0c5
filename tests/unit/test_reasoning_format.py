"""The `reasoning` data format: the exact text of a reasoning example (question with options or context,
the trace between the delimiters, the answer), the exact tokens the loss covers, and a trace too long for
`max_length` dropped or cut as the spec says, counted either way."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from runner.rows.formats import Dropped, Example, split_thought, to_example
from runner.spec.typed import Fields, Reasoning, parse_spec
from runner.stages.data import building, encoding

MEDMCQA = {"question": "Drug of choice for absence seizures?", "opa": "Phenytoin", "opb": "Ethosuximide",
           "opc": "Carbamazepine", "opd": "Lithium", "cop": 1,
           "exp": "Absence seizures respond to ethosuximide, which blocks T-type calcium channels."}
MEDMCQA_FIELDS = Fields(options=("opa", "opb", "opc", "opd"), answer_key="cop", answer_key_type="index0", trace="exp")
O1 = {"Question": "A boy has wrist drop after a humerus fracture. Which nerve?",
      "Complex_CoT": "Wrist drop means the wrist extensors fail.\nThey are supplied by the radial nerve.",
      "Response": "The radial nerve. "}
O1_FIELDS = Fields(question="Question", trace="Complex_CoT", answer="Response")


def test_a_question_with_options_renders_the_multiple_choice_prompt_then_the_trace_then_the_key() -> None:
    example = to_example(MEDMCQA, "reasoning", MEDMCQA_FIELDS)
    assert example.messages == (
        ("user", "Question: Drug of choice for absence seizures?\nA. Phenytoin\nB. Ethosuximide\nC. Carbamazepine\n"
                 "D. Lithium\nAnswer:"),
        ("assistant", "<think>\nAbsence seizures respond to ethosuximide, which blocks T-type calcium channels.\n"
                      "</think>\n\nB. Ethosuximide"))


def test_a_free_answer_with_context_and_its_own_delimiters() -> None:
    fields = Fields(question="Question", trace="Complex_CoT", answer="Response", context="ctx")
    row = O1 | {"ctx": ["A 9-year-old.", "Fell on his arm."]}
    example = to_example(row, "reasoning", fields, Reasoning(think_start="<|think|>", think_end="<|/think|>"))
    assert example.messages == (
        ("user", "Context: A 9-year-old.\nFell on his arm.\n"
                 "Question: A boy has wrist drop after a humerus fracture. Which nerve?\nAnswer:"),
        ("assistant", "<|think|>\nWrist drop means the wrist extensors fail.\nThey are supplied by the radial nerve.\n"
                      "<|/think|>\n\nThe radial nerve."))
    assert split_thought(example.messages[1][1], Reasoning("<|think|>", "<|/think|>")) == (
        "Wrist drop means the wrist extensors fail.\nThey are supplied by the radial nerve.", "The radial nerve.")


@pytest.mark.parametrize(("row", "fields", "reason"), [
    ({k: v for k, v in O1.items() if k != "Complex_CoT"}, O1_FIELDS, "missing reasoning trace (Complex_CoT)"),
    (O1 | {"Complex_CoT": "  "}, O1_FIELDS, "empty reasoning trace (Complex_CoT)"),
    ({k: v for k, v in O1.items() if k != "Response"}, O1_FIELDS, "missing answer (Response)"),
    (MEDMCQA | {"cop": 7}, MEDMCQA_FIELDS, "answer out of range (cop)"),
])
def test_an_unusable_row_is_dropped_with_its_reason(row: dict[str, Any], fields: Fields, reason: str) -> None:
    with pytest.raises(Dropped, match=re.escape(reason)):
        to_example(row, "reasoning", fields)


class Words:
    """A tokenizer of words, single spaces, newlines, punctuation and `<...>` tags, one id each (ids given
    in order of first sight), BOS 1 unless told not to, EOS 2; the tiny model's chat template."""

    eos_token_id = 2

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.words: dict[int, str] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> Any:
        ids = [1] if add_special_tokens else []
        for piece in re.findall(r"<\|?/?\w+\|?>|\n| |\w+|[^\w\s]", text):
            ids.append(self.vocab.setdefault(piece, len(self.vocab) + 10))
            self.words[ids[-1]] = piece
        return type("Encoded", (), {"input_ids": ids})()

    def decode(self, ids: list[int]) -> str:
        return "".join(self.words.get(i, "<|eos|>") for i in ids)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")


def trained(tok: Words, ids: list[int], labels: list[int]) -> tuple[str, str]:
    """(the text the loss skips, the text it covers): the covered part must be one span at the end."""
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert labels[:first] == [-100] * first and labels[first:] == ids[first:]
    return tok.decode(ids[:first]), tok.decode(ids[first:])


def test_chat_rendering_trains_the_trace_and_the_answer_and_nothing_before() -> None:
    tok = Words()
    ids, labels = encoding.encode(to_example(MEDMCQA, "reasoning", MEDMCQA_FIELDS), tok, "chat", "Be brief.")
    assert trained(tok, ids, labels) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nQuestion: Drug of choice for absence seizures?\nA. Phenytoin\n"
        "B. Ethosuximide\nC. Carbamazepine\nD. Lithium\nAnswer:<|end|>\n<|assistant|>\n",
        "<think>\nAbsence seizures respond to ethosuximide, which blocks T-type calcium channels.\n</think>\n\n"
        "B. Ethosuximide<|end|>\n")


def test_plain_rendering_trains_the_trace_the_answer_and_eos() -> None:
    tok = Words()
    ids, labels = encoding.encode(to_example(O1, "reasoning", O1_FIELDS), tok, "plain", None)
    assert ids[0] == 1 and ids[-1] == tok.eos_token_id
    skipped, covered = trained(tok, ids[1:], labels[1:])
    assert skipped == "Question: A boy has wrist drop after a humerus fracture. Which nerve?\nAnswer:"
    assert covered == (" <think>\nWrist drop means the wrist extensors fail.\nThey are supplied by the radial nerve.\n"
                       "</think>\n\nThe radial nerve.<|eos|>")


LONG = O1 | {"Complex_CoT": " ".join(f"step{i}" for i in range(60))}


def test_a_long_trace_is_cut_at_its_end_keeping_the_delimiters_and_the_answer() -> None:
    tok = Words()
    example = to_example(LONG, "reasoning", O1_FIELDS)
    full, _ = encoding.encode(example, tok, "chat", None)
    ids, labels, cut = encoding.fit_trace(example, tok, "chat", None, Reasoning(), 80)
    assert cut and len(full) > 80 >= len(ids) > 70
    covered = trained(tok, ids, labels)[1]
    assert covered.startswith("<think>\nstep0 step1 ") and covered.endswith("\n</think>\n\nThe radial nerve.<|end|>\n")
    assert encoding.fit_trace(example, tok, "chat", None, Reasoning(), len(full))[2] is False  # fits: untouched
    with pytest.raises(Dropped, match=r"longer than data.max_length \(20 tokens\) even with its trace cut"):
        encoding.fit_trace(example, tok, "chat", None, Reasoning(), 20)


@pytest.mark.parametrize("too_long", ["drop", "truncate"])
def test_too_long_examples_are_counted_as_the_spec_says(tmp_path: Path, too_long: str) -> None:
    (tmp_path / "t.jsonl").write_text("{}\n")
    spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}, format: reasoning, max_length: 80, "
                      f"reasoning: {{too_long: {too_long}}}, fields: {{question: Question, trace: Complex_CoT, "
                      f"answer: Response}}}}\n", base_dir=tmp_path, rows=False)
    tally, tok = building.Tally(), Words()
    kept: list[dict[str, Any]] = []
    for row in (O1, LONG, O1):
        try:
            kept += building._encode(to_example(row, "reasoning", spec.data.fields), tok, spec, tally)
        except Dropped as reason:
            tally.dropped[str(reason)] += 1
    if too_long == "drop":
        assert len(kept) == 2 and tally.truncated == 0
        assert dict(tally.dropped) == {"longer than data.max_length (80 tokens)": 1}
    else:
        assert len(kept) == 3 and tally.truncated == 1 and not tally.dropped
        assert tally.as_dict(1.0)["truncated"] == 1
    assert all(len(r["input_ids"]) <= 80 for r in kept)


def test_example_type_is_the_chat_one() -> None:
    """A reasoning example is an ordinary two-turn Example: mixtures, packing and contamination read it as any."""
    assert isinstance(to_example(O1, "reasoning", O1_FIELDS), Example)


def test_the_contamination_check_reads_a_reasoning_source_by_its_prompts() -> None:
    from runner.rows.contamination import training_texts

    texts = training_texts([MEDMCQA, {"question": "no options, no trace"}], "reasoning", MEDMCQA_FIELDS)
    assert texts == [to_example(MEDMCQA, "reasoning", MEDMCQA_FIELDS).messages[0][1]]  # the trace is not a prompt


def test_a_reasoning_source_in_a_mixture_keys_its_trace_column_and_delimiters(tmp_path: Path) -> None:
    from runner.stages import data

    (tmp_path / "t.jsonl").write_text('{"question": "q?", "answer": "a", "why": "because"}\n')
    text = ("model: {source: init}\ndata:\n  train:\n    - {name: plain, path: t.jsonl, format: qa}\n"
            "    - {name: thoughts, path: t.jsonl, format: reasoning, fields: {trace: why}}\n")
    spec = parse_spec(text, base_dir=tmp_path)
    sliced = data.spec_slice(spec)["data"]
    assert [s["fields"].get("trace") for s in sliced["train"]] == [None, "why"]
    # The default template is the tokenizer's chat template: how it takes the trace is in the key (data
    # built before templates got the trace as reasoning_content are not reused); a plain template has none.
    assert sliced["reasoning"] == {"think_start": "<think>", "think_end": "</think>", "too_long": "drop",
                                   "chat_trace": "reasoning_content"}
    plain = parse_spec(text.replace("model: {source: init}\ndata:\n", "model: {source: init}\ndata:\n  template: plain\n"),
                       base_dir=tmp_path)
    assert data.spec_slice(plain)["data"]["reasoning"] == {"think_start": "<think>", "think_end": "</think>",
                                                           "too_long": "drop"}
    alone = parse_spec(text.split("    - {name: thoughts")[0].replace("    - {name: plain, path: t.jsonl, format: qa}\n",
                                                                     "    - {name: plain, path: t.jsonl, format: qa}\n"
                                                                     "    - {name: more, path: t.jsonl, format: qa}\n"),
                       base_dir=tmp_path)
    assert "reasoning" not in data.spec_slice(alone)["data"]  # keys of specs without a reasoning source stay


def test_a_reasoning_example_gives_a_template_that_takes_it_the_trace_as_reasoning_content() -> None:
    from runner.rows.formats import chat_messages

    thinking = Reasoning(think_start="<|think|>", think_end="<|/think|>")
    example = to_example(O1, "reasoning", O1_FIELDS, thinking)
    assert chat_messages(example, "Be brief.", thinking) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: A boy has wrist drop after a humerus fracture. Which nerve?\nAnswer:"},
        {"role": "assistant", "reasoning_content": "Wrist drop means the wrist extensors fail.\n"
                                                   "They are supplied by the radial nerve.",
         "content": "The radial nerve."}]
    assert chat_messages(example, None) == [{"role": role, "content": text} for role, text in example.messages]


class Qwen3ish(Words):
    """Words with a template that takes `reasoning_content` and writes it between <think> and </think>."""

    chat_template = "{{ message.reasoning_content }} ... '</think>' ..."

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        def turn(m: dict[str, str]) -> str:
            thought = f"<think>\n{m['reasoning_content']}\n</think>\n\n" if "reasoning_content" in m else ""
            return f"<|{m['role']}|>\n{thought}{m['content']}<|end|>\n"

        return "".join(turn(m) for m in messages) + ("<|assistant|>\n" if add_generation_prompt else "")


def test_the_data_stage_hands_the_trace_over_only_for_a_reasoning_source(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("{}\n")
    spec = parse_spec("model: {source: init}\ndata: {train: {path: t.jsonl}, format: reasoning, reasoning: "
                      "{think_start: '<|think|>', think_end: '<|/think|>'}, fields: {question: Question, "
                      "trace: Complex_CoT, answer: Response}}\n", base_dir=tmp_path, rows=False)
    example = to_example(O1, "reasoning", spec.data.fields, spec.data.reasoning)
    tok = Qwen3ish()
    row = next(iter(building._encode(example, tok, spec, building.Tally())))
    assert trained(tok, row["input_ids"], row["labels"])[1].startswith("<think>\nWrist drop")
    # Not a reasoning source (no tally): the content as it is, whatever the template takes.
    plain = next(iter(building._encode(example, tok, spec)))
    assert trained(tok, plain["input_ids"], plain["labels"])[1].startswith("<|think|>\nWrist drop")


@pytest.mark.parametrize(("template", "data_end", "eval_end", "expected"), [
    ("{{ m.reasoning_content }}<think></think>", "<|/think|>", "</think>", "</think>"),  # the template's
    ("{{ m.content }}", "<|/think|>", "</think>", "<|/think|>"),  # what training wrote: ours
    (None, "</think>", "</think>", "</think>"),  # every spec of today
    ("{{ m.reasoning_content }}<think></think>", "<|/think|>", "[/THINK]", "[/THINK]"),  # as written
    ("{{ m.reasoning_content }}[THINK][/THINK]", "<|/think|>", "</think>", "<|/think|>"),  # its token unknown
])
def test_the_evaluation_closes_thinking_where_training_did(template: str | None, data_end: str, eval_end: str,
                                                         expected: str, tmp_path: Path) -> None:
    from runner.stages.eval.sampling import think_end_of

    (tmp_path / "t.jsonl").write_text("{}\n")
    spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}, format: reasoning, reasoning: "
                      f"{{think_end: '{data_end}'}}}}\neval: {{generative: {{enabled: true, think_end: '{eval_end}'}}}}\n",
                      base_dir=tmp_path, rows=False)
    tok = type("Tok", (), {"chat_template": template})()
    assert think_end_of(spec, tok) == expected
    plain = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}, template: plain, format: reasoning, "
                       f"reasoning: {{think_end: '{data_end}'}}}}\n", base_dir=tmp_path, rows=False)
    assert think_end_of(plain, tok) == data_end  # no chat template in play: ours
