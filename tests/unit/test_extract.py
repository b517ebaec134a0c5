"""Answer extraction equal to lm-evaluation-harness's: the same generations through lm-eval's own filter
classes and through runner.scoring.extract give the same extracted answers, failures included."""

from __future__ import annotations

import pytest

from runner.scoring.extract import (
    FALLBACK,
    PRESETS,
    ExtractError,
    Step,
    apply,
    extract_choice,
    pipeline,
    steps_from,
    to_choice,
)

CHOICES = ("Metformin", "Insulin glargine", "Sitagliptin", "Glipizide")

# Realistic generations: reasoning then an answer, answers stated many ways, and texts no answer can
# be read from (the extraction failures must agree too).
TEXTS = [
    "The answer is (B).",
    "The answer is B",
    "Let's think step by step. HbA1c is 9.1%, so basal insulin is indicated. The answer is (B) Insulin glargine.",
    "Answer: C",
    "answer: c",
    "Answer:C\n\nQuestion: next one",
    "The patient is obese; first-line therapy is metformin. Therefore the answer is (A).",
    "First I thought the answer is (C), but renal function rules it out, so the answer is (A).",
    "<think>Maybe (D)? No: hypoglycaemia risk. The answer is (D) is wrong.</think>The answer is (A).",
    "<think>Sulfonylureas cause weight gain.</think>\nAnswer: A",
    "Metformin",
    "metformin, because of weight loss.",
    "I would choose Insulin glargine here.",
    "Glipizide is contraindicated; Sitagliptin is weight neutral.",
    "The best option: D",
    "Option: A) Metformin",
    "(C)",
    "(c)",
    "B",
    "It depends on the renal function.",
    "",
    "   ",
    "The answer is (E).",
    "the answer is (b)",
    "ANSWER IS (B)",
    "#### 42",
    "The total is #### -3,5 and then #### 7",
    "None of the above; I cannot decide.",
    "Both (A) and (B) are reasonable, the answer is (B).",
    "A. Metformin\nB. Insulin glargine\nThe answer is B.",
    "The answer is:  (D)",
    "Answer is (C)",
    "The answer is Insulin glargine.",
    "Insulin glargine, metformin, or sitagliptin would all work; answer: b",
    "...and so: B",
    "The answer is (A) (B) (C)",
    "No answer.\n\n\n",
    "The answer is \u00a0(B)",
]

PIPELINES = {
    "mmlu-pro": [{"function": "regex", "regex_pattern": r"answer is \(?([ABCDEFGHIJ])\)?"}, {"function": "take_first"}],
    "last-match": [{"function": "regex", "regex_pattern": r"[Aa]nswer(?: is)?\s*:?\s*\(?([ABCD])\)?",
                    "group_select": -1}, {"function": "take_first"}],
    "gpqa-strict": [{"function": "regex", "regex_pattern": "(?<=The answer is )(.*)(?=.)"}, {"function": "take_first"}],
    "gpqa-flexible": [{"function": "multi_choice_regex", "group_select": -1, "ignore_case": True,
                       "ignore_punctuation": True, "regex_pattern": r"(\([A-Z]\))"}, {"function": "take_first"}],
    "mc-plain": [{"function": "multi_choice_regex", "regex_pattern": r"answer is \(([A-D])\)"}, {"function": "take_first"}],
    "mc-ignore": [{"function": "multi_choice_regex", "regex_pattern": r"zzz", "ignore_case": True,
                   "regexes_to_ignore": [",", r"\."]}, {"function": "take_first"}],
    "gsm8k": [{"function": "regex", "regex_pattern": r"#### (\-?[0-9\.\,]+)"}, {"function": "take_first"}],
    "gsm8k-flexible": [{"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                       {"function": "take_first"}],
    "strip-lower-map": [{"function": "remove_whitespace"}, {"function": "lowercase"},
                        {"function": "map", "mapping_dict": {"b": "B", "(b)": "B"}, "default_value": "other"},
                        {"function": "take_first"}],
    "upper-regex": [{"function": "uppercase"}, {"function": "regex", "regex_pattern": r"ANSWER IS \(?([A-D])\)?",
                                                 "fallback": "none"}, {"function": "take_first"}],
    "vote": [{"function": "regex", "regex_pattern": r"answer is \(?([A-D])\)?", "group_select": -1},
             {"function": "majority_vote"}, {"function": "take_first"}],
}


def _lm_eval(config: list[dict], responses: list[list[str]]) -> list[list[str]]:
    """The same pipeline built from lm-eval's registry, applied as its FilterEnsemble applies it."""
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter, WhitespaceFilter
    from lm_eval.filters.selection import MajorityVoteFilter, TakeFirstFilter
    from lm_eval.filters.transformation import LowercaseFilter, MapFilter, UppercaseFilter

    classes = {"regex": RegexFilter, "multi_choice_regex": MultiChoiceRegexFilter, "remove_whitespace": WhitespaceFilter,
               "lowercase": LowercaseFilter, "uppercase": UppercaseFilter, "map": MapFilter, "take_first": TakeFirstFilter,
               "majority_vote": MajorityVoteFilter}
    docs = [{"choices": list(CHOICES)} for _ in responses]
    resps: object = responses
    for raw in config:
        args = {k: v for k, v in raw.items() if k != "function"}
        resps = classes[raw["function"]](**args).apply(resps, docs)
    return [[r] if isinstance(r, str) else list(r) for r in resps]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_same_answers_as_lm_eval(name: str) -> None:
    pytest.importorskip("lm_eval")
    config = PIPELINES[name]
    theirs = _lm_eval(config, [[t] for t in TEXTS])
    steps = steps_from(config[:-1]) if name == "vote" else steps_from(config)
    ours = [apply(steps, [t], CHOICES) for t in TEXTS]
    assert ours == theirs
    assert len(ours) == len(TEXTS)


def test_majority_vote_and_its_ties_as_lm_eval() -> None:
    pytest.importorskip("lm_eval")
    config = PIPELINES["vote"][:-1]
    groups = [["The answer is (B)", "The answer is (A)", "the answer is (B)", "The answer is (A)"],
              ["The answer is (C)", "no idea", "no idea", "The answer is (C)"],
              ["x", "y", "z"], ["The answer is (D)"]]
    theirs = _lm_eval(config, groups)
    ours = [apply(steps_from(config), g, CHOICES) for g in groups]
    assert ours == theirs
    assert ours[0] == ["B"]  # B and A tie 2-2: the first seen wins, in lm-eval and here
    assert ours[1] == ["C"] and ours[2] == [FALLBACK]  # failures vote in lm-eval: C ties them and was first


def test_failures_are_visible() -> None:
    steps = pipeline("answer-is", "ABCD")
    assert apply(steps, ["I cannot decide."]) == [FALLBACK]
    assert extract_choice("I cannot decide.", "ABCD") is None
    assert extract_choice("The answer is (E).", "ABCD") is None  # not a choice here


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is (B).", "B"),
    ("First the answer is (C), but then the answer is (A).", "A"),  # the last stated answer
    ("<think>the answer is (D)?</think>Answer: b", "B"),  # what follows the thinking
    ("<think>the answer is (D)</think>I am not sure.", None),  # rejected during thinking: not the answer
    ("Answer:C", "C"),
    ("no answer here", None),
])
def test_extract_choice_letters(text: str, expected: str | None) -> None:
    assert extract_choice(text, "ABCD") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"), ("The answer is maybe; evidence is mixed, no trial.", "maybe"),
    ("<think>no?</think>Answer: yes", "yes"), ("unclear", None)])
def test_extract_choice_words(text: str, expected: str | None) -> None:
    assert extract_choice(text, ("yes", "no", "maybe")) == expected


def test_to_choice() -> None:
    assert to_choice("(B)", "ABCD") == "B"
    assert to_choice(" c ", "ABCD") == "C"
    assert to_choice(FALLBACK, "ABCD") is None
    assert to_choice("Maybe", ("yes", "no", "maybe")) == "maybe"


def test_presets_fill_letters_and_bad_pipelines_are_named() -> None:
    assert "ABCDE" in pipeline("last-answer", "ABCDE")[1].regex_pattern
    assert set(PRESETS) >= {"last-answer", "answer-is", "flexible"}
    with pytest.raises(ExtractError, match="unknown pipeline 'nope'"):
        pipeline("nope")
    with pytest.raises(ExtractError, match="must be the last step"):
        pipeline([Step("take_first"), Step("lowercase")])
    with pytest.raises(ExtractError, match="unknown argument 'patern'"):
        steps_from([{"function": "regex", "patern": "x"}])
