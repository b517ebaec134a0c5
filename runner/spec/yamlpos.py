"""Safe YAML reading that remembers where each value came from, with limits for hostile input.

Why not plain `yaml.safe_load`: PyYAML follows YAML 1.1, which reads `3e-4` as the *string*
'3e-4' (a float there needs a dot), and silently keeps the last of two duplicate keys. Users write
learning rates as 3e-4, so we read such scalars as numbers on purpose, and report duplicates.

A spec is a small tree of plain values, so anything else is refused before it is built: nesting
past MAX_DEPTH (the composer recurses), more than MAX_VALUES values once aliases are expanded (a
"billion laughs" file is a few lines), tags other than the plain ones, keys that are not strings,
NUL bytes and numbers that are not finite.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from runner.core.errors import SpecError

MAX_DEPTH = 20  # the deepest spec value, eval.benchmarks[0].fields.options[0], is 6 levels down
MAX_VALUES = 20_000  # a spec has a few hundred values; more is data, which belongs in a file
MAX_NUMBER_CHARS = 40  # Python refuses int('1' * 4301); nothing a spec holds needs 40 digits
_CORE = "tag:yaml.org,2002:"
PLAIN_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}


class YamlShapeError(Exception):
    """The text is YAML, but no spec could be built from it at all (too deep, too big)."""

    def __init__(self, mark: Any, message: str) -> None:
        self.line, self.column = mark.line + 1, mark.column + 1
        super().__init__(message)


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader (no object construction) with YAML 1.2 floats and no timestamps, that stops at
    MAX_DEPTH and MAX_VALUES while composing, before either can exhaust the stack or memory."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # pyyaml's own method, untyped
        self._count += 1
        if self._count > MAX_VALUES:
            raise YamlShapeError(mark, f"more than {MAX_VALUES} values; a spec holds settings, data goes in files")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlShapeError(mark, f"nested more than {MAX_DEPTH} levels deep; a spec needs at most 6")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.1 reads `2001-12-14` as a date, which no spec field takes and JSON cannot hold; YAML 1.2
# (and every user) reads it as text. The resolver table is copied so SafeLoader keeps its own.
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _CORE + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Floats with an exponent and no dot (3e-4, 1E5), which YAML 1.2 reads as numbers and PyYAML does not.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"), list("-+0123456789.")
)


@dataclass
class Positions:
    """Maps a path such as ('train', 'learning_rate') to its 1-based line and column in the file,
    and holds what the walk found wrong: duplicates and values no spec may hold."""

    marks: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[tuple[Any, ...], int, int]] = field(default_factory=list)
    problems: list[tuple[tuple[Any, ...], int, int, str]] = field(default_factory=list)

    def locate(self, path: tuple[Any, ...]) -> tuple[int, int]:
        # A missing key has no position of its own: point at the nearest parent that exists.
        while path and path not in self.marks:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def where(self, path: tuple[Any, ...]) -> str:
        line, col = self.locate(path)
        return f"{line}:{col}"


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with an ellipsis: an echoed value never floods the terminal."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_path(path: tuple[Any, ...]) -> str:
    """('eval', 'benchmarks', 0, 'name') -> 'eval.benchmarks[0].name'; odd keys quoted, one line."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if re.fullmatch(r"[\w.-]+", str(part), re.ASCII) else clip(json.dumps(str(part)), 40)
        text += f".{name}" if text else name
    return text or "(top level)"


def read_yaml(text: str) -> tuple[Any, Positions]:
    """Parse YAML safely; returns the data and the position of every key and item. Where
    `positions.problems` is not empty the data is None: it could not be built safely."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        positions = Positions()
        if node is None:
            return None, positions
        _check_expanded(node)
        _walk(node, (), positions)
        if positions.problems:
            return None, positions
        try:
            return loader.construct_document(node), positions
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError) as exc:
            # A standard tag whose value does not parse (`!!int abc`, `!!bool maybe`): PyYAML raises
            # a plain Python error while building the data; say where, in one line.
            _unparsable(node, (), positions, exc)
            return None, positions
    finally:
        loader.dispose()


def _unparsable(node: yaml.Node, where: tuple[Any, ...], positions: Positions, exc: BaseException) -> None:
    """Record the first scalar PyYAML cannot build (or, failing that, the document) as a problem."""
    for tagged, path in _scalars(node, where):
        try:
            _SpecLoader("").construct_object(tagged, deep=True)
        except Exception:  # the scalar that broke the build: PyYAML raises ValueError, KeyError, ...
            mark = tagged.start_mark
            positions.problems.append((path, mark.line + 1, mark.column + 1,
                                       f"{tagged.tag.rsplit(':', 1)[-1]} value {clip(repr(tagged.value))} does not "
                                       "parse; drop the tag or fix the value"))
            return
    mark = node.start_mark
    positions.problems.append((where, mark.line + 1, mark.column + 1,
                               f"cannot be read ({type(exc).__name__}); write plain values"))


def _scalars(node: yaml.Node, where: tuple[Any, ...]) -> list[tuple[yaml.ScalarNode, tuple[Any, ...]]]:
    """Every scalar value with its path, in document order."""
    if isinstance(node, yaml.ScalarNode):
        return [(node, where)]
    if isinstance(node, yaml.MappingNode):
        found = []
        for key, value in node.value:
            found += _scalars(value, (*where, key.value if isinstance(key, yaml.ScalarNode) else "?"))
        return found
    if isinstance(node, yaml.SequenceNode):
        return [pair for i, child in enumerate(node.value) for pair in _scalars(child, (*where, i))]
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expanded(root: yaml.Node) -> None:
    """Refuse a tree whose aliases expand past MAX_VALUES or MAX_DEPTH, or refer to themselves.
    Sizes are counted per node, once each (an alias is the same node object), so a billion laughs
    costs as many steps as it has lines. Iterative: the expanded tree may be deeper than the stack."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted: an alias to one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            kids = _children(node)
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_.discard(id(node))
            if size[id(node)] > MAX_VALUES:
                raise YamlShapeError(node.start_mark, f"more than {MAX_VALUES} values once its aliases are expanded; "
                                                      "a spec holds settings, data goes in files")
            if depth[id(node)] > MAX_DEPTH:
                raise YamlShapeError(node.start_mark, f"nested more than {MAX_DEPTH} levels deep once its aliases "
                                                      "are expanded; a spec needs at most 6")
        elif id(node) in open_:
            raise YamlShapeError(node.start_mark, "an alias refers to the value that contains it; a spec is a tree")
        elif id(node) not in size:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((kid, False) for kid in _children(node))


def _walk(node: yaml.Node, path: tuple[Any, ...], positions: Positions) -> None:
    problem = _value_problem(node)
    if problem:  # located at its key, as schema errors are
        line, col = positions.locate(path) if path else (node.start_mark.line + 1, node.start_mark.column + 1)
        positions.problems.append((path, line, col, problem))
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key_node.tag == _CORE + "merge":  # `<<: *defaults`, merged when the data is built
                _walk(value_node, path, positions)
                continue
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _CORE + "str"):
                positions.problems.append((path, *mark, f"a key must be a string, got {_kind(key_node)}"))
                continue
            key = key_node.value
            if key in seen:
                positions.duplicates.append((path + (key,), *mark))
            seen.add(key)
            positions.marks[path + (key,)] = mark
            _walk(value_node, path + (key,), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            positions.marks[path + (index,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _walk(item, path + (index,), positions)


def _value_problem(node: yaml.Node) -> str | None:
    """Why this one node cannot be in a spec, or None."""
    if node.tag not in PLAIN_TAGS:
        tag = node.tag.replace(_CORE, "!!")
        return f"the YAML tag {clip(tag, 40)} is not allowed here; write a plain value"
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == _CORE + "str" and "\0" in node.value:
        return "must not contain a NUL byte"
    if node.tag in (_CORE + "int", _CORE + "float") and len(node.value) > MAX_NUMBER_CHARS:
        return f"a number of {len(node.value)} characters; write at most {MAX_NUMBER_CHARS}"
    if node.tag == _CORE + "float" and not _finite(node.value):
        return f"must be a finite number, got {node.value}"
    return None


def _finite(text: str) -> bool:
    plain = text.replace("_", "").lower()
    if plain.lstrip("+-") in (".inf", ".nan"):
        return False
    try:
        return math.isfinite(float(plain))
    except ValueError:  # sexagesimal (1:30.5), which PyYAML reads in base 60: finite
        return True


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if node.tag == _CORE + "null":
        return "null"
    words = {"int": "integer", "float": "number", "bool": "boolean"}
    return f"{words.get(node.tag.replace(_CORE, ''), node.tag)} {clip(node.value, 40)}"


def decode_spec(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")  # a spec is UTF-8; the error says where it is not
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([f"{source}:{line}:{column}: not UTF-8 (byte 0x{raw[exc.start]:02x}); "
                         "save the spec as UTF-8"]) from None


def read_spec(text: str, source: str) -> tuple[Any, Positions]:
    """The YAML document and its positions; a parse error or a shape past the limits is one line."""
    try:
        return read_yaml(text)
    except YamlShapeError as exc:
        raise SpecError([f"{source}:{exc.line}:{exc.column}: {exc}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        what = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise SpecError([f"{source}:{where}: not valid YAML: {clip(what, 200)}"]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise SpecError([f"{source}:{line}:{column}: not valid YAML: the character #x{char:04x} is not "
                         "allowed; remove it or write it as an escape in a double-quoted string"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{source}: not valid YAML: {clip(str(exc), 200)}"]) from None
