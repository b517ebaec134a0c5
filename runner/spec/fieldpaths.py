"""Spec fields named on the command line: a dotted path (`eval.benchmarks.0.limit`) checked against
the schema, a value read as the spec's YAML reads it and checked by the schema, and a spec document
with fields set as if its YAML said them. Shared by `runner sweep --set` (a grid of values) and
`runner run/plan/validate --set` (one value each). Light: no torch.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from typing import Any

import yaml

from runner.core.errors import SpecError
from runner.spec.schema import field_schema, value_problems
from runner.spec.yamlpos import YamlShapeError, clip, read_yaml

Path_ = tuple[str | int, ...]  # ("lora", "r"), ("eval", "benchmarks", 0, "limit")


def dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def parse_override(text: str) -> tuple[Path_, Any]:
    """`train.epochs=1` (one value: `runner run/plan/validate --set`) -> (path, value), typed and checked
    by the same rules as a sweep's `--set`; a wrong field or value is one line naming it."""
    where, sep, raw = text.partition("=")
    if not sep or not where.strip() or not raw.strip():
        raise SpecError([f"--set {clip(text, 60)}: write PATH=VALUE, e.g. --set train.epochs=1"])
    path = parse_path(where.strip(), f"--set {where.strip()}", named=True)
    what = f"--set {dotted(path)}={clip(raw.strip(), 40)}"
    value = read_value(raw.strip(), what)
    try:
        check_value(path, value, what)
    except SpecError as exc:
        if len(split_values(raw)) > 1 and not isinstance(value, list):  # a sweep's grid written on run
            raise SpecError([f"{exc.problems[0]}; one value per --set (a grid of values is `runner sweep --set`)"]) from None
        raise
    return path, value


def parse_path(text: str, what: str, named: bool = False) -> Path_:
    """`eval.benchmarks.0.limit` -> ('eval', 'benchmarks', 0, 'limit'), checked against the schema.
    `named`: `name` and `description` may be set (a run's, not a sweep's variants, which it names)."""
    # ASCII digits only: str.isdigit() accepts '²', which int() refuses; a 10-digit index is no list's
    parts: list[str | int] = [int(p) if p.isascii() and p.isdecimal() and len(p) < 10 else p for p in text.split(".")]
    if any(p == "" for p in parts):
        raise SpecError([f"{what}: not a dotted field path such as lora.r"])
    path = tuple(parts)
    if path[0] in ("name", "description") and not named:
        raise SpecError([f"{what}: variants are named by the sweep; set a field that changes a result"])
    found, depth, choices = field_schema(path)
    if found is None:
        close = difflib.get_close_matches(str(path[depth]), choices, n=1)
        hint = (f"; did you mean {dotted(path[:depth] + (close[0],))}?" if close
                else f"; {dotted(path[:depth])} has {', '.join(choices)}" if choices and depth else "")
        raise SpecError([f"{what}: no such spec field{hint}"])
    return path


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets: `all-linear,[q_proj,v_proj]` is two values."""
    out, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


def read_value(raw: str, what: str) -> Any:
    """A value as the spec's own YAML reader reads it (3e-4 is a number)."""
    if not raw:
        raise SpecError([f"{what}: an empty value"])
    try:
        value, positions = read_yaml(raw)
    except (yaml.YAMLError, YamlShapeError) as exc:
        raise SpecError([f"{what}: not a YAML value ({clip(str(exc).splitlines()[0], 60)})"]) from None
    if positions.problems:
        raise SpecError([f"{what}: {positions.problems[0][3]}"])
    return value


def check_value(path: Path_, value: Any, what: str) -> None:
    problems = value_problems(path, value)
    if problems:
        raise SpecError([f"{what}: {problems[0]}"])


def leaves(path: Path_, value: Any, what: str = "--set") -> list[tuple[Path_, Any]]:
    """A mapping value as the fields it sets (`lora={r: 4}` is lora.r=4); any other value as it is."""
    found = field_schema(path)[0] or {}
    if not isinstance(value, dict) or "properties" not in found:
        return [(path, value)]
    if not value:
        raise SpecError([f"{what} {dotted(path)}={{}}: sets no field; set one, e.g. {dotted(path)}.FIELD=VALUE"])
    return [leaf for key, v in value.items() for leaf in leaves((*path, str(key)), v, what)]


def set_fields(base: dict[str, Any], overrides: Iterable[tuple[Path_, Any]], what: str) -> dict[str, Any]:
    """A copy of the spec document `base` with each (path, value) set, as if the YAML said it; a list
    item the spec does not have is an error naming `what` set it (a variant, a --set)."""
    doc = copy.deepcopy(base)
    for path, value in overrides:
        node: Any = doc
        for i, part in enumerate(path[:-1]):
            _check_step(node, part, path[: i + 1], what)
            if isinstance(part, str) and not isinstance(node.get(part), (dict, list)):
                node[part] = {}  # a section the base spec leaves out (or sets to null)
            node = node[part]
        _check_step(node, path[-1], path, what)
        node[path[-1]] = value
    return doc


def _check_step(node: Any, part: str | int, upto: Path_, what: str) -> None:
    """One line where `part` cannot be taken from `node`: an item the list does not have, or a field
    of a list (a spec that lists its sources: `data.train.0.path`, not `data.train.path`)."""
    if isinstance(part, int):
        if not isinstance(node, list) or part >= len(node):
            raise SpecError([f"{what}: {dotted(upto)}: the spec has no such item "
                             f"(it lists {len(node) if isinstance(node, list) else 0})"])
    elif isinstance(node, list):
        raise SpecError([f"{what}: {dotted(upto[:-1])} is a list in this spec: name an item, "
                         f"e.g. {dotted((*upto[:-1], 0, part))}"])
    elif not isinstance(node, dict):
        raise SpecError([f"{what}: {dotted(upto[:-1])} is not a section in this spec"])
