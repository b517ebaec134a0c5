"""Stage keys: sha256 of the canonical JSON of everything that determines a stage's output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, no NaN: the same data always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def stage_key(inputs: dict[str, Any]) -> str:
    """The key of a stage from its inputs: {stage, version, spec, profile, upstream, files}."""
    return hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_digest(entries: list[tuple[str, str]]) -> str:
    """Digest of a set of (relative path, sha256) pairs, independent of their order."""
    return stage_key({"files": sorted(entries)})


def diff_inputs(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two input dicts: ['train.learning_rate 0.0002 → 0.0001']."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[str] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                changes.append(f"{sub} added")
            elif key not in new:
                changes.append(f"{sub} removed")
            else:
                changes += diff_inputs(old[key], new[key], sub)
        return changes
    if old != new:
        return [f"{path} {_short(old)} → {_short(new)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # a digest: the first 12 hex digits are plenty to tell them apart
    return text if len(text) <= 60 else text[:57] + "..."
