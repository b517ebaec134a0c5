"""docs/tests.md's map of the test suite stays true: every test file is in it, under its own folder,
and it names no file that does not exist (a renamed test file fails here until the map follows)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "tests.md"


def _mapped() -> set[str]:
    """`folder/test_name` for every test file the map's block lists, read under its folder's line."""
    block = PAGE.read_text(encoding="utf-8").split("## The map", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    found, folder = set(), None
    for line in block.splitlines():
        head = re.match(r"(tests/\w+)/\s", line)
        if head:
            folder = head.group(1)
        named = re.match(r"\s+(test_\w+)\s", line)
        if named:
            assert folder is not None, f"docs/tests.md: {named.group(1)} is listed before any tests/ folder"
            found.add(f"{folder}/{named.group(1)}")
    return found


def test_the_map_names_every_test_file_and_no_other() -> None:
    files = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "tests").rglob("test_*.py")}
    mapped = _mapped()
    assert not files - mapped, f"docs/tests.md's map lacks {sorted(files - mapped)}: add a line for each"
    assert not mapped - files, f"docs/tests.md's map names files that do not exist: {sorted(mapped - files)}"
