"""The train stage's outputs: summary.json (losses, parameters, time) and metrics.jsonl's rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.outputs.jsonio import JsonFile, integer, jsonl_objects, mapping, number, real, text

# metrics.jsonl's names of the methods' figures -> TrainRow's fields (GRPO's; then DPO, ORPO, KTO's, from TRL)
SIGNALS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "entropy": "entropy",
           "completions/mean_length": "completion_length", "completions/clipped_ratio": "clipped_ratio",
           "rewards/margins": "reward_margin", "rewards/accuracies": "preference_accuracy",
           "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
           "log_odds_ratio": "log_odds_ratio", "eval_rewards/margins": "eval_reward_margin",
           "eval_rewards/accuracies": "eval_preference_accuracy", "eval_log_odds_ratio": "eval_log_odds_ratio"}
REWARD_FIGURES = ("mean", "std", "share_correct", "share_unreadable")  # GRPO's rewards/<name>/<figure>


@dataclass(frozen=True)
class RewardStep:
    """One GRPO reward over a step's completions: mean and std, and for answer_correct the share right
    and the share without an answer letter (None where the reward does not say)."""

    mean: float | None = None
    std: float | None = None
    share_correct: float | None = None
    share_unreadable: float | None = None


@dataclass(frozen=True)
class TrainRow:
    """One row of the train stage's metrics.jsonl (a logging step or a validation), numbers only. The
    method's figures are None where the method (or the runner that wrote the row) logs none."""

    step: int | None
    loss: float | None
    eval_loss: float | None
    memory_mib: float | None
    tokens_seen: float | None
    epoch: float | None
    rewards: dict[str, RewardStep] = field(default_factory=dict)  # GRPO: reward name -> its figures
    reward: float | None = None  # GRPO: the weighted total, mean over the step's completions
    reward_std: float | None = None
    kl: float | None = None  # GRPO with beta > 0 (to the reference), KTO (its estimate)
    entropy: float | None = None  # GRPO: of the sampled tokens
    completion_length: float | None = None  # GRPO: mean tokens per completion
    clipped_ratio: float | None = None  # GRPO: share of completions cut at max_completion_length
    reward_margin: float | None = None  # DPO, ORPO, KTO: chosen minus rejected reward, the step's pairs
    preference_accuracy: float | None = None  # DPO, ORPO: share of the step's pairs whose chosen reward is higher
    reward_chosen: float | None = None
    reward_rejected: float | None = None
    log_odds_ratio: float | None = None  # ORPO
    eval_reward_margin: float | None = None  # the same on the held-out pairs (a validation row)
    eval_preference_accuracy: float | None = None
    eval_log_odds_ratio: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)  # the row as written

    @classmethod
    def of(cls, row: dict[str, Any], where: str = "TrainRow") -> TrainRow:
        figures = {ours: number(row, theirs, where, finite=False) for theirs, ours in SIGNALS.items()}
        return cls(integer(row, "step", where), number(row, "loss", where, finite=False),
                   number(row, "eval_loss", where, finite=False), number(row, "memory_mib", where, finite=False),
                   number(row, "num_input_tokens_seen", where, finite=False), number(row, "epoch", where, finite=False),
                   _rewards(row, where), **figures, raw=row)

    @classmethod
    def read(cls, path: Path) -> list[TrainRow]:
        return [cls.of(row, f"{path} line {number_}") for number_, row in jsonl_objects(path)]

    def line(self) -> str:
        """The row as the train stage's MetricsLog writes it (json.dumps, keys in the order logged)."""
        return json.dumps(self.raw) + "\n"

    @classmethod
    def write(cls, path: Path, rows: list[TrainRow]) -> None:
        path.write_text("".join(row.line() for row in rows), "utf-8")


def _rewards(row: dict[str, Any], where: str) -> dict[str, RewardStep]:
    """GRPO's rewards/<name>/<figure> keys, by name in the order logged."""
    names = dict.fromkeys(k.split("/")[1] for k in row if k.count("/") == 2 and k.startswith("rewards/")
                          and k.rsplit("/", 1)[1] in REWARD_FIGURES)
    return {name: RewardStep(*(number(row, f"rewards/{name}/{f}", where, finite=False) for f in REWARD_FIGURES))
            for name in names}


def reward_figure(name: str, figure: str) -> Callable[[TrainRow], float | None]:
    """A row's figure (one of REWARD_FIGURES) of GRPO's reward `name`, None in a row without it."""
    return lambda row: getattr(row.rewards[name], figure) if name in row.rewards else None


def quarter_means(rows: Sequence[TrainRow], figure: Callable[[TrainRow], float | None]) -> tuple[float, float] | None:
    """A figure's mean over the first and over the last quarter of the training steps (at least one
    step each; steps without it skipped): the rule of summary.json's GRPO `rewards`. None when no
    step has it."""
    steps = [r for r in rows if r.loss is not None]
    quarter = max(1, len(steps) // 4)
    first, last = ([v for r in part if (v := figure(r)) is not None] for part in (steps[:quarter], steps[-quarter:]))
    if not first or not last:
        return None
    return sum(first) / len(first), sum(last) / len(last)


def reward_quarters(rows: Sequence[TrainRow]) -> dict[str, dict[str, float | None]]:
    """summary.json's GRPO `rewards`: each reward figure logged (the weighted `reward`, every
    rewards/<name>/<figure>) over the first and the last quarter of the steps, by quarter_means'
    rule (the report's), to 4 digits."""
    names = sorted({k for r in rows for k in r.raw if k == "reward" or k.startswith("rewards/")})

    def figure(name: str) -> Callable[[TrainRow], float | None]:
        return lambda row: v if isinstance(v := row.raw.get(name), (int, float)) and not isinstance(v, bool) else None

    found = {name: quarter_means(rows, figure(name)) for name in names}
    return {name: {"first_quarter": round(q[0], 4) if q else None, "last_quarter": round(q[1], 4) if q else None}
            for name, q in found.items()}


@dataclass(frozen=True)
class BeforeAfter:
    """A figure before and after training: a mixture source's validation loss; a preference method's
    figure on the held-out pairs (the untrained adapter's, the trained one's)."""

    before: float | None
    after: float | None


@dataclass(frozen=True)
class EarlyStopping:
    reason: str
    best_step: int | None
    best_eval_loss: float | None


@dataclass(frozen=True)
class Quarters:
    """A GRPO figure's mean over the first and the last quarter of the steps."""

    first: float | None
    last: float | None


@dataclass(frozen=True)
class TrainSummary(JsonFile):
    """The train stage's summary.json (an absent one reads as all None: a run whose training is elsewhere)."""

    seconds: float | None = None
    trainable: int | None = None
    total: int | None = None
    steps: int | None = None
    train_rows: int | None = None
    validation_rows: int | None = None
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    by_source: dict[str, BeforeAfter] | None = None
    early_stopping: EarlyStopping | None = None
    method: str = "sft"  # written by the other methods only: an SFT summary is what it always was
    held_out: dict[str, BeforeAfter] = field(default_factory=dict)  # dpo, orpo, kto: preference_accuracy, reward_margin, ...
    rewards: dict[str, Quarters] = field(default_factory=dict)  # grpo: "reward", "rewards/<name>/mean", ...
    raw: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)  # TrainSummary(): no training
    VERSION = 4  # the train stage's version; summary.json's layout is that of version 1 with fields added
    STAGE = "train"
    REQUIRED = ("steps",)

    @classmethod
    def read(cls, path: Path) -> TrainSummary:
        return super().read(path) if path.exists() else cls()

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> TrainSummary:
        stop = mapping(data, "early_stopping", where)
        here = f"{where}: early_stopping"
        return cls(number(data, "seconds", where, finite=False), integer(data, "trainable_parameters", where),
                   integer(data, "total_parameters", where), integer(data, "steps", where),
                   integer(data, "train_rows", where), integer(data, "validation_rows", where),
                   real(data, "train_loss_first", where), real(data, "train_loss_last", where),
                   real(data, "eval_loss_before", where), real(data, "eval_loss_after", where),
                   _pairs(data, "eval_loss_by_source", where, BeforeAfter, ("before", "after")),
                   EarlyStopping(text(stop, "reason", here) or "", integer(stop, "best_step", here),
                                 real(stop, "best_eval_loss", here)) if stop else None,
                   text(data, "method", where) or "sft", _pairs(data, "held_out", where, BeforeAfter, ("before", "after")),
                   _pairs(data, "rewards", where, Quarters, ("first_quarter", "last_quarter")), raw=data)


def _pairs(data: dict[str, Any], key: str, where: str, kind: Any, names: tuple[str, str]) -> Any:
    """data[key] = {name: {names[0]: x, names[1]: y}} as {name: kind(x, y)}."""
    found = mapping(data, key, where)
    return {name: kind(*(real(mapping(found, name, f"{where}: {key}"), n, f"{where}: {key}.{name}") for n in names))
            for name in found}

