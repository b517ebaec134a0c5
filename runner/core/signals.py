"""Ctrl-C and SIGTERM: stop cleanly, and where a stage can save its progress first, let it.

Outside a graceful region a signal raises `Interrupted` at once (a stage's half-built folder is never
used, so nothing is lost). Inside one (the train stage, setup included), the signal only sets a flag;
the loop saves a checkpoint at the end of the current step, stops, and then raises. A second signal
while the first waits raises at once: the user insists.

A raise lands wherever the code happens to be, and library code may swallow it (`except Exception`
in an import, turned into "Could not import module 'set_seed'") or crash on it (inside a pybind11
callback: "terminate called", SIGABRT). So the signal is also kept as pending: the stage's error is
then reported as the interruption it was, the next stage does not start, and a training loop that
starts anyway stops at its first step.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from runner.core.errors import RunnerError


class Interrupted(RunnerError):
    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}{detail}; finished stages are kept: run the same command to go on")


class _State:
    depth = 0  # graceful blocks entered and not left (the train stage nests them)
    pending: int | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.depth and _State.pending is None:
        _State.pending = signum  # picked up at the end of the current training step
        name = signal.Signals(signum).name
        _say(f"\n[runner] {name}: stopping at the next point where nothing is lost (a checkpoint while "
             f"training); send {name} again to stop at once\n")
        return
    _State.pending = signum  # kept, should the raise below be swallowed where it lands
    raise Interrupted(signum)


def _say(text: str) -> None:
    """Written straight to stderr: print() inside a handler can meet a print it interrupted."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def adopt(signum: int) -> None:
    """Take a signal another process of the same run received (training stops at the same step in all)."""
    if _State.pending is None:
        _State.pending = signum


def reset() -> None:
    """Forget a signal an earlier run in this process was stopped by (a run starts afresh)."""
    _State.pending = None


STOPS = {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])}
PARENT = "RUNNER_SWEEP_PID"  # set by a sweep for each variant's `runner run`


def install(hangup: bool = False) -> None:
    """Route SIGINT and SIGTERM (and SIGHUP with `hangup`) through `_handler` (called by the CLI's `run`
    and `sweep`, never on import). A sweep's variant also stops when the sweep is gone."""
    reset()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    if hangup and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _handler)
    if hasattr(signal, "pthread_sigmask"):  # a sweep starts its runs with these blocked: take them now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
    die_with_parent()


def die_with_parent() -> None:
    """In a sweep's variant: SIGTERM (a checkpoint, then stop) when the sweep dies, even by SIGKILL.
    Linux only (prctl); elsewhere a killed sweep's runs go on to the end."""
    parent = os.environ.pop(PARENT, None)  # popped: the run's own child processes are not the sweep's
    if parent is None or not sys.platform.startswith("linux"):
        return
    _prctl()(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the sweep died before the line above
        raise Interrupted(signal.SIGTERM, " (the sweep that started this run is gone)")


def _prctl() -> Callable[..., int]:
    import ctypes

    found: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return found


def child_dies_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A preexec_fn for a child process (llama.cpp's converter): the kernel sends it `signum` when this
    process dies, even by SIGKILL, so no orphan goes on writing. Linux only (None elsewhere). The
    signal follows the thread that starts the child: start it from the thread that lives longest."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, parent = _prctl(), os.getpid()  # looked up before fork: the child only calls it

    def tie() -> None:
        prctl(1, signum, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(128 + signum)

    return tie


def requested() -> int | None:
    return _State.pending


def stop_if_requested(detail: str = "") -> None:
    """Raise the pending signal now, at a point where stopping loses nothing."""
    if _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum, detail)


@contextmanager
def graceful() -> Iterator[None]:
    """Within this block a signal waits for the code to call `requested()` and stop by itself. Blocks
    nest: a signal that came during an outer block's setup is kept for the inner one, never dropped;
    so is one that came before the block and was swallowed where it was raised."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if not _State.depth:
        stop_if_requested(" (progress saved in a checkpoint)")
