"""`runner run/plan/validate SPEC --set a.b=value`: fields set on the command line, as if the YAML said them.

The values are set in the spec's document before it is validated, so the schema and the cross-field
rules see exactly what an edited file would hold, and the stage keys are those of that file. A problem
with a field the command line set names the `--set`, not a line of the file. Light: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.core.errors import SpecError
from runner.spec.fieldpaths import Path_, leaves, parse_override, set_fields
from runner.spec.typed import Spec, load_spec, read_spec_file, spec_of_doc
from runner.spec.yamlpos import format_path, read_spec


def load_spec_with(path: str | Path, sets: Sequence[str] = ()) -> Spec:
    """The spec file at `path` with each `--set PATH=VALUE` in `sets` applied. A field set twice is
    refused: which one was meant is not ours to guess."""
    path = Path(path)
    if not sets:
        return load_spec(path)
    overrides = parsed(sets)
    text = read_spec_file(path)
    doc, positions = read_spec(text, str(path))
    if not isinstance(doc, dict) or positions.problems:
        return load_spec(path)  # the file itself is broken: its own errors, at their lines
    changed = set_fields(doc, [(p, v) for p, v, _ in overrides], f"--set in {path}")
    try:
        return spec_of_doc(changed, positions, str(path), path.resolve().parent)
    except SpecError as exc:
        raise SpecError([_at_the_set(problem, overrides) for problem in exc.problems]) from None


def parsed(sets: Sequence[str]) -> list[tuple[Path_, Any, str]]:
    """Each `--set` as (leaf path, value, the text as given); a mapping value sets its leaves."""
    out: list[tuple[Path_, Any, str]] = []
    for text in sets:
        path, value = parse_override(text)
        out += [(leaf, v, text) for leaf, v in leaves(path, value)]
    seen: dict[Path_, str] = {}
    for leaf, _, text in out:
        if leaf in seen:
            raise SpecError([f"--set {text}: {format_path(leaf)} is already set by --set {seen[leaf]}; set it once"])
        seen[leaf] = text
    return out


def _at_the_set(problem: str, overrides: list[tuple[Path_, Any, str]]) -> str:
    """A problem with a field the command line set points at that `--set`, not at the file's line."""
    for leaf, _, text in overrides:
        shown = format_path(leaf)
        if problem.startswith(shown) and problem[len(shown) : len(shown) + 1] in (":", ".", "["):
            return re.sub(r"\([^()]*:\d+:\d+\)$", f"(--set {text})", problem)
    return problem
