"""The built-in GRPO rewards on hand cases, the spec rules around them, and chaining's light half."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.scoring import rewards
from runner.scoring.rewards import LETTER, TEXT, answer_correct, built_in, format_reward, is_correct, read_answer
from runner.spec.typed import Spec, parse_spec


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


# The reader the reward had before it read through extract.read_choice: benchmarks.extract_choice on the
# first non-empty line after the last </think>.
def old_reader(completion: str, choices: int) -> int | None:
    from runner.scoring.benchmarks import extract_choice

    return extract_choice(rewards.answer_line(completion), tuple("ABCDE"[:choices]))


HAND = [" B. imatinib", "Answer: C", "the answer is (D)", "<think>A, no: C.</think>\nAnswer: C",
        "<think>It is A</think>\n", "a patient with a fever", "either C or D", "", "E. none",
        "\n\n A\nQuestion: next", "I think B.\nThe answer is (C)", "(b)", "answer: b", "<think>x</think> B",
        "Answer: (E)", "Imatinib is the drug."]


@pytest.mark.parametrize("completion", HAND)
def test_the_default_reading_is_eval_generatives_and_reads_as_the_old_reader(completion: str, tmp_path: Path) -> None:
    """eval.generative's default (`extract: first-line`) is the reader the reward had: on every hand case,
    the readable ones and those neither reads (the article "a", two letters, a letter past the options, an
    answer only inside the thinking, prose naming no letter), the same answer."""
    assert rewards.reading_of(parse_spec(grpo_spec(tmp_path, "{method: grpo}"), base_dir=tmp_path)) == rewards.Reading()
    assert read_answer(completion, 4) == old_reader(completion, 4)


NO_ANSWER = {"<think>It is A</think>\n", "(b)", "a patient with a fever", "either C or D", "", "E. none", "Answer: (E)",
             "Imatinib is the drug."}


def test_neither_reads_the_unreadable_hand_cases() -> None:
    assert {c for c in HAND if read_answer(c, 4) is None} == NO_ANSWER


@pytest.mark.parametrize(("completion", "first_line", "last_answer"), [
    ("I think B.\nThe answer is (C)", 1, 2),  # the first line names B; the last "answer is" is C
    (" B. imatinib", 1, None),  # no "answer": the filter reads nothing where the first line reads B
    ("Answer: A, no wait. Answer: D", 0, 3),  # the first "answer" against the last
    ("<think>Answer: B</think>", None, None),  # only inside the thinking: neither
    ("either C or D", None, None),
])
def test_the_spec_reading_is_the_reward_reading(tmp_path: Path, completion: str, first_line: int | None,
                                              last_answer: int | None) -> None:
    """eval.generative.extract or .filters change what answer_correct reads as they change what eval scores."""
    steps = ("[{function: after_thinking}, {function: regex, regex_pattern: '[Aa]nswer(?: is)?\\s*:?\\s*\\(?([ABCD])\\)?',"
             " group_select: -1}, {function: take_first}]")
    for generative, want in (("{enabled: true}", first_line), ("{enabled: true, extract: last-answer}", last_answer),
                             (f"{{enabled: true, filters: {steps}}}", last_answer)):
        text = grpo_spec(tmp_path, "{method: grpo}") + f"eval: {{generative: {generative}}}\n"
        spec = parse_spec(text, base_dir=tmp_path)
        [reward] = rewards.reward_functions(spec)[0]
        letter = None if want is None else "ABCD"[want]
        got = reward([completion] * 4, answer=list("ABCD"), kind=[LETTER] * 4, choices=[4] * 4)
        assert got == [float(k == letter) for k in "ABCD"], (generative, got)


def test_a_multi_choice_filter_reads_the_option_texts_of_the_prompt() -> None:
    flexible = rewards.Reading("flexible")
    prompt = "Which drug?\nA. aspirin\nB. imatinib\nC. insulin\nD. heparin\nAnswer:"
    assert read_answer("give imatinib", 4, flexible, prompt) == 1
    assert read_answer("give imatinib", 4, flexible) is None  # no prompt, no option texts
    got = answer_correct(["give imatinib"], answer=["B"], kind=[LETTER], choices=[4], prompts=[prompt],
                         reading=flexible)
    assert got == [1.0]


def test_the_reading_enters_the_grpo_key_only_when_set(tmp_path: Path) -> None:
    from runner.stages.train import method_slice, spec_slice

    def spec(train: str, generative: str = "{enabled: true}") -> Spec:
        return parse_spec(grpo_spec(tmp_path, train) + f"eval: {{generative: {generative}}}\n", base_dir=tmp_path)

    assert "read" not in method_slice(spec("{method: grpo}"))["grpo"]  # smoke-grpo's: its key stays
    moved = method_slice(spec("{method: grpo}", "{extract: last-answer, think_end: </r>}"))["grpo"]
    assert moved["read"] == {"extract": "last-answer", "think_end": "</r>"}
    # SFT reads no answer while training; a GRPO without answer_correct neither.
    assert spec_slice(spec("{}", "{extract: last-answer}")) == spec_slice(spec("{}"))
    no_answer = "{method: grpo, grpo: {rewards: [{name: format}]}}"
    assert "read" not in method_slice(spec(no_answer, "{extract: last-answer}"))["grpo"]


@pytest.mark.parametrize(("data", "generative", "template", "think_end"), [
    ("", "{}", None, "</think>"),
    ("reasoning: {think_end: '</r>'}", "{}", None, "</r>"),  # where training closed the traces
    ("reasoning: {think_end: '</r>'}", "{think_end: '[/T]'}", None, "[/T]"),  # as written
    ("template: chat, reasoning: {think_end: '</r>'}", "{}", "{{ m.reasoning_content }}<think></think>", "</think>"),
])
def test_the_thinking_delimiter_is_the_one_eval_reads_after(tmp_path: Path, data: str, generative: str,
                                                          template: str | None, think_end: str) -> None:
    """The reward and eval resolve it by the same function (extract.reading_think_end); set away from
    </think> by the spec, it enters the GRPO train key (a template's own comes in with the model)."""
    from runner.stages.train import method_slice

    text = grpo_spec(tmp_path, "{method: grpo}").replace("data: {train: {path: train.jsonl}}",
                                                        f"data: {{train: {{path: train.jsonl}}, {data}}}" if data else
                                                        "data: {train: {path: train.jsonl}}")
    spec = parse_spec(text + f"eval: {{generative: {generative}}}\n", base_dir=tmp_path)
    assert rewards.reading_of(spec, template).think_end == think_end
    completion = f"<think>A{think_end} B\nC"
    assert read_answer(completion, 4, rewards.reading_of(spec, template)) == 1
    read = method_slice(spec)["grpo"].get("read", {})
    assert read.get("think_end", "</think>") == (think_end if template is None else "</r>")


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


def test_a_user_reward_runs_only_with_the_opt_in_and_its_file_digest_is_in_the_train_key(tmp_path: Path) -> None:
    from runner.core.keys import stage_key
    from runner.core.plan import stage_inputs
    from runner.machine.probe import Probe
    from runner.machine.profile import resolve_profile
    from runner.scoring.rewards import reward_functions
    from runner.stages import all_stages

    (tmp_path / "mine.py").write_text("def mine(completions, **kw):\n    return [0.0] * len(completions)\n")
    text = grpo_spec(tmp_path, "{method: grpo, grpo: {trust_reward_code: true, rewards: [{name: mine, path: mine.py}]}}")
    [train] = [s for s in all_stages() if s.name == "train"]
    probe = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")

    def key() -> str:
        spec = parse_spec(text, base_dir=tmp_path)
        upstream = dict.fromkeys(train.upstream, "0" * 64)
        return stage_key(stage_inputs(train, spec, resolve_profile(spec, probe), upstream))

    before = key()
    assert key() == before
    (tmp_path / "mine.py").write_text("def mine(completions, **kw):\n    return [1.0] * len(completions)\n")
    assert key() != before  # the file's content, not its name, is in the key
    # A spec built in code skips the schema's rule: the trainer's own check refuses the file too.
    trusted = parse_spec(text, base_dir=tmp_path)
    untrusted = dataclasses.replace(trusted, train=dataclasses.replace(
        trusted.train, grpo=dataclasses.replace(trusted.train.grpo, trust_reward_code=False)))
    with pytest.raises(SpecError, match="is code: set train.grpo.trust_reward_code: true"):
        reward_functions(untrusted)
    funcs, weights = reward_functions(trusted)
    assert [f.__name__ for f in funcs] == ["mine"] and weights == [1.0] and funcs[0](["a", "b"]) == [1.0, 1.0]
