"""`runner gc`: remove artifacts and work folders that no run record refers to."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from runner import locks
from runner.errors import StoreError
from runner.records import runs_dir
from runner.stage import STAGE_NAMES


def _record_paths(store_root: Path) -> list[Path]:
    """The run records; a runs/ that is not a folder, or cannot be listed, stops gc (glob would see none)."""
    folder = runs_dir(store_root)
    try:
        os.lstat(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:  # the store itself may not be entered
        raise StoreError(f"{folder}: the run records cannot be listed ({exc.strerror or exc}); gc removed nothing: "
                         "point --store at a folder you can read and write") from None
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.name.endswith(".json"))
    except OSError as exc:
        raise StoreError(f"{folder}: the run records cannot be listed ({exc.strerror or exc}); gc removed nothing, "
                         "since any artifact may be in use: fix the folder, then run gc again") from None


def referenced_keys(store_root: Path) -> set[tuple[str, str]]:
    """(stage, key) of every stage any run record names. A record that cannot be read might name any
    artifact, so gc stops rather than treat it as naming none (records are written whole, by rename,
    so an unreadable `.json` is damage, not a record being written)."""
    keys: set[tuple[str, str]] = set()
    unreadable: list[tuple[Path, str]] = []
    for path in _record_paths(store_root):
        try:
            keys |= _stage_keys(json.loads(path.read_text("utf-8")))
        except RecursionError:
            unreadable.append((path, "nested too deeply"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            unreadable.append((path, str(exc)))
    if unreadable:
        path, why = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise StoreError(f"{path}{more}: run record cannot be read ({why}); gc removed nothing, since that run "
                         "may use any artifact: move or delete the record, then run gc again")
    return keys


def _stage_keys(record: Any) -> set[tuple[str, str]]:
    stages = record.get("stages") if isinstance(record, dict) else None
    if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("stage"), str) for s in stages):
        raise ValueError("not a run record: no list of stages")
    return {(s["stage"], str(s["key"])) for s in stages if s.get("key")}


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
