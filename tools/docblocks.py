"""The fenced code blocks of the project's Markdown, for the tests that keep the docs true.

A block's language says what it is: `sh` (or `bash`, or none) holds commands the docs test parses,
and runs where cheap; `text` is output or a recipe, never run; `yaml`, `json`, `python` are parsed
(the Colab guide's cells are run by tests/integration/test_colab.py). An HTML comment on the line
before a fence marks a block the tests leave alone: `<!-- coming: WHAT (branch) -->` for a feature
not merged yet (delete the comment once it is), `<!-- colab-only -->` for a cell only Colab can run.
Standard library only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARK = re.compile(r"^<!--\s*(coming|colab-only)\b")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None  # "coming", "colab-only" or None

    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`, in order, with the marker on the line before it, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        mark = MARK.match(lines[i - 1].strip()) if i > 0 else None
        found.append(Block(path, i + 1, opening.group(2), "\n".join(lines[i + 1:end]), mark.group(1) if mark else None))
        i = end + 1
    return found


def shell_lines(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, blank lines and whole-line comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def runner_argv(line: str) -> list[str] | None:
    """The runner arguments of a command line (`runner ...`, `python -m runner ...`, a notebook's
    `!python -m runner ...`), or None when the line runs something else."""
    try:
        words = shlex.split(line.removeprefix("!"), comments=True)
    except ValueError:
        return None
    for prefix in (["runner"], ["python", "-m", "runner"], [".venv/bin/runner"], [".venv/bin/python", "-m", "runner"]):
        if words[: len(prefix)] == prefix:
            return words[len(prefix):]
    return None
