"""Ctrl-C and SIGTERM in this process, real signals to ourselves: raised at once outside a graceful
region, kept for the next safe point inside one, kept too when a raise is swallowed where it landed,
and a second signal stops at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.core import signals
from runner.core.execute import _build
from runner.core.plan import Step
from runner.core.stage import StageContext
from runner.core.store import Store


@pytest.fixture()
def handled() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    try:
        yield
    finally:
        signals.reset()
        for s, handler in before.items():
            signal.signal(s, handler)


def test_outside_a_graceful_region_a_signal_raises_at_once(handled: None) -> None:
    with pytest.raises(signals.Interrupted, match="interrupted by SIGTERM") as caught:
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143


def test_inside_one_it_waits_for_the_code_and_a_second_stops_at_once(handled: None,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(signals.Interrupted, match=r"SIGINT \(progress saved"), signals.graceful():
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested() == signal.SIGINT  # still running: nothing was raised
        signals.stop_if_requested(" (progress saved)")
    assert "send SIGINT again to stop at once" in capfd.readouterr().err
    with pytest.raises(signals.Interrupted), signals.graceful():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the user insists
        pytest.fail("the second signal should have raised")


def test_a_swallowed_signal_is_still_seen_by_the_next_graceful_region(handled: None) -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except Exception:  # what library code did to it (transformers' lazy import)
        pass
    with pytest.raises(signals.Interrupted), signals.graceful():
        pass  # was: the flag cleared on entry, and the run trained to the end
    signals.reset()
    with signals.graceful():
        pass  # a new run starts afresh


class Confused:
    """A test-only stage whose library turned the signal into its own error, as transformers did."""

    name, version, upstream, volatile, uses_profile, gate = "train", 1, (), (), False, None

    def local_files(self, spec: object) -> dict[str, Path]:
        return {}

    def run(self, ctx: StageContext) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except signals.Interrupted:
            raise ModuleNotFoundError("Could not import module 'set_seed'") from None


def test_a_stage_error_that_was_a_signal_is_reported_as_the_interruption(handled: None, tmp_path: Path) -> None:
    step = Step("train", "new", "k" * 64, (), {"stage": "train"})
    with pytest.raises(signals.Interrupted, match="interrupted by SIGINT"):
        _build(Confused(), step, None, None, Store(tmp_path), print, {})  # type: ignore[arg-type]
    assert not (tmp_path / "train" / ("k" * 64)).exists()  # nothing half-built was kept
