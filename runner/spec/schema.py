"""The spec's JSON Schema: loading it, validating against it with positions, and filling defaults.

One schema file is the single source of validation, defaults and field documentation. It lives in
the package (so `pip install` finds it); `schemas/spec.schema.json` at the repository root links to it.
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from runner.spec.yamlpos import Positions, clip, format_path


def _is_integer(checker: Any, instance: Any) -> bool:
    # jsonschema's "integer" takes 42.0 (JSON has one number type); a spec's `seed: 42.0` would then
    # reach stage code as a float and key differently from `seed: 42`. An integer is written as one.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    text = resources.files("runner").joinpath("schemas/spec.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(doc: Any, positions: Positions, source: str) -> list[str]:
    """Every schema violation in `doc`, each as one line `path: message (source:line:col)`."""
    validator = _Validator(load_schema())
    errors = list(validator.iter_errors(doc))
    # A value of the wrong type also fails the path's enum or range: the type error says it all,
    # and one wrong value must read as one line.
    typed_wrong = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems: list[tuple[tuple[Any, ...], str]] = []
    for error in errors:
        if error.validator != "type" and tuple(error.absolute_path) in typed_wrong:
            continue
        problems.extend(_describe(error))
    lines = []
    for path, message in sorted(problems, key=lambda p: (positions.locate(p[0]), p[1])):
        lines.append(f"{format_path(path)}: {message} ({source}:{positions.where(path)})")
    return lines


def _describe(error: jsonschema.ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in known]
        return [(path + (key,), _unknown_key(key, known)) for key in extra]
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return [(path + (missing,), "required, but missing")]
    if error.validator == "type":
        return [(path, f"must be {_type_words(error.validator_value)}, got {_show(error.instance)}")]
    if error.validator == "enum":
        choices = ", ".join(json.dumps(v) for v in error.validator_value)
        return [(path, f"must be one of {choices}, got {_show(error.instance)}")]
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return [(path, f"must be {sign[str(error.validator)]} {error.validator_value}, got {_show(error.instance)}")]
    if error.validator == "pattern":  # the pattern as written for people: its guard against a final newline left out
        allowed = str(error.validator_value).replace("(?!\\n)", "")
        if path and path[-1] in ("hub", "id"):  # a Hub id, where a local path would read outside what a server allows
            return [(path, f"must be a Hub id such as owner/name, got {_show(error.instance)}; a local file or folder "
                           "goes in `path`")]
        return [(path, f"must match {allowed} (letters, digits, '_', '.' and '-'), got {_show(error.instance)}")]
    if error.validator == "oneOf":
        return [(path, f"{_show(error.instance)} is not valid here: {error.schema.get('description', '')}")]
    return [(path, clip(" ".join(error.message.split()), 200))]  # jsonschema echoes the whole value


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
    return f"unknown key; {hint}"


def _type_words(types: str | list[str]) -> str:
    names = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
             "object": "a mapping", "array": "a list", "null": "null"}
    listed = [types] if isinstance(types, str) else types
    return " or ".join(names.get(t, t) for t in listed)


def _show(value: Any) -> str:
    """`string "abc"`, `integer 3`, `list`: a long string is cut, and says how long it was."""
    kind = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "mapping"}
    if isinstance(value, (dict, list)):
        return kind[type(value)]
    text = clip(json.dumps(value))
    if isinstance(value, str) and len(value) > 60:
        text += f" ({len(value)} characters)"
    return f"{kind.get(type(value), type(value).__name__)} {text}"


def with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a valid `doc` with every schema default filled in, recursively."""
    filled: dict[str, Any] = _fill(copy.deepcopy(doc), load_schema())
    return filled


def _fill(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill(value[key], sub)
    elif isinstance(value, list) and "items" in schema:
        return [_fill(item, schema["items"]) for item in value]
    return value


def field_schema(path: tuple[Any, ...]) -> tuple[dict[str, Any] | None, int, list[str]]:
    """The schema of the field at `path` (a list index is an int), or None with the index of the first
    part that names no field and the names known there."""
    node = load_schema()
    for depth, part in enumerate(path):
        branches = [node, *node.get("oneOf", [])]
        key = "items" if isinstance(part, int) else "properties"
        holder = next((b for b in branches if key in b), None)
        if holder is None or (not isinstance(part, int) and part not in holder["properties"]):
            return None, depth, sorted(holder["properties"]) if holder is not None and key == "properties" else []
        node = holder["items"] if isinstance(part, int) else holder["properties"][part]
    return node, len(path), []


def value_problems(path: tuple[Any, ...], value: Any) -> list[str]:
    """What is wrong with `value` as the field at `path` (an existing path), each as a short phrase."""
    found = field_schema(path)[0]
    if found is None:
        return ["no such spec field"]
    errors = sorted(_Validator(found).iter_errors(value), key=lambda e: e.validator != "type")  # the type says most
    return [message for error in errors for _, message in _describe(error)]
