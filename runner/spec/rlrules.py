"""Cross-field rules of reinforcement training and chaining (`train.method: grpo`, `train.grpo`,
`train.init_adapter`): each problem a (path, message) pair, as in runner.spec.rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The built-in rewards (runner.scoring.rewards builds them): named here, below the spec, which checks them.
BUILT_IN = ("answer_correct", "format", "length_penalty")

Problems = list[tuple[tuple[Any, ...], str]]


def rl_problems(doc: dict[str, Any], base_dir: Path) -> Problems:
    train = doc["train"]
    found = _init_problems(train["init_adapter"], base_dir)
    if train["method"] == "grpo":
        found += _grpo_problems(doc, base_dir)
    return found


def _init_problems(init: dict[str, Any] | None, base_dir: Path) -> Problems:
    if init is None:
        return []
    where = ("train", "init_adapter")
    if (init["spec"] is None) == (init["path"] is None):
        return [(where, "give one of spec (a spec file whose adapter to start from) or path (an adapter folder)")]
    if init["spec"] is not None and not (base_dir / init["spec"]).is_file():
        return [((*where, "spec"), f"no spec file {init['spec']} (relative to this spec's folder)")]
    if init["path"] is not None and not (base_dir / init["path"] / "adapter_config.json").is_file():
        return [((*where, "path"), f"no PEFT adapter in {init['path']} (adapter_config.json is missing)")]
    return []


def _grpo_problems(doc: dict[str, Any], base_dir: Path) -> Problems:
    grpo, train, data = doc["train"]["grpo"], doc["train"], doc["data"]
    found: Problems = []
    formats = {src.get("format") or data["format"] for src in _sources(data["train"])}
    if not formats <= {"multiple_choice", "qa"}:
        found.append((("data", "format"), "GRPO needs prompts with a checkable answer: a multiple_choice or qa "
                      f"source, got {', '.join(sorted(formats))}"))
    if train["batch_size"] % grpo["num_generations"]:
        found.append((("train", "grpo", "num_generations"), f"must divide train.batch_size ({train['batch_size']}): "
                      "each batch holds whole groups of completions"))
    for i, reward in enumerate(grpo["rewards"]):
        where = ("train", "grpo", "rewards", i)
        if reward["path"] is None and reward["name"] not in BUILT_IN:
            found.append(((*where, "name"), f"unknown reward {reward['name']!r}: use one of {', '.join(BUILT_IN)}, "
                          "or give `path` to a local file defining it"))
        elif reward["path"] is not None and not grpo["trust_reward_code"]:
            found.append(((*where, "path"), "runs code from a file: set train.grpo.trust_reward_code: true to allow it"))
        elif reward["path"] is not None and not (base_dir / reward["path"]).is_file():
            found.append(((*where, "path"), f"no file {reward['path']} (relative to this spec's folder)"))
    return found


def _sources(train: Any) -> list[dict[str, Any]]:
    return list(train) if isinstance(train, list) else [train]
