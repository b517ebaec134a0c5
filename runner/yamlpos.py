"""Safe YAML reading that remembers where each value came from.

Why not plain `yaml.safe_load`: PyYAML follows YAML 1.1, which reads `3e-4` as the *string*
'3e-4' (a float there needs a dot), and silently keeps the last of two duplicate keys. Users write
learning rates as 3e-4, so we read such scalars as numbers on purpose, and report duplicates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

class _SpecLoader(yaml.SafeLoader):
    """SafeLoader (no object construction) with YAML 1.2 floats."""


# Floats with an exponent and no dot (3e-4, 1E5), which YAML 1.2 reads as numbers and PyYAML does not.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"), list("-+0123456789.")
)


@dataclass
class Positions:
    """Maps a path such as ('train', 'learning_rate') to its 1-based line and column in the file."""

    marks: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[tuple[Any, ...], int, int]] = field(default_factory=list)

    def locate(self, path: tuple[Any, ...]) -> tuple[int, int]:
        # A missing key has no position of its own: point at the nearest parent that exists.
        while path and path not in self.marks:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def where(self, path: tuple[Any, ...]) -> str:
        line, col = self.locate(path)
        return f"{line}:{col}"


def format_path(path: tuple[Any, ...]) -> str:
    """('eval', 'benchmarks', 0, 'name') -> 'eval.benchmarks[0].name'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def read_yaml(text: str) -> tuple[Any, Positions]:
    """Parse YAML safely; returns the data and the position of every key and item."""
    node = yaml.compose(text, Loader=_SpecLoader)
    positions = Positions()
    if node is None:
        return None, positions
    _walk(node, (), positions)
    return yaml.load(text, Loader=_SpecLoader), positions


def _walk(node: yaml.Node, path: tuple[Any, ...], positions: Positions) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                positions.duplicates.append((path + (key,), *mark))
            seen.add(key)
            positions.marks[path + (key,)] = mark
            _walk(value_node, path + (key,), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            positions.marks[path + (index,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _walk(item, path + (index,), positions)

