"""The five stages' names in the order they run, at the bottom of the spine so that every layer may read
them (the spec's extras, the CLI's --only and --force, gc, the server's job progress)."""

from __future__ import annotations

# `runner.stages.all_stages()` returns exactly these, in this order (a test checks).
STAGE_NAMES = ("model", "data", "train", "export", "eval")
