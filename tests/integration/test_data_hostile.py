"""Hostile data through a real `runner run --only data`: rows and documents past the bounds, binary and
non-UTF-8 files, a CSV field past csv's own limit, and a file that changes while the stage reads it.
Each is dropped and counted by reason, or refused in one line; never a crash, never a wrong key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, TINY, only_artifact, runner

BOUND = 100_000  # bytes: the tests lower the row and document bounds (64 MiB) so a "huge" row stays fast
MODEL = TINY.split("data:")[0]  # name, seed and the tiny model
TAIL = "lora: {r: 8, alpha: 16, dropout: 0.0}\ntrain: {epochs: 1, learning_rate: 3e-3, batch_size: 8}\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "store"


def bounded_env() -> dict[str, str]:
    return {**os.environ, "RUNNER_MAX_ROW_BYTES": str(BOUND), "RUNNER_MAX_DOCUMENT_BYTES": str(BOUND)}


def test_huge_rows_and_bad_documents_are_dropped_by_reason(tmp_path: Path, store: Path) -> None:
    good = "A sentence about the heart and its valves, repeated. " * 20
    (tmp_path / "lines.jsonl").write_text(json.dumps({"text": good}) + "\n" + json.dumps({"text": "x" * (2 * BOUND)})
                                         + "\n" + json.dumps({"text": good}) + "\n")
    (tmp_path / "table.csv").write_text(f"text\n{good}\n{'y' * (2 * BOUND)}\n{good}\n")  # csv's own limit: 128 KiB
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text(good)
    (docs / "nul.txt").write_bytes(b"\x00" * 50_000)
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "big.md").write_text("word " * (BOUND // 4))
    spec = tmp_path / "hostile.yaml"
    spec.write_text(MODEL + "data:\n  format: text\n  max_length: 64\n  train:\n    - {path: lines.jsonl}\n"
                    "    - {path: table.csv}\n    - {path: docs}\n" + TAIL)
    done = runner("run", str(spec), "--store", str(store), "--only", "data", env=bounded_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    stats = json.loads((only_artifact(store, "data") / "stats.json").read_text())
    dropped = {name: got["dropped"] for name, got in stats["sources"].items()}
    assert dropped == {"lines": {f"row over {BOUND} bytes": 1}, "table": {f"row over {BOUND} bytes": 1},
                       "docs": {f"document over {BOUND} bytes": 1, "not text (NUL bytes)": 1, "not UTF-8": 1}}, dropped
    kept = {name: got["kept"] for name, got in stats["sources"].items()}
    assert all(kept.values()), kept


# The reader is wrapped in the real CLI's process: after the stage has read the file's first row, the
# file is appended to, cut, or swapped for another (what an editor's save or a download does).
RACE = """
import os, sys
from pathlib import Path
import runner.rows.reading as reading
from runner.cli import main

how, target = sys.argv[1], Path(sys.argv[2])
real, done = reading.read_local, []

def racing(path):
    for number, row in enumerate(real(path)):
        yield row
        if number == 0 and not done:
            done.append(1)
            if how == "append":
                with open(target, "a") as f:
                    f.write(open(target).readline())
            elif how == "truncate":
                os.truncate(target, os.path.getsize(target) // 2)
            else:
                other = target.with_suffix(".new")
                other.write_text(open(target).readline() * 3)
                os.replace(other, target)

reading.read_local = racing
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("how", ["append", "truncate", "swap"])
def test_a_file_changed_while_read_is_not_stored(tmp_path: Path, store: Path, how: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text((ROOT / "data" / "demo" / "medmc_train.jsonl").read_text())
    spec = tmp_path / "race.yaml"
    spec.write_text(TINY.replace(str(ROOT / "data" / "demo" / "medmc_train.jsonl"), str(data)))
    before = set((store / "data").iterdir()) if (store / "data").is_dir() else set()
    done = subprocess.run([sys.executable, "-c", RACE, how, str(data), "run", str(spec), "--store", str(store),
                           "--only", "data"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "changed while the data stage read it" in errors[0] and str(data) in errors[0], \
        done.stderr[-2000:]
    after = {p for p in (store / "data").iterdir() if (p / "manifest.json").is_file()}
    assert after <= before, "an artifact was stored under the old content's key"
