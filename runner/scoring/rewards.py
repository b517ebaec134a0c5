"""Verifiable rewards for GRPO: named functions of (prompt, completion, key), in the form TRL's
GRPOTrainer calls them (`prompts`, `completions`, `completion_ids`, and each dataset column as a list).

Light (no torch): the unit tests run every reward on hand cases. The answer letter is read off a
completion by runner.scoring.extract.read_choice, the function eval.generative scores with, under the
spec's own eval.generative reading (`extract`, `filters`, `think_end`; by default the first line after
the thinking): what GRPO rewards is what eval counts, and changing how eval reads changes both.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.scoring.extract import FIRST_LINE, THINK_END, Step, option_texts, read_choice, reading_think_end, steps_from
from runner.spec.rlrules import BUILT_IN
from runner.spec.typed import Generative, Spec

RewardFn = Callable[..., list[float]]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# <think>, some reasoning, </think>, then a line that answers: what a reasoning model's completion looks like.
FORMAT = re.compile(rf"^\s*{THINK_OPEN}(?P<thought>.*?\S.*?){THINK_CLOSE}\s*\n?(?P<answer>[^\n]*\S[^\n]*)", re.DOTALL)

LETTER = "letter"  # a multiple_choice key: the answer's letter
TEXT = "text"  # a qa key: the answer's words


@dataclass(frozen=True)
class Reading:
    """How an answer is read off a completion: eval.generative's `filters` (as steps) or `extract`, and
    its `think_end`. The default is eval.generative's default."""

    how: str | tuple[Step, ...] = FIRST_LINE
    think_end: str = THINK_END


def reading_of(spec: Spec, template: str | None = None) -> Reading:
    """The reading eval.generative scores with (extract.read_choice's arguments, as eval's sampling passes
    them); `template`: the tokenizer's chat template, which may decide the thinking delimiter."""
    gen = spec.eval.generative
    steps = steps_from([{k: v for k, v in vars(f).items() if v is not None} for f in gen.filters])
    return Reading(steps or gen.extract, reading_think_end(spec, template))


def reading_slice(spec: Spec) -> dict[str, Any]:
    """What GRPO's train key holds of the reading: eval.generative's extract and filters set away from
    their defaults, and the thinking delimiter when not `</think>` (a template's own comes in with the
    model's digest), when a built-in answer_correct reads with them; {} otherwise (keys stay)."""
    if not any(r.name == "answer_correct" and r.path is None for r in spec.train.grpo.rewards):
        return {}
    gen, out = spec.eval.generative, dict[str, Any]()
    if gen.extract != Generative().extract:
        out["extract"] = gen.extract
    if gen.filters:
        out["filters"] = [asdict(f) for f in gen.filters]
    if reading_think_end(spec, None) != THINK_END:
        out["think_end"] = reading_think_end(spec, None)
    return out


def answer_line(completion: str, think_end: str = THINK_END) -> str:
    """What a completion answers with: after its reasoning (the last `think_end`), the first non-empty line
    (the eval stage reads the first line too: a tiny model rambles on to the next question)."""
    tail = completion.rsplit(think_end, 1)[-1]
    return next((line for line in tail.splitlines() if line.strip()), "")


def read_answer(completion: str, choices: int, reading: Reading = Reading(), prompt: str = "") -> int | None:
    """The index of the choice (of `choices` lettered A, B, ...) a completion names, or None when it
    names none that can be read: extract.read_choice, with the option texts of the prompt (for a
    `multi_choice_regex` filter; none without a prompt: a bare letter as a choice's text matches any word)."""
    letters = string.ascii_uppercase[:choices]
    texts = option_texts(prompt, letters) if prompt else ()
    picked = read_choice(completion, letters, reading.how, reading.think_end, texts)
    return None if picked is None else letters.index(picked)


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_correct(completion: str, key: str, kind: str, choices: int, reading: Reading = Reading(),
               prompt: str = "") -> bool | None:
    """True or False, or None when no answer can be read off the completion."""
    if kind == LETTER:
        picked = read_answer(completion, choices, reading, prompt)
        return None if picked is None else string.ascii_uppercase[picked] == key
    said = _words(answer_line(completion, reading.think_end))
    # A free-text answer is right when the key's words stand, in order, in its answer line.
    return None if not said else f" {_words(key)} " in f" {said} "


def answer_correct(completions: Sequence[Any], answer: Sequence[str], kind: Sequence[str],
                   choices: Sequence[int], log_metric: Callable[[str, float], None] | None = None,
                   prompts: Sequence[Any] | None = None, reading: Reading = Reading(), **_: Any) -> list[float]:
    """1 when the answer read off the completion is the key, else 0 (an unreadable answer is wrong).
    Logs the share of answers that could not be read (`log_metric`, TRL's hook for reward metrics)."""
    texts = [_text(p) for p in prompts] if prompts is not None else [""] * len(completions)
    found = [is_correct(_text(c), a, k, n, reading, p)
             for c, a, k, n, p in zip(completions, answer, kind, choices, texts)]
    if log_metric is not None and found:
        log_metric("rewards/answer_correct/share_correct", sum(f is True for f in found) / len(found))
        log_metric("rewards/answer_correct/share_unreadable", sum(f is None for f in found) / len(found))
    return [1.0 if f else 0.0 for f in found]


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """1 when the completion is <think>reasoning</think> followed by an answer line, else 0."""
    return [1.0 if FORMAT.match(_text(c)) else 0.0 for c in completions]


def length_penalty(max_tokens: int) -> RewardFn:
    """Minus the share of the completion budget used (0 for an empty completion, -1 at the limit)."""
    def penalty(completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None,
                **_: Any) -> list[float]:
        if completion_ids is None:  # a caller without token ids: words stand in for tokens
            return [-min(1.0, len(_text(c).split()) / max_tokens) for c in completions]
        return [-min(1.0, len(ids) / max_tokens) for ids in completion_ids]
    return penalty


def _text(completion: Any) -> str:
    """A completion as text: TRL passes a string for a text prompt, a list of messages for a chat one."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def built_in(name: str, max_tokens: int, reading: Reading = Reading()) -> RewardFn:
    """A built-in reward by its spec name, named so TRL logs it as rewards/<name>/mean and /std;
    answer_correct reads answers by `reading`."""
    if name not in BUILT_IN:
        raise ValueError(f"unknown reward {name!r}")
    fixed: dict[str, RewardFn] = {"answer_correct": functools.partial(answer_correct, reading=reading),
                                  "format": format_reward}
    fn = fixed.get(name) or length_penalty(max_tokens)

    def named(*args: Any, **kwargs: Any) -> list[float]:
        return fn(*args, **kwargs)
    named.__name__ = name
    return named


def from_file(path: Path, name: str) -> RewardFn:
    """A user's reward: the function `name` of the local file `path` (the spec opted in; its digest is in the key)."""
    from runner.core.errors import SpecError

    module_spec = importlib.util.spec_from_file_location(f"runner_reward_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError([f"train.grpo.rewards: cannot load {path} as Python"])
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpecError([f"train.grpo.rewards: {path} defines no function {name!r}"])

    def named(*args: Any, **kwargs: Any) -> list[float]:
        return [float(r) for r in fn(*args, **kwargs)]
    named.__name__ = name
    return named


def reward_functions(spec: Spec, template: str | None = None) -> tuple[list[RewardFn], list[float]]:
    """The spec's rewards (built-in, or from a local file the spec opted into) and their weights;
    `template`: the tokenizer's chat template (see reading_of)."""
    g, reading = spec.train.grpo, reading_of(spec, template)
    funcs = []
    for r in g.rewards:
        if r.path is None:
            funcs.append(built_in(r.name, g.max_completion_length, reading))
        elif not g.trust_reward_code:  # the schema rule says so too; a spec built in code skips it
            from runner.core.errors import SpecError

            raise SpecError([f"train.grpo.rewards: {r.path} is code: set train.grpo.trust_reward_code: true"])
        else:
            funcs.append(from_file(spec.resolve(r.path), r.name))
    return funcs, [r.weight for r in g.rewards]
