"""`runner gc`: remove artifacts and work folders that no run record refers to."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.core import locks
from runner.core.errors import StoreError
from runner.core.files import NotRegularFile, TooLarge, read_regular
from runner.core.records import runs_dir
from runner.core.stage import STAGE_NAMES

# A record holds a resolved spec, a profile, keys and versions: tens of kB. Far past that it is no record.
MAX_RECORD_BYTES = 64 * 2**20


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


def referenced_keys(store_root: Path, note: Callable[[str], None] = lambda _: None) -> set[tuple[str, str]]:
    """(stage, key) of every stage any run record names. A record that cannot be read might name any
    artifact, so gc stops rather than treat it as naming none (records are written whole, by rename,
    so an unreadable `.json` is damage, not a record being written). A FIFO, a socket, a device or a
    folder cannot be a record, and reading one may block: skipped, and `note` says so. A symbolic link
    might lead to a record: it is not followed (it may lead to /dev/zero), and it stops gc."""
    keys: set[tuple[str, str]] = set()
    unreadable: list[tuple[Path, str]] = []
    for path in _record_paths(store_root):
        try:
            keys |= _stage_keys(json.loads(read_regular(path, MAX_RECORD_BYTES, follow_links=False).decode("utf-8")))
        except NotRegularFile as exc:
            if exc.kind == "a symbolic link":
                unreadable.append((path, "a symbolic link; gc reads only records the runner wrote, which are files"))
            else:
                note(f"{path}: {exc.kind}, not a run record: skipped")
        except TooLarge as exc:
            unreadable.append((path, str(exc)))
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


def collect(store_root: Path, dry_run: bool = False,
            note: Callable[[str], None] = lambda _: None) -> tuple[list[Path], int]:
    """Folders removed (or that would be), and the bytes they held. Work folders that a live
    process holds the lock of are never touched. `note` hears of entries skipped."""
    keep = referenced_keys(store_root, note)
    try:
        doomed = [path for stage in STAGE_NAMES for path in _unreferenced(store_root / stage, stage, keep)]
    except OSError as exc:
        raise StoreError(f"{exc.filename}: cannot be listed ({exc.strerror or exc}); gc removed nothing: "
                         "fix the folder, then run gc again") from None
    freed = sum(_size(f) for d in doomed for f in (d.rglob("*") if _is_folder(d) else [d]))
    if not dry_run:
        for path in doomed:
            if _is_folder(path):
                shutil.rmtree(path, ignore_errors=True)
            else:  # a stray file, FIFO or link where an artifact's folder would be: the link, not its target
                path.unlink(missing_ok=True)
    return doomed, freed


def _unreferenced(folder: Path, stage: str, keep: set[tuple[str, str]]) -> list[Path]:
    """A stage's artifacts no record names, and its work folders no live process holds."""
    if not folder.is_dir():  # a stage folder may be a link to another disk, as the store itself may be
        return []
    doomed = [child for child in sorted(folder.iterdir()) if not child.name.startswith(".")
              and (stage, child.name) not in keep]
    work = folder / ".work"
    for entry in sorted(work.iterdir()) if work.is_dir() else []:
        if not entry.name.startswith(".") and (stage, entry.name) not in keep and not _held(folder / ".locks" / f"{entry.name}.lock"):
            doomed.append(entry)
    return doomed


def _held(lock: Path) -> bool:
    try:
        return locks.is_held(lock)
    except OSError:  # a lock that cannot be opened (a folder, say) may be anyone's: keep its work
        return True


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _size(path: Path) -> int:
    try:
        info = path.lstat()
    except OSError:  # gone meanwhile
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0
