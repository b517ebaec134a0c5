"""A fine-tuning job from OpenAI's own fields, when no `spec` is given: `model` names a served base or
adapter, whose run's resolved spec gives the `model:` section and every other section's defaults;
`training_file` / `validation_file` are ids from POST /v1/files: OpenAI's `{"messages": [...]}` rows
(`data.format: chat` with `template: chat`) or a raw `.md`/`.txt` document (`data.format: text`);
`hyperparameters` (or `method.supervised.hyperparameters`) set `train` and `lora` within the bounds of
HYPERPARAMETERS, and "auto" keeps the base spec's value; `evaluation` (our field) sets `eval` keys;
`suffix` names the adapter `<model>-<suffix>`; `seed` is `seed`.

LoRA's rank, alpha and dropout are hyperparameters here (`lora_r`, `lora_alpha`, `lora_dropout`, the
names Together's OpenAI-style API uses) because OpenAI's shape puts every training knob there; what
to evaluate is not training, so it is a separate `evaluation` object holding the spec's `eval` keys.

An adapter id trains a new adapter on that adapter's base, with that adapter's run's settings: the
runner has no stage that continues from an exported adapter."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from runner.serve.registry import Entry
from runner.serve.uploads import FILE_ID
from runner.spec.typed import Spec

# OpenAI's hyperparameter -> (spec section, key, integer?, lowest, highest, lowest allowed?): OpenAI's
# own bounds where it has them (n_epochs 1-50, batch_size up to 256); a LoRA rank past 256 no longer
# fits the memory the profiles plan for. One job slot: an unbounded n_epochs would hold it for years.
HYPERPARAMETERS: dict[str, tuple[str, str, bool, float, float, bool]] = {
    "n_epochs": ("train", "epochs", False, 0, 50, False),
    "batch_size": ("train", "batch_size", True, 1, 256, True),
    "learning_rate_multiplier": ("train", "learning_rate", False, 0, 10, False),
    "lora_r": ("lora", "r", True, 1, 256, True),
    "lora_alpha": ("lora", "alpha", False, 0, 1024, False),
    "lora_dropout": ("lora", "dropout", False, 0, 0.9, True),
}
# A file's kind (runner.serve.uploads.FileStore.kind) -> the data format its rows are read as
FORMATS = {"jsonl": "chat", "text": "text"}
CHAT_ROW = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'


def plain_spec(typed: Spec) -> dict[str, Any]:
    """A resolved spec as JSON-shaped data (lists, not tuples), its relative paths made absolute so
    the job's spec file, kept elsewhere, still finds them."""
    from runner.experiments.variants import absolute_paths

    spec: dict[str, Any] = absolute_paths(json.loads(json.dumps(typed.as_dict())), Path(typed.base_dir))
    return spec


def hyperparameters(fields: Mapping[str, Any]) -> Any:
    """The hyperparameters given, from `hyperparameters` or `method.supervised.hyperparameters`."""
    method = fields.get("method")
    supervised = method.get("supervised") if isinstance(method, dict) else None
    nested = supervised.get("hyperparameters") if isinstance(supervised, dict) else None
    given = fields.get("hyperparameters")
    return nested if given is None else given


def _bounded(name: str, value: Any) -> str | None:
    """Why `value` is not a valid `name`, or None."""
    _, _, integer, low, high, low_ok = HYPERPARAMETERS[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (integer and not float(value).is_integer()):
        return f"hyperparameters.{name}: {value!r} is not {'an integer' if integer else 'a number'} or \"auto\""
    if value < low or (value == low and not low_ok):
        return f"hyperparameters.{name}: {value!r} is below the minimum: it must be {'at least' if low_ok else 'above'} {low:g}"
    if value > high:
        return f"hyperparameters.{name}: {value!r} is above the maximum {high:g}"
    return None


def _train(spec: dict[str, Any], given: Any, problems: list[str]) -> None:
    if given is None:
        return
    if not isinstance(given, dict):
        problems.append(f"hyperparameters: {given!r} is not an object of hyperparameters")
        return
    for name, value in given.items():
        if name not in HYPERPARAMETERS:
            problems.append(f"hyperparameters.{name}: not a known hyperparameter; the known ones are "
                            + ", ".join(HYPERPARAMETERS))
            continue
        if value == "auto" or value is None:
            continue
        problem = _bounded(name, value)
        if problem:
            problems.append(problem)
            continue
        section, key, integer, *_ = HYPERPARAMETERS[name]
        scaled = spec[section][key] * value if name == "learning_rate_multiplier" else value
        spec[section][key] = int(scaled) if integer else scaled


def _evaluation(spec: dict[str, Any], given: Any, problems: list[str]) -> None:
    if given is None:
        return
    known = list(spec["eval"])
    if not isinstance(given, dict):
        problems.append(f"evaluation: {given!r} is not an object of `eval` keys ({', '.join(known)})")
        return
    for key, value in given.items():
        if key in known:
            spec["eval"][key] = value
        else:
            problems.append(f"evaluation.{key}: not an `eval` key; the known ones are {', '.join(known)}")


def _data(spec: dict[str, Any], fields: Mapping[str, Any], file_path: Callable[[str], tuple[Path, str] | None],
          problems: list[str]) -> None:
    data = spec["data"]
    data.update(system_prompt=None, validation=None, max_rows=None)
    formats = set()
    for name, key in (("training_file", "train"), ("validation_file", "validation")):
        file_id = fields.get(name)
        if file_id is None:
            if name == "training_file":
                problems.append("training_file: required (a file id from POST /v1/files), or give a `spec`")
            continue
        found = file_path(str(file_id))
        if found is None or found[1] not in FORMATS:
            what = "a job's result file, not training data" if found else "no such upload; upload it with POST /v1/files first"
            problems.append(f"{name}: {file_id!r} is {what}")
            continue
        formats.add(FORMATS[found[1]])
        data[key] = {"path": str(found[0]), "hub": None, "config": None, "split": "train", "revision": None}
    if len(formats) > 1:
        problems.append("validation_file: a document and chat rows cannot be mixed; give two files of one kind")
    # OpenAI's rows are whole chats (system turns, several turns): the chat template, no prompt of the base's
    data.update(format="text" if formats == {"text"} else "chat", template="chat")
    data["fields"]["messages"] = "messages"


def mapped(fields: Mapping[str, Any], entry: Entry,
           file_path: Callable[[str], tuple[Path, str] | None]) -> tuple[dict[str, Any], list[str]]:
    """The spec OpenAI's `fields` ask for on `entry`'s run's spec, and every problem with the fields.
    `file_path` gives an upload's stored path and kind (`jsonl`, `text`, `csv`) by its exact id."""
    spec, problems = plain_spec(entry.spec), []
    method = fields.get("method")
    if isinstance(method, dict) and method.get("type") not in (None, "supervised"):
        problems.append(f"method.type: {method.get('type')!r} is not supported; the runner trains `supervised`")
    _data(spec, fields, file_path, problems)
    _train(spec, hyperparameters(fields), problems)
    _evaluation(spec, fields.get("evaluation"), problems)
    suffix = fields.get("suffix")
    spec["name"] = f"{entry.id}-{suffix}" if suffix else f"{entry.id}-ft"
    if fields.get("seed") is not None:
        spec["seed"] = fields["seed"]
    return spec, problems


def spec_from_openai(fields: Mapping[str, Any], entry: Entry,
                     file_path: Callable[[str], tuple[Path, str] | None]) -> dict[str, Any]:
    """As `mapped`, raising HTTPException 400 listing every problem with the fields."""
    spec, problems = mapped(fields, entry, file_path)
    if problems:
        raise HTTPException(400, "the job's fields are not valid: " + "; ".join(problems))
    return spec


def in_fields(problem: str) -> str:
    """A problem `runner validate` found in the spec built from the fields, said in the fields' names:
    `train.batch_size: ...` is `hyperparameters.batch_size: ...`, `eval.x` is `evaluation.x`, and the
    built spec's line:column (a file the person never saw) is dropped."""
    problem = re.sub(r" \(spec:\d+:\d+\)$", "", problem)
    for name, (section, key, *_) in HYPERPARAMETERS.items():
        if problem.startswith(f"{section}.{key}:"):
            return f"hyperparameters.{name}" + problem[len(section) + len(key) + 1:]
    if problem.startswith("eval."):
        return "evaluation." + problem[5:]
    return f"{problem} (in the spec of `model`'s run these fields change)"


def job_fields(fields: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the job record shows, as OpenAI's: the hyperparameters the run uses, its files and seed."""
    given = hyperparameters(fields)
    scale = given.get("learning_rate_multiplier", "auto") if isinstance(given, dict) else "auto"
    return {"validation_file": fields.get("validation_file"), "seed": spec["seed"],
            "hyperparameters": shown_hyperparameters(spec) | {
                "learning_rate_multiplier": 1.0 if scale in ("auto", None) else scale}}


def shown_hyperparameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's training settings under OpenAI's names (and the learning rate itself)."""
    train, lora = spec["train"], spec["lora"]
    return {"n_epochs": train["epochs"], "batch_size": train["batch_size"], "learning_rate": train["learning_rate"],
            "lora_r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"]}


def row_problem(path: Path) -> str | None:
    """Why the chat rows in `path` cannot train (the first bad row, with the fields it has), or None:
    OpenAI's `validating_files`, said in the rows' terms rather than the spec's."""
    bad, first = 0, None
    with open(path, encoding="utf-8", errors="replace") as rows:
        for number, line in enumerate(rows, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            why = _chat_problem(row)
            if why:
                bad += 1
                first = first or f"line {number}: {why}"
    if first is None:
        return None
    return f"{bad} row(s) are not chat rows, first {first}; each row must be {CHAT_ROW}"


def _chat_problem(row: Any) -> str | None:
    """Why the data stage would drop `row` as a chat row (its own reader, so the two never disagree)."""
    from runner.rows.formats import Dropped, to_example
    from runner.spec.typed import Fields

    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("messages"), list) and not isinstance(row.get("conversations"), list):
        return "no `messages` list (the row's fields: " + (", ".join(map(str, row)) or "none") + ")"
    try:
        to_example(row, "chat", Fields())
    except Dropped as why:
        return str(why)
    return None


def file_ids_in(doc: Any, resolve: Callable[[str], Path | None], problems: list[str], at: tuple[Any, ...] = ()) -> Any:
    """`doc` (a spec as data) with every path field that names an upload by id (`path: file-...`)
    replaced by the upload's stored path; an id that names no upload is a problem."""
    from runner.spec.schema import field_schema

    if isinstance(doc, dict):
        return {k: file_ids_in(v, resolve, problems, (*at, k)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [file_ids_in(v, resolve, problems, (*at, i)) for i, v in enumerate(doc)]
    if isinstance(doc, str) and FILE_ID.match(doc) and at and at[-1] == "path":
        found = field_schema(at)[0]
        if found is not None and "relative to the spec" in found.get("description", ""):
            path = resolve(doc)
            if path is None:
                problems.append(f"{'.'.join(map(str, at))}: no upload {doc!r}; GET /v1/files lists them")
            return str(path) if path else doc
    return doc
