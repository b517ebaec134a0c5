"""Bounded globbing for text sources: what `glob.glob(pattern, recursive=True)` matches for an ordinary
pattern (`*` and `**` skip hidden names, `**` spans any number of folders), but a walk that stops with
one line past a depth, a count of directory entries or a time, and never follows a link out of its
root (the pattern's folder before its first wildcard) nor round a loop of links. `glob` itself follows
every link, so a folder linked to itself, or `/**`, held the caller until memory ran out."""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterator
from pathlib import Path

from runner.core.errors import RunnerError

MAX_DEPTH = 32  # folders below the root: deeper is a loop or the wrong folder
MAX_ENTRIES = 100_000  # directory entries one walk may look at (a big corpus is ~10^4 files)
MAX_SECONDS = 10.0  # a slow or remote file system: say so rather than hold a server thread


class GlobTooBig(RunnerError):
    """A walk past one of the bounds: the pattern names too much, or the wrong folder."""


def has_glob(path: str) -> bool:
    """Whether `path` (or one part of it) holds a wildcard."""
    return any(ch in path for ch in "*?[")


def split_glob(full: Path) -> tuple[Path, list[str]]:
    """(root, parts): the folder before the first wildcard, and the parts from there on."""
    parts = full.parts
    first = next(i for i, part in enumerate(parts) if has_glob(part))
    return Path(*parts[:first]) if first else Path("."), list(parts[first:])


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def within(real: str, root: str) -> bool:
    """Whether the resolved path `real` is `root` or below it (both real paths)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class Walk:
    """One bounded walk under `root`; `match` and `files` raise GlobTooBig past a bound."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.seen = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def _entries(self, folder: Path, depth: int) -> list[os.DirEntry[str]]:
        if depth > MAX_DEPTH:
            raise GlobTooBig(f"the walk under {self.root} goes more than {MAX_DEPTH} folders deep; name a narrower folder")
        if time.monotonic() > self.deadline:
            raise GlobTooBig(f"the walk under {self.root} took over {MAX_SECONDS:.0f} s; name a narrower folder")
        found: list[os.DirEntry[str]] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    self.seen += 1
                    if self.seen > MAX_ENTRIES:
                        raise GlobTooBig(f"the walk under {self.root} looked at over {MAX_ENTRIES} entries; "
                                         "name a narrower folder or pattern")
                    found.append(entry)
        except OSError:
            return []  # unreadable, or gone: as glob, nothing from it
        return sorted(found, key=lambda e: e.name)

    def _folder(self, path: Path, chain: frozenset[str]) -> str | None:
        """The real path of a folder the walk may enter: inside the root and not one it is already in."""
        try:
            if not path.is_dir():
                return None
        except OSError:
            return None
        real = os.path.realpath(path)
        return real if within(real, self.root) and real not in chain else None

    def _keep(self, path: Path) -> bool:
        return within(os.path.realpath(path), self.root)

    def match(self, folder: Path, parts: list[str], depth: int = 0,
              chain: frozenset[str] = frozenset()) -> Iterator[Path]:
        """The paths under `folder` that `parts` match, as glob.glob gives them (unresolved)."""
        real = self._folder(folder, chain)
        if real is None:
            return
        chain = chain | {real}
        if not parts:
            yield folder
            return
        part, rest = parts[0], parts[1:]
        if part == "**":
            yield from self._any_depth(folder, rest, depth, chain)
        elif has_glob(part):
            for entry in self._entries(folder, depth):
                if entry.name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(entry.name, part):
                    yield from self._next(folder / entry.name, rest, depth, chain)
        else:
            yield from self._next(folder / part, rest, depth, chain)

    def _next(self, path: Path, rest: list[str], depth: int, chain: frozenset[str]) -> Iterator[Path]:
        if rest:
            yield from self.match(path, rest, depth + 1, chain)
        elif os.path.lexists(path) and self._keep(path):
            yield path

    def _any_depth(self, folder: Path, rest: list[str], depth: int, chain: frozenset[str]) -> Iterator[Path]:
        """`**`: zero folders, then each non-hidden folder below (files too when `**` ends the pattern)."""
        if rest:
            yield from self.match(folder, rest, depth, chain - {os.path.realpath(folder)})
        else:
            yield folder
        for entry in self._entries(folder, depth):
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            if _is_dir(entry) and self._folder(path, chain) is not None:
                yield from self.match(path, ["**", *rest], depth + 1, chain)
            elif not rest and self._keep(path):
                yield path

    def files(self, folder: Path, depth: int = 0) -> Iterator[Path]:
        """Every file below `folder` (hidden ones too, as rglob), entering no linked folder."""
        for entry in self._entries(folder, depth):
            path = folder / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self.files(path, depth + 1)
                elif entry.is_file() and self._keep(path):
                    yield path
            except OSError:
                continue
