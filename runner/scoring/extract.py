"""Reading an answer off generated text, the way lm-evaluation-harness's filter pipelines read it.

A pipeline is a list of named steps, each a filter of lm-eval 0.4 (`regex`, `multi_choice_regex`,
`remove_whitespace`, `lowercase`, `uppercase`, `map`, then `take_first` or `majority_vote` over a
question's samples), with lm-eval's own arguments and defaults, so a task's `filter_list` can be
copied into a spec and give the answers the harness would give (tests/unit/test_extract.py feeds the
same texts through lm-eval's classes). "Take the last match" is lm-eval's `group_select: -1`.

Two steps lm-eval does not have, both plainly named: `after_thinking` keeps what follows the last
closing thinking delimiter (a model that reasons names choices it then rejects), and the final
reading of the extracted string as one of the question's choices (`to_choice`). A text nothing can
be read from gives the step's fallback (`[invalid]`), and `to_choice` gives None: an extraction
failure, counted wrong, never dropped.

`read_choice` is the one reading of a generated answer: eval.generative scores with it and GRPO's
answer_correct reward rewards with it (runner.scoring.rewards), under the same spec fields, so what
training rewards is what evaluation counts. Pure Python (no torch): the reward runs it on every
sampled completion.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from runner.rows.templates import trained_think_end
from runner.scoring.benchmarks import extract_choice as first_line_choice
from runner.spec.typed import Generative, Spec

FALLBACK = "[invalid]"  # lm-eval's fallback for a text its regex does not match
THINK_END = "</think>"
FIRST_LINE = "first-line"  # eval.generative's default reading (see read_choice)

Function = Literal["regex", "multi_choice_regex", "remove_whitespace", "lowercase", "uppercase", "map",
                   "after_thinking", "take_first", "majority_vote"]
FUNCTIONS: tuple[str, ...] = Function.__args__  # type: ignore[attr-defined]
SELECTIONS = ("take_first", "majority_vote")  # from a question's samples to one answer: last in a pipeline


@dataclass(frozen=True)
class Step:
    """One filter, with lm-eval's argument names and defaults."""

    function: Function
    regex_pattern: str = r"#### (\-?[0-9\.\,]+)"
    group_select: int = 0
    fallback: str = FALLBACK
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()
    mapping_dict: tuple[tuple[str, str], ...] = ()  # `map`: pairs, so the step stays hashable
    default_value: str | None = None
    delimiter: str = THINK_END  # `after_thinking`


# Named pipelines. `{letters}` is replaced by the question's choice letters (ABCD, ABCDE, ...), `{lower}`
# by the same in lower case ("answer: b" is B after the word answer; alone, "a" is an article).
PRESETS: dict[str, tuple[Step, ...]] = {
    # The last "answer is (B)" / "Answer: B" in the text: a reasoning model's final word.
    "last-answer": (Step("after_thinking"),
                    Step("regex", regex_pattern=r"[Aa]nswer(?: is)?\s*:?\s*\(?([{letters}{lower}])\)?", group_select=-1),
                    Step("take_first")),
    # MMLU-Pro's "custom-extract" (lm_eval/tasks/mmlu_pro): the first "answer is (X)".
    "answer-is": (Step("regex", regex_pattern=r"answer is \(?([{letters}])\)?"), Step("take_first")),
    # GPQA's "flexible-extract": the last "(X)", else a choice's text, else ": X".
    "flexible": (Step("multi_choice_regex", regex_pattern=r"(\([A-Z]\))", group_select=-1, ignore_case=True,
                      ignore_punctuation=True), Step("take_first")),
}


class ExtractError(ValueError):
    """A pipeline that cannot run: an unknown preset, a selection step before the end."""


def pipeline(name_or_steps: str | Sequence[Step], letters: Sequence[str] = "ABCD") -> tuple[Step, ...]:
    """A preset by name (its `{letters}` filled in) or the steps given, checked."""
    if isinstance(name_or_steps, str):
        if name_or_steps not in PRESETS:
            raise ExtractError(f"extract: unknown pipeline {name_or_steps!r}; one of {', '.join(PRESETS)}")
        cls = "".join(str(x) for x in letters if len(str(x)) == 1) or "A-Z"
        return tuple(_fill(s, cls) for s in PRESETS[name_or_steps])
    steps = tuple(name_or_steps)
    for i, s in enumerate(steps):
        if s.function not in FUNCTIONS:
            raise ExtractError(f"extract[{i}].function: unknown {s.function!r}; one of {', '.join(FUNCTIONS)}")
        if s.function in SELECTIONS and i != len(steps) - 1:
            raise ExtractError(f"extract[{i}]: {s.function} chooses among samples and must be the last step")
    return steps


def _fill(step: Step, letters: str) -> Step:
    if "{letters}" not in step.regex_pattern:
        return step
    lower = letters.lower() if letters != "A-Z" else "a-z"
    return Step(**{**step.__dict__, "regex_pattern": step.regex_pattern.replace("{letters}", letters)
                   .replace("{lower}", lower)})


def apply(steps: Sequence[Step], samples: Sequence[str], choices: Sequence[str] = ()) -> list[str]:
    """The pipeline over one question's samples: one string per sample, or one after a selection.

    `choices` are the question's choice texts (what lm-eval's `doc["choices"]` holds), read by
    `multi_choice_regex` only.
    """
    out = list(samples)
    for s in steps:
        if s.function == "take_first":
            out = out[:1]
        elif s.function == "majority_vote":
            out = [Counter(out).most_common(1)[0][0]] if out else []  # first seen wins a tie, as lm-eval's
        else:
            out = [_one(s, text, tuple(choices)) for text in out]
    return out


def _one(s: Step, text: str, choices: tuple[str, ...]) -> str:
    if s.function == "regex":
        return _regex(_compiled(s.regex_pattern), text, s.group_select, s.fallback)
    if s.function == "multi_choice_regex":
        return _multi_choice(s, text, choices)
    if s.function == "remove_whitespace":
        return text.strip()
    if s.function == "lowercase":
        return text.lower()
    if s.function == "uppercase":
        return text.upper()
    if s.function == "map":
        value = dict(s.mapping_dict).get(text, s.default_value)
        return FALLBACK if value is None else value  # lm-eval gives None; a string keeps the type
    if s.function == "after_thinking":
        return text.rsplit(s.delimiter, 1)[-1]
    raise ExtractError(f"extract: unknown function {s.function!r}")


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _matched(regex: re.Pattern[str], text: str, group_select: int) -> str | None:
    """lm-eval's reading of `findall`: the selected match; of a tuple of groups, the first non-empty;
    stripped. None when nothing matched (or every group of the selected match was empty)."""
    found = regex.findall(text)
    if not found:
        return None
    match = found[group_select]
    if isinstance(match, tuple):
        non_empty = [m for m in match if m]
        if not non_empty:
            return None
        match = non_empty[0]
    return str(match).strip()


def _regex(regex: re.Pattern[str], text: str, group_select: int, fallback: str) -> str:
    match = _matched(regex, text, group_select)
    return fallback if match is None else match


# Every punctuation code point, as lm-eval builds it (once: it walks all of Unicode).
_PUNCT: dict[int, None] = {}


def _punct() -> dict[int, None]:
    if not _PUNCT:
        _PUNCT.update(dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")))
    return _PUNCT


def _ignored(s: Step, text: str) -> str:
    for pattern in s.regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if s.ignore_case:
        text = text.lower()
    return text.translate(_punct()) if s.ignore_punctuation else text


def _multi_choice(s: Step, text: str, choices: tuple[str, ...]) -> str:
    """The step's regex; else a choice's own text, as "(A)"; else ": A" written after a colon, as "(A)"."""
    match = _matched(_compiled(s.regex_pattern), text, s.group_select)
    if match:
        return match
    to_alpha = {_ignored(s, c.strip()): f"({chr(ord('A') + i)})" for i, c in enumerate(choices)}
    # Longest first, so a choice whose text starts another's cannot shadow it (as lm-eval sorts).
    texts = sorted((re.escape(_ignored(s, c.strip())) for c in choices), key=len, reverse=True)
    match = _matched(re.compile("|".join(texts)), _ignored(s, text), s.group_select)
    if match:
        return to_alpha.get(match, match)
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    match = _matched(re.compile(rf":[\s]*({'|'.join(letters)})"), text, s.group_select)
    if match:
        return f"({match})"
    return s.fallback


def to_choice(value: str, labels: Sequence[str]) -> str | None:
    """The extracted string read as one of the labels ("(B)", "b", " B " are B; "Yes" is yes), or
    None: the extraction failed."""
    bare = value.strip().strip("()").strip()
    for label in labels:
        if bare == label or (len(label) > 1 and bare.lower() == label.lower()):
            return label
    if len(bare) == 1 and bare.upper() in labels:
        return bare.upper()
    return None


def extract_choice(text: str, letters: Sequence[str], how: str | Sequence[Step] = "last-answer",
                   choices: Sequence[str] = ()) -> str | None:
    """The choice one generated text names (one of `letters`), or None when none can be read.

    `how` is a preset name or a list of steps; `choices` are the choice texts, for
    `multi_choice_regex`. For labels that are words (yes/no/maybe) the default reads the last
    "answer is <word>" and then the first label word in the text.
    """
    labels = [str(x) for x in letters]
    if how == "last-answer" and any(len(x) > 1 for x in labels):
        return _word_choice(text, labels)
    steps = pipeline(how, labels)
    picked = apply(steps, [text], choices)
    return to_choice(picked[0], labels) if picked else None


def _word_choice(text: str, labels: Sequence[str]) -> str | None:
    words = "|".join(re.escape(x) for x in labels)
    body = text.rsplit(THINK_END, 1)[-1]
    stated = re.findall(rf"answer(?: is)?\s*:?\s*\(?({words})\b", body, flags=re.IGNORECASE)
    if stated:
        return to_choice(stated[-1], labels)
    match = re.search(rf"(?<![A-Za-z])({words})(?![A-Za-z])", body, flags=re.IGNORECASE)
    return to_choice(match.group(1), labels) if match else None


def read_choice(text: str, labels: Sequence[str], how: str | Sequence[Step] = FIRST_LINE,
                think_end: str = THINK_END, choices: Sequence[str] = ()) -> str | None:
    """The label one generated text names, or None when none can be read, as eval.generative reads it.

    `how`: the spec's filters (eval.generative.filters, one sample: a selection step has nothing to
    choose among), a preset name (eval.generative.extract), or "first-line", the default: the first
    non-empty line after the last `think_end`, read by runner.scoring.benchmarks.extract_choice (the
    loglik-era reading, which a tiny model's "B. imatinib\nQuestion: ..." needs).
    """
    labels = [str(x) for x in labels]
    if not isinstance(how, str):
        picked = apply([s for s in how if s.function not in SELECTIONS], [text], choices)
        return to_choice(picked[0], labels)
    if how != FIRST_LINE:
        return extract_choice(text, labels, how, choices)
    tail = text.rsplit(think_end, 1)[-1]
    line = next((x for x in tail.splitlines() if x.strip()), "")
    picked_index = first_line_choice(line, tuple(labels))
    return None if picked_index is None else labels[picked_index]


def reading_think_end(spec: Spec, template: str | None) -> str:
    """The delimiter `read_choice` reads after, for eval.generative and GRPO's answer_correct alike:
    `eval.generative.think_end` as written; left at its default, the one training closed the traces with:
    the chat template's `</think>` where it takes the trace as `reasoning_content` (`template`: the
    tokenizer's, runner.rows.templates.template_of), else `data.reasoning.think_end`."""
    written = spec.eval.generative.think_end
    if written != Generative().think_end:
        return written
    return trained_think_end(template if spec.data.template == "chat" else None, spec.data.reasoning.think_end)


def option_texts(prompt: str, labels: Sequence[str]) -> tuple[str, ...]:
    """The choices' own texts (what lm-eval's `doc["choices"]` holds, for `multi_choice_regex`): the
    prompt's "A. text" lines (formats.to_question renders them), a label standing for a missing line."""
    found = dict(re.findall(r"^([A-Z])\. (.*)$", prompt, flags=re.MULTILINE))
    return tuple(found.get(c, c) for c in labels)


def steps_from(config: Sequence[Mapping[str, object]]) -> tuple[Step, ...]:
    """Steps from lm-eval-shaped dicts ({"function": "regex", "regex_pattern": ..., ...})."""
    out = []
    for i, raw in enumerate(config):
        args = dict(raw)
        if "mapping_dict" in args and isinstance(args["mapping_dict"], Mapping):
            args["mapping_dict"] = tuple((str(k), str(v)) for k, v in args["mapping_dict"].items())
        if "regexes_to_ignore" in args and args["regexes_to_ignore"] is not None:
            args["regexes_to_ignore"] = tuple(args["regexes_to_ignore"])  # type: ignore[arg-type]
        known = set(Step.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ExtractError(f"extract[{i}]: unknown argument {unknown[0]!r}; known: {', '.join(sorted(known))}")
        out.append(Step(**args))  # type: ignore[arg-type]
    return pipeline(out)


__all__ = ["FALLBACK", "FIRST_LINE", "PRESETS", "ExtractError", "Step", "apply", "extract_choice", "option_texts",
           "pipeline", "read_choice", "reading_think_end", "steps_from", "to_choice"]
