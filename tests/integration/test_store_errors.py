"""A store that cannot be written is the store error (exit 6, one line naming the folder), never a
traceback. Root can write through any permission bits, so the tests make the store a file, a
folder under a file, or a read-only mount."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TINY, runner, tmpfs


def spec_file(tmp_path: Path) -> Path:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    return spec


def one_store_error(done: subprocess.CompletedProcess[str], folder: Path) -> str:
    assert done.returncode == 6, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder) in errors[0] and "--store" in errors[0], done.stderr[-2000:]
    return errors[0]


def test_a_store_that_is_a_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("not a folder")
    line = one_store_error(runner("run", str(spec_file(tmp_path)), "--store", str(store)), store)
    assert "cannot be written" in line


def test_a_store_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = tmp_path / "file" / "store"
    one_store_error(runner("run", str(spec_file(tmp_path)), "--store", str(store)), store)


def test_a_stage_folder_that_is_a_file(tmp_path: Path) -> None:
    """The run record can be written, the model stage's folder cannot: the lock meets it first."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "model").write_text("not a folder")
    one_store_error(runner("run", str(spec_file(tmp_path)), "--store", str(store)), store)


@pytest.fixture()
def read_only(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


def test_a_store_on_a_read_only_file_system(tmp_path: Path, read_only: Path) -> None:
    line = one_store_error(runner("run", str(spec_file(tmp_path)), "--store", str(read_only)), read_only)
    assert "Read-only file system" in line
    store = read_only / "store"
    one_store_error(runner("run", str(spec_file(tmp_path)), "--store", str(store)), store)


def test_gc_with_a_truncated_run_record_removes_nothing_and_names_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    artifact = store / "train" / ("a" * 64)
    artifact.mkdir(parents=True)
    (artifact / "manifest.json").write_text("{}")
    record = store / "runs" / "20261201T000000-1-tiny.json"
    record.parent.mkdir()
    record.write_text('{"stages": [{"stage": "model", "key": "' + "b" * 64 + '"}, {"stage": "tr')
    for args in (("--dry-run",), ()):
        done = runner("gc", "--store", str(store), *args)
        assert done.returncode == 6 and "would remove" not in done.stdout, done.stdout + done.stderr
        assert done.stderr.startswith(f"error: {record}: run record cannot be read (") and done.stderr.count("\n") == 1
    assert artifact.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("command", ["plan", "run", "gc"])
def test_a_store_this_user_may_not_enter(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """As root nothing is forbidden, so the command runs (in this process, through the CLI's main) with
    the effective uid of nobody on a store under a folder of mode 000: is_dir() raised
    PermissionError there (found in review). The folders are made world-readable for that user."""
    from runner.cli import main

    top = Path(tempfile.mkdtemp(prefix="runner-noentry-"))
    try:
        top.chmod(0o755)
        spec = top / "tiny.yaml"
        spec.write_text(TINY.replace("path: train.jsonl", "path: /dev/null"))
        closed = top / "closed"
        (closed / "store").mkdir(parents=True)
        closed.chmod(0)
        store = str(closed / "store")
        args = ["gc", "--store", store] if command == "gc" else [command, str(spec), "--store", store]
        os.seteuid(65534)
        try:
            code = main(args)
        finally:
            os.seteuid(0)
        err = capsys.readouterr().err
        assert code == 6, err
        assert len(err.strip().splitlines()) == 1 and store in err, err
    finally:
        closed.chmod(0o755)
        shutil.rmtree(top)
