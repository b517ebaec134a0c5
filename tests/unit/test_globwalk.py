"""Text-source globs (runner/core/globwalk.py): glob.glob's matches for ordinary patterns, but bounded, and
never through a link out of the pattern's root or round a loop of links."""

from __future__ import annotations

import glob
import time
from pathlib import Path

import pytest

from runner.core import globwalk
from runner.core.globwalk import GlobTooBig, Walk, split_glob
from runner.spec.rules import document_files


def _tree(root: Path) -> None:
    for name in ("x.txt", "a/y.txt", "a/b/z.md", "a/b/c/w.txt", ".h/q.txt", "a/.hid/r.txt", "a/.dot.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "linkdir").symlink_to(root / "a")


@pytest.mark.parametrize("pattern", ["**/*.txt", "*.txt", "a/*", "**/*", "a/**/*.md", "*/b/*", "a/.*", "a/**",
                                     "?/[by]*", ".h/*", "linkdir/**/*.txt"])
def test_ordinary_patterns_match_what_glob_matches(tmp_path: Path, pattern: str) -> None:
    _tree(tmp_path)
    root, parts = split_glob(tmp_path / pattern)
    mine = sorted(str(p) for p in Walk(root).match(root, parts) if p.is_file())
    assert mine == sorted(p for p in glob.glob(str(tmp_path / pattern), recursive=True) if Path(p).is_file())


def test_loops_and_links_out_are_not_followed(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path)  # a loop
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a link to itself
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside")
    (tmp_path / "a" / "out").symlink_to(outside)
    (tmp_path / "a" / "leak.txt").symlink_to(outside / "secret.txt")
    started = time.monotonic()
    found = document_files(tmp_path, "**/*.txt")
    assert found == sorted((tmp_path / n).resolve() for n in ("x.txt", "a/y.txt", "a/b/c/w.txt"))
    assert document_files(tmp_path, "a") == sorted(tmp_path / "a" / n for n in (".dot.txt", ".hid/r.txt", "b/c/w.txt",
                                                                                 "b/z.md", "y.txt"))
    assert document_files(tmp_path, "loop") == [] and time.monotonic() - started < 5


def test_a_walk_past_its_bounds_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        (tmp_path / f"{i}.txt").write_text("x")
    monkeypatch.setattr(globwalk, "MAX_ENTRIES", 10)
    with pytest.raises(GlobTooBig, match="over 10 entries"):
        document_files(tmp_path, "*.txt")
    monkeypatch.setattr(globwalk, "MAX_ENTRIES", 100)
    monkeypatch.setattr(globwalk, "MAX_DEPTH", 2)
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    with pytest.raises(GlobTooBig, match="deep"):
        document_files(tmp_path, "**/*.md")
