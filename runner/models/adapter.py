"""The base model is the fine-tuned one with its adapter switched off: one load, two models to score
(eval's benchmarks, free text, perplexity and queries all compare them this way)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def adapter_off(model: Any, off: bool) -> Iterator[None]:
    """The base model is the same model with the adapter switched off."""
    with model.disable_adapter() if off else contextlib.nullcontext():
        yield
