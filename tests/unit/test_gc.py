"""`runner gc` on a real store in a temporary folder: a run record it cannot read keeps everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.cleanup import collect
from runner.core.errors import StoreError
from runner.core.store import Store


def commit(store: Store, stage: str, key: str) -> Path:
    with store.build(stage, key, {"stage": stage}, ()) as out:
        (out / "x.txt").write_text(key)
    return store.artifact_dir(stage, key)


def record(store: Path, name: str, stages: dict[str, str]) -> Path:
    path = store / "runs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec_path": "/x.yaml", "status": "completed",
                                "stages": [{"stage": s, "key": k, "action": "ran"} for s, k in stages.items()]}, indent=1))
    return path


def test_gc_removes_what_no_record_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept, orphan = commit(store, "model", "m1"), commit(store, "train", "t0")
    record(tmp_path, "a", {"model": "m1"})
    removed, _ = collect(tmp_path)
    assert removed == [orphan] and kept.is_dir() and not orphan.exists()


@pytest.mark.parametrize("damage", ["truncated", "not utf-8", "not a record"])
def test_an_unreadable_record_keeps_everything_and_is_named(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path)
    folders = [commit(store, "model", "m1"), commit(store, "train", "t1"), commit(store, "export", "e1"),
               commit(store, "eval", "v1")]
    record(tmp_path, "a", {"model": "m1"})
    broken = record(tmp_path, "b", {"model": "m1", "train": "t1", "export": "e1", "eval": "v1"})
    text = broken.read_bytes()
    broken.write_bytes({"truncated": text[: len(text) // 2], "not utf-8": b"\xff" + text,
                        "not a record": b"[1, 2]"}[damage])
    for dry_run in (True, False):
        with pytest.raises(StoreError) as caught:
            collect(tmp_path, dry_run=dry_run)
        message = str(caught.value)
        assert message.startswith(f"{broken}: run record cannot be read (") and "\n" not in message
        assert "gc removed nothing" in message
    assert all(folder.is_dir() for folder in folders)


def test_a_runs_folder_that_cannot_be_listed_keeps_everything(tmp_path: Path) -> None:
    """glob() sees no records in a runs/ that is a file (or may not be entered): gc must stop, not
    take every artifact for unused (found in review)."""
    store = Store(tmp_path)
    folder = commit(store, "train", "t1")
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(StoreError, match="run records cannot be listed"):
        collect(tmp_path)
    assert folder.is_dir()
