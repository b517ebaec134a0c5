"""llama.cpp's converter process as the export stage runs it (runner/stages/export/gguf.py), with a short
stand-in script in place of converter.py (the real one needs a merged model and minutes): it dies with
a runner killed by SIGKILL, a leftover from a killed run is stopped before a rerun writes, and a full
disk in the converter is the runner's disk-full error, not the converter's own OSError. Light: no torch."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.core.errors import StageError
from runner.stages.export import gguf

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

STAND_IN = """import os, sys, time
args = sys.argv[sys.argv.index("--") + 1:]
if args[0] == "enospc":
    raise OSError(28, "No space left on device", args[1])
if args[0] == "fail":
    sys.exit("something else went wrong")
open(args[1], "w").write(str(os.getpid()))
with open(args[1] + ".out", "w") as out:
    while True:  # a converter still writing its GGUF
        out.write("x"); out.flush(); time.sleep(0.05)
"""

PARENT = """import sys
from pathlib import Path
from runner.stages.export import gguf
gguf.CONVERTER = Path(sys.argv[1])
work = Path(sys.argv[2])
gguf.convert(work, "convert_hf_to_gguf.py", ["write", str(work / "child.pid")], None, work, print)
"""


def _gone(pid: int) -> bool:
    """Dead: no process, or a zombie waiting for its new parent to reap it."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _wait_for(path: Path, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "converter.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(gguf, "CONVERTER", script)
    return script


def test_the_converter_dies_with_a_runner_killed_by_sigkill(tmp_path: Path, stand_in: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runner = subprocess.Popen([sys.executable, "-c", PARENT, str(stand_in), str(work)], env=env)
    try:
        child = int(_wait_for(work / "child.pid"))
        assert (work / gguf.PIDFILE).read_text().strip() == str(child)  # kept for a rerun to find
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = not _gone(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the converter outlived the killed runner"
    finally:
        runner.kill()


def test_a_leftover_converter_is_stopped_before_a_rerun_writes(tmp_path: Path, stand_in: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # A leftover: started by a run that is gone (here by the test, with the command line convert() uses).
    leftover = subprocess.Popen([sys.executable, str(stand_in), str(work), "x", "-", "--", "write", str(work / "c.pid")])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _wait_for(work / "c.pid")
        (work / gguf.PIDFILE).write_text(f"{stranger.pid}\n")
        gguf.stop_leftover(work, print)  # a pid that is not a converter of this folder is left alone
        assert stranger.poll() is None
        (work / gguf.PIDFILE).write_text(f"{leftover.pid}\n")
        said: list[str] = []
        gguf.stop_leftover(work, said.append)
        assert leftover.wait(5) == -signal.SIGKILL
        assert "left running by an earlier, killed run" in said[0] and not (work / gguf.PIDFILE).exists()
        size = (work / "c.pid.out").stat().st_size
        time.sleep(0.2)
        assert (work / "c.pid.out").stat().st_size == size  # nothing more is written
    finally:
        leftover.kill()
        stranger.kill()


def test_a_full_disk_in_the_converter_is_the_runners_disk_full_error(tmp_path: Path, stand_in: Path) -> None:
    with pytest.raises(OSError) as raised:
        gguf.convert(tmp_path, "convert_hf_to_gguf.py", ["enospc", str(tmp_path / "model.gguf")], None, tmp_path, print)
    assert raised.value.errno == errno.ENOSPC  # what the runner maps to its disk-full line (exit 6)
    assert "llama.cpp's convert_hf_to_gguf.py" in str(raised.value)
    with pytest.raises(StageError, match="convert_hf_to_gguf.py failed: something else went wrong"):
        gguf.convert(tmp_path, "convert_hf_to_gguf.py", ["fail"], None, tmp_path, print)
    assert not (tmp_path / gguf.PIDFILE).exists()
