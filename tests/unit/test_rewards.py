"""The built-in GRPO rewards on hand cases, the spec rules around them, and chaining's light half."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.scoring import rewards
from runner.scoring.rewards import LETTER, TEXT, answer_correct, built_in, format_reward, is_correct, read_answer
from runner.spec.typed import parse_spec


@pytest.mark.parametrize(("completion", "picked"), [
    (" B. imatinib", 1),  # what SFT on the plain template teaches
    ("Answer: C", 2),
    ("the answer is (D)", 3),
    ("<think>A looks wrong, so B or C; C.</think>\nAnswer: C", 2),  # after the reasoning, not inside it
    ("<think>It is A</think>\n", None),  # nothing after the reasoning
    ("a patient with a fever", None),  # the article is not choice A
    ("either C or D", None),  # two letters and no "answer": unreadable, not a guess
    ("", None),
    ("E. none", None),  # a letter past the options
    ("\n\n A\nQuestion: next", 0),  # the first non-empty line, as eval reads it
])
def test_the_answer_is_read_as_the_eval_reads_it(completion: str, picked: int | None) -> None:
    assert read_answer(completion, 4) == picked


def test_answer_correct_scores_one_only_for_the_key_and_logs_the_shares() -> None:
    logged: dict[str, float] = {}
    completions = [" B. imatinib", " C", "gibberish", "<think>x</think>\nAnswer: B"]
    got = answer_correct(completions, answer=["B"] * 4, kind=[LETTER] * 4, choices=[4] * 4,
                         log_metric=lambda name, value: logged.__setitem__(name, value))
    assert got == [1.0, 0.0, 0.0, 1.0]
    assert logged == {"rewards/answer_correct/share_correct": 0.5, "rewards/answer_correct/share_unreadable": 0.25}


def test_a_free_text_key_must_stand_in_the_answer_line() -> None:
    assert is_correct("Metformin, titrated.", "metformin", TEXT, 0) is True
    assert is_correct("not metformins", "metformin", TEXT, 0) is False  # words, not substrings
    assert is_correct("first line\nmetformin", "metformin", TEXT, 0) is False  # the answer is the first line
    assert is_correct("   ", "metformin", TEXT, 0) is None


@pytest.mark.parametrize(("completion", "reward"), [
    ("<think>The drug of choice is imatinib.</think>\nAnswer: B", 1.0),
    ("<think>reasoning</think> B", 1.0),
    ("Answer: B", 0.0),  # no reasoning
    ("<think></think>\nAnswer: B", 0.0),  # empty reasoning
    ("<think>reasoning</think>\n", 0.0),  # no answer line
    ("<think>never closed\nAnswer: B", 0.0),
    ("Sure. <think>late</think>\nB", 0.0),  # the reasoning must come first
])
def test_format(completion: str, reward: float) -> None:
    assert format_reward([completion]) == [reward]


def test_length_penalty_is_the_share_of_the_budget_used() -> None:
    penalty = built_in("length_penalty", 8)
    assert penalty(["x", "y", "z"], completion_ids=[[], [1, 2], list(range(20))]) == [-0.0, -0.25, -1.0]
    assert penalty.__name__ == "length_penalty"  # TRL logs rewards/<__name__>/mean


def test_chat_completions_are_read_as_their_text() -> None:
    assert format_reward([[{"role": "assistant", "content": "<think>r</think>\nB"}]]) == [1.0]


def test_a_reward_from_a_file_runs_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("def shout(completions, **kw):\n    return [c.count('!') for c in completions]\n")
    fn = rewards.from_file(tmp_path / "mine.py", "shout")
    assert fn(["a!!", "b"]) == [2.0, 0.0] and fn.__name__ == "shout"
    with pytest.raises(SpecError, match="no function 'whisper'"):
        rewards.from_file(tmp_path / "mine.py", "whisper")


ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


def grpo_spec(tmp_path: Path, train: str) -> str:
    (tmp_path / "train.jsonl").write_text(ROW)
    return f"model: {{source: init}}\ndata: {{train: {{path: train.jsonl}}}}\ntrain: {train}\n"


@pytest.mark.parametrize(("train", "message"), [
    ("{method: grpo, grpo: {rewards: [{name: shouting}]}}", "unknown reward 'shouting'"),
    ("{method: grpo, grpo: {rewards: [{name: mine, path: mine.py}]}}", "trust_reward_code: true"),
    ("{method: grpo, grpo: {trust_reward_code: true, rewards: [{name: mine, path: gone.py}]}}", "no file gone.py"),
    ("{method: grpo, batch_size: 12, grpo: {num_generations: 8}}", "must divide train.batch_size (12)"),
    ("{init_adapter: {}}", "give one of spec"),
    ("{init_adapter: {spec: nowhere.yaml}}", "no spec file nowhere.yaml"),
    ("{init_adapter: {path: empty}}", "no PEFT adapter in empty"),
])
def test_grpo_and_chaining_rules(tmp_path: Path, train: str, message: str) -> None:
    (tmp_path / "mine.py").write_text("def mine(completions, **kw):\n    return [0.0] * len(completions)\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(grpo_spec(tmp_path, train), base_dir=tmp_path)


def test_grpo_needs_prompts_with_a_checkable_answer(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "plain prose"}\n')
    with pytest.raises(SpecError, match="multiple_choice or qa source, got text"):
        parse_spec("model: {source: init}\ndata: {train: {path: train.jsonl}, format: text}\ntrain: {method: grpo}\n",
                   base_dir=tmp_path)
