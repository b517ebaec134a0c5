"""The artifact store: `<root>/<stage>/<key>/` holding the files and `manifest.json`.

A stage builds in `<root>/<stage>/.work/<key>/out/`, the manifest is written last, then the folder
is renamed into place. A folder without a manifest is garbage, never a result. The work area keeps
checkpoints between attempts, so a killed stage can resume.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from runner.core.errors import StoreError
from runner.core.keys import file_digest, tree_digest

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    stage: str
    key: str
    digest: str  # content digest of the non-volatile files: what downstream keys see
    parts: dict[str, str]  # digest per top-level entry ("tokenizer", "adapter", ...)
    files: dict[str, dict[str, Any]]  # relative path -> {size, sha256}
    inputs: dict[str, Any]
    info: dict[str, Any]  # timings, library versions: recorded, never keyed
    path: Path

    def part(self, name: str | None) -> str:
        if name is None:
            return self.digest
        if name not in self.parts:
            raise StoreError(f"{self.stage} artifact {self.key[:12]} has no part {name!r}")
        return self.parts[name]


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def work_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / ".work" / key

    def lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / ".locks" / f"{key}.lock"

    def lookup(self, stage: str, key: str, verify: bool = False) -> Manifest | None:
        return self.check(stage, key, verify)[0]

    def check(self, stage: str, key: str, verify: bool = False) -> tuple[Manifest | None, str | None]:
        """The committed artifact for (stage, key), or None and why it cannot be trusted.

        Sizes are always checked (cheap, and catch truncation and deletion); `verify` rehashes every
        file against the manifest."""
        folder = self.artifact_dir(stage, key)
        manifest = read_manifest(folder)
        if manifest is None:
            return None, ("artifact has no manifest (an interrupted write)" if folder.exists() else None)
        for rel, meta in manifest.files.items():
            file = folder / rel
            if not file.is_file():
                return None, f"artifact damaged: {rel} is missing"
            if file.stat().st_size != meta["size"]:
                return None, f"artifact damaged: {rel} has {file.stat().st_size} bytes, the manifest says {meta['size']}"
            if verify and file_digest(file) != meta["sha256"]:
                return None, f"artifact damaged: {rel} does not match its sha256"
        return manifest, None

    @contextmanager
    def build(self, stage: str, key: str, inputs: dict[str, Any], volatile: tuple[str, ...]) -> Iterator[Path]:
        """Yield an empty build folder; on success write the manifest and move it into place."""
        work = self.work_dir(stage, key)
        out = work / "out"
        try:
            if out.exists():
                shutil.rmtree(out)  # half-written by an earlier attempt: never trusted
            out.mkdir(parents=True)
        except OSError as exc:
            raise write_error(self.root, exc) from exc
        started = time.time()
        yield out  # what the stage raises passes through untouched: only the store's own writes are mapped
        info = {"started": started, "seconds": round(time.time() - started, 3)}
        try:
            self._commit(stage, key, out, inputs, volatile, info)
        except OSError as exc:
            raise write_error(self.root, exc) from exc
        shutil.rmtree(work, ignore_errors=True)

    def _commit(self, stage: str, key: str, out: Path, inputs: dict[str, Any], volatile: tuple[str, ...],
                info: dict[str, Any]) -> None:
        write_manifest(out, stage, key, inputs, volatile, info)
        final = self.artifact_dir(stage, key)
        if final.exists():
            # Reached with --force or for a damaged artifact: move it aside first, so no reader ever
            # sees a folder that is half old and half new.
            os.replace(final, self.work_dir(stage, key) / "replaced")
        os.replace(out, final)

    def make_folder(self, folder: Path) -> None:
        """Create a folder of the store, or raise the StoreError saying it cannot be written."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.root, exc) from exc


def write_error(root: Path, exc: OSError) -> StoreError:
    """The one-line StoreError for an OSError met while writing into the store at `root`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"disk full while writing to {root}; free some space (`runner gc` removes unused "
                          "artifacts) and run again: finished stages are kept")
    failed = Path(exc.filename) if isinstance(exc.filename, str) else None
    blocker = next((p for p in (failed, *failed.parents) if _is_file(p)), None) if failed else None
    if blocker is not None:  # "Not a directory" says less than which file is in the way
        why = f"{blocker} is a file, not a folder"
    else:
        why = f"{exc.strerror or exc}" + (f" at {failed}" if failed and failed != root else "")
    return StoreError(f"store {root} cannot be written ({why}); point --store (or RUNNER_STORE) at a folder "
                      "you can write to")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder we may not enter: not the file in the way
        return False


def write_manifest(folder: Path, stage: str, key: str, inputs: dict[str, Any],
                   volatile: tuple[str, ...], info: dict[str, Any]) -> None:
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        files[rel] = {"size": file.stat().st_size, "sha256": file_digest(file)}
    stable = {rel: meta["sha256"] for rel, meta in files.items()
              if not any(fnmatch(rel, pattern) for pattern in volatile)}
    parts: dict[str, list[tuple[str, str]]] = {}
    for rel, sha in stable.items():
        parts.setdefault(rel.split("/")[0], []).append((rel, sha))
    manifest = {
        "stage": stage, "key": key,
        "digest": tree_digest(list(stable.items())),
        "parts": {name: tree_digest(entries) for name, entries in sorted(parts.items())},
        "files": files, "inputs": inputs, "info": info,
    }
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: Path) -> Manifest | None:
    try:
        data = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return Manifest(stage=data["stage"], key=data["key"], digest=data["digest"], parts=data["parts"],
                    files=data["files"], inputs=data["inputs"], info=data["info"], path=folder)
