"""Ctrl-C and SIGTERM: stop cleanly, and where a stage can save its progress first, let it.

Outside a graceful region a signal raises `Interrupted` at once (a stage's half-built folder is never
used, so nothing is lost). Inside one (the training loop), the signal only sets a flag; the loop
saves a checkpoint at the end of the current step, stops, and then raises.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from runner.errors import RunnerError


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
    if _State.depth:
        _State.pending = signum  # picked up at the end of the current training step
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through `_handler` (called by the CLI's `run`, never on import)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


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
    nest: a signal that came during an outer block's setup is kept for the inner one, never dropped
    (raising it in the middle of library code let a `except Exception` there swallow it)."""
    if not _State.depth:
        _State.pending = None
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if not _State.depth:
        stop_if_requested(" (progress saved in a checkpoint)")
