"""A fine-tuning job from OpenAI's own fields, when no `spec` is given: `model` names a served base or
adapter, whose run's resolved spec gives the `model:` section and every other section's defaults;
`training_file` / `validation_file` are ids from POST /v1/files (OpenAI's `{"messages": [...]}` rows,
so `data.format: chat` with `template: chat`); `hyperparameters` (or `method.supervised.hyperparameters`)
set `train`, and "auto" keeps the base spec's value; `suffix` names the adapter `<model>-<suffix>`; `seed` is `seed`.

An adapter id trains a new adapter on that adapter's base, with that adapter's run's settings: the
runner has no stage that continues from an exported adapter."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from runner.serve.models import Entry
from runner.spec import Spec

FILE_ID = re.compile(r"^file-[0-9a-f]{1,64}$")
# OpenAI's hyperparameter -> (the spec's train key, what it must be)
NUMBERS = {"n_epochs": ("epochs", "a number above 0"), "batch_size": ("batch_size", "an integer of at least 1")}


def stored_file(store: Path, file_id: str) -> Path | None:
    """The upload `file_id` names (files are stored by content: the id is the start of its SHA-256)."""
    if not FILE_ID.match(file_id):
        return None
    found = sorted((store / "files").glob(f"{file_id[5:]}*.jsonl"))
    return found[0].resolve() if found else None


def plain_spec(typed: Spec) -> dict[str, Any]:
    """A resolved spec as JSON-shaped data (lists, not tuples), its relative paths made absolute so
    the job's spec file, kept elsewhere, still finds them."""
    from runner.sweep import absolute_paths

    spec: dict[str, Any] = absolute_paths(json.loads(json.dumps(typed.as_dict())), Path(typed.base_dir))
    return spec


def hyperparameters(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters given, from `hyperparameters` or `method.supervised.hyperparameters`."""
    method = fields.get("method")
    supervised = method.get("supervised") if isinstance(method, dict) else None
    nested = supervised.get("hyperparameters") if isinstance(supervised, dict) else None
    given = fields.get("hyperparameters") or nested or {}
    return dict(given) if isinstance(given, dict) else {}


def _train(train: dict[str, Any], given: Mapping[str, Any], problems: list[str]) -> None:
    for name, (key, want) in NUMBERS.items():
        value = given.get(name, "auto")
        if value == "auto" or value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        if ok and (key != "batch_size" or float(value).is_integer()):
            train[key] = int(value) if key == "batch_size" else value
        else:
            problems.append(f"hyperparameters.{name}: {value!r} is not {want} or \"auto\"")
    scale = given.get("learning_rate_multiplier", "auto")
    if scale != "auto" and scale is not None:
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
            train["learning_rate"] = train["learning_rate"] * scale
        else:
            problems.append(f"hyperparameters.learning_rate_multiplier: {scale!r} is not a number above 0 or \"auto\"")


def _source(path: Path) -> dict[str, Any]:
    return {"path": str(path), "hub": None, "config": None, "split": "train", "revision": None}


def mapped(fields: Mapping[str, Any], entry: Entry,
           file_path: Callable[[str], Path | None]) -> tuple[dict[str, Any], list[str]]:
    """The spec OpenAI's `fields` ask for on `entry`'s run's spec, and every problem with the fields."""
    spec, problems = plain_spec(entry.spec), []
    method = fields.get("method")
    if isinstance(method, dict) and method.get("type") not in (None, "supervised"):
        problems.append(f"method.type: {method.get('type')!r} is not supported; the runner trains `supervised`")
    data = spec["data"]
    # OpenAI's rows are whole chats (system turns, several turns): the chat template, and no prompt of the base's
    data.update(format="chat", template="chat", system_prompt=None, validation=None, max_rows=None)
    data["fields"]["messages"] = "messages"
    for name, key in (("training_file", "train"), ("validation_file", "validation")):
        file_id = fields.get(name)
        if file_id is None:
            if name == "training_file":
                problems.append("training_file: required (a file id from POST /v1/files), or give a `spec`")
            continue
        path = file_path(str(file_id))
        if path is None:
            problems.append(f"{name}: no file {file_id!r}; upload it with POST /v1/files first")
        else:
            data[key] = _source(path)
    _train(spec["train"], hyperparameters(fields), problems)
    suffix = fields.get("suffix")
    spec["name"] = f"{entry.id}-{suffix}" if suffix else f"{entry.id}-ft"
    if fields.get("seed") is not None:
        spec["seed"] = fields["seed"]
    return spec, problems


def spec_from_openai(fields: Mapping[str, Any], entry: Entry,
                     file_path: Callable[[str], Path | None]) -> dict[str, Any]:
    """As `mapped`, raising HTTPException 400 listing every problem with the fields."""
    spec, problems = mapped(fields, entry, file_path)
    if problems:
        raise HTTPException(400, "the job's fields are not valid: " + "; ".join(problems))
    return spec


def job_fields(fields: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the job record shows, as OpenAI's: the hyperparameters the run uses, its files and seed."""
    scale = hyperparameters(fields).get("learning_rate_multiplier", "auto")
    train = spec["train"]
    return {"validation_file": fields.get("validation_file"), "seed": spec["seed"],
            "hyperparameters": {"n_epochs": train["epochs"], "batch_size": train["batch_size"],
                                "learning_rate_multiplier": 1.0 if scale in ("auto", None) else scale}}
