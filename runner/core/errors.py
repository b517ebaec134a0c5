"""Errors the runner raises on purpose. Each carries a one-line message that says what to change.

The CLI maps each class to an exit code and prints a traceback only with --debug.
"""

from __future__ import annotations

import re

# Every character str.splitlines() breaks at, and the other controls: none may split a problem's line.
_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
MAX_PROBLEM_CHARS = 400


def one_line(text: str) -> str:
    """`text` as one printable line: breaks escaped (\\n), cut to MAX_PROBLEM_CHARS. A last net:
    messages are built short and on one line, but some quote the user's text or a library's."""
    text = _BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "..."


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""

    exit_code = 1


class SpecError(RunnerError):
    """The spec is wrong. Holds every problem found, each as `path: message (file:line:col)`."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = [one_line(p) for p in problems]
        super().__init__("\n".join(self.problems))


class ProfileError(RunnerError):
    """The machine cannot do what the spec asks and the spec says `on_unsupported: error`."""

    exit_code = 3


class DataError(RunnerError):
    """Data cannot be read at all (a missing file, no usable rows). Broken rows are dropped, not raised."""

    exit_code = 4


class StageError(RunnerError):
    """A stage failed; nothing it had half-written is used."""

    exit_code = 5


class StoreError(RunnerError):
    """The artifact store cannot be used (not writable, full, corrupted beyond repair)."""

    exit_code = 6


class ContainerError(RunnerError):
    """The container engine or the image cannot be used."""

    exit_code = 7
