"""Verifiable rewards for GRPO: named functions of (prompt, completion, key), in the form TRL's
GRPOTrainer calls them (`prompts`, `completions`, `completion_ids`, and each dataset column as a list).

Light (no torch): the unit tests run every reward on hand cases. The answer is read off a completion
by `read_answer`, the one place that decides what a completion answered: the eval stage's reading
today (runner.scoring.benchmarks.extract_choice on the first line), so what GRPO rewards is what
eval counts; swap that one function for the named filters when they land.
"""

from __future__ import annotations

import importlib.util
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runner.scoring.benchmarks import extract_choice
from runner.spec.rlrules import BUILT_IN

RewardFn = Callable[..., list[float]]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# <think>, some reasoning, </think>, then a line that answers: what a reasoning model's completion looks like.
FORMAT = re.compile(rf"^\s*{THINK_OPEN}(?P<thought>.*?\S.*?){THINK_CLOSE}\s*\n?(?P<answer>[^\n]*\S[^\n]*)", re.DOTALL)

LETTER = "letter"  # a multiple_choice key: the answer's letter
TEXT = "text"  # a qa key: the answer's words


def answer_line(completion: str) -> str:
    """What a completion answers with: after its reasoning (the last </think>), the first non-empty line
    (the eval stage reads the first line too: a tiny model rambles on to the next question)."""
    tail = completion.rsplit(THINK_CLOSE, 1)[-1]
    return next((line for line in tail.splitlines() if line.strip()), "")


def read_answer(completion: str, choices: int) -> int | None:
    """The index of the choice (of `choices` lettered A, B, ...) a completion names, or None when it
    names none that can be read. The one extraction function of the rewards (see the module's note)."""
    return extract_choice(answer_line(completion), tuple(string.ascii_uppercase[:choices]))


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_correct(completion: str, key: str, kind: str, choices: int) -> bool | None:
    """True or False, or None when no answer can be read off the completion."""
    if kind == LETTER:
        picked = read_answer(completion, choices)
        return None if picked is None else string.ascii_uppercase[picked] == key
    said = _words(answer_line(completion))
    # A free-text answer is right when the key's words stand, in order, in its answer line.
    return None if not said else f" {_words(key)} " in f" {said} "


def answer_correct(completions: Sequence[Any], answer: Sequence[str], kind: Sequence[str],
                   choices: Sequence[int], log_metric: Callable[[str, float], None] | None = None,
                   **_: Any) -> list[float]:
    """1 when the answer read off the completion is the key, else 0 (an unreadable answer is wrong).
    Logs the share of answers that could not be read (`log_metric`, TRL's hook for reward metrics)."""
    found = [is_correct(_text(c), a, k, n) for c, a, k, n in zip(completions, answer, kind, choices)]
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


def built_in(name: str, max_tokens: int) -> RewardFn:
    """A built-in reward by its spec name, named so TRL logs it as rewards/<name>/mean and /std."""
    if name not in BUILT_IN:
        raise ValueError(f"unknown reward {name!r}")
    fn: RewardFn = {"answer_correct": answer_correct, "format": format_reward}.get(name) or length_penalty(max_tokens)

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
