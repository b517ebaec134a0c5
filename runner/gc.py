"""`runner gc`: remove artifacts and work folders that no run record refers to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner import locks
from runner.records import runs_dir
from runner.stages import STAGE_NAMES


def referenced_keys(store_root: Path) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for path in runs_dir(store_root).glob("*.json"):
        try:
            record = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        keys |= {(s["stage"], s["key"]) for s in record.get("stages", []) if s.get("key")}
    return keys


def collect(store_root: Path, dry_run: bool = False) -> tuple[list[Path], int]:
    """Folders removed (or that would be), and the bytes they held. Work folders that a live
    process holds the lock of are never touched."""
    keep = referenced_keys(store_root)
    doomed: list[Path] = []
    for stage in STAGE_NAMES:
        folder = store_root / stage
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            if not child.name.startswith(".") and (stage, child.name) not in keep:
                doomed.append(child)
        for work in sorted((folder / ".work").glob("*")):
            lock = folder / ".locks" / f"{work.name}.lock"
            if (stage, work.name) not in keep and not locks.is_held(lock):
                doomed.append(work)
    freed = sum(f.stat().st_size for d in doomed for f in d.rglob("*") if f.is_file())
    if not dry_run:
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
    return doomed, freed
