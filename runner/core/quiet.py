"""Library noise we know and have dealt with, silenced exactly, so a run's output is the run's.

Each entry names one message of one library and why it is safe to drop; anything else still shows.
Called by the entry points that run stages (`api.run`, the accelerate worker), never on import.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex, why)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # peft's PeftModel asks the base model `is_gradient_checkpointing` (peft_model.py), which
    # transformers 5.23+ renamed to is_activation_checkpointing; peft has not followed yet.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", "peft reads the old property name"),
    # DeepSpeed ZeRO-3 gathers and reduces its partitions with torch's older collective names, ~27
    # times a step; something resets Python's once-per-place memory every step, so each call printed
    # (625 KB over the tiny spec's 88 steps: it filled a pipe and hung the run). Same collectives.
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     "deepspeed calls torch's older collective names"),
)

# (logger, message start, why)
KNOWN_LOGS: tuple[tuple[str, str, str], ...] = (
    # bitsandbytes' CPU backend tries to fetch a faster 4-bit kernel from the Hub (`kernels`) and
    # logs a warning when it cannot; its own kernel is used instead, with the same results.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "offline, bitsandbytes falls back to its own CPU kernel"),
    # The train stage keeps and loads the best adapter itself (stages/train/validation.py), so that
    # checkpoints stay on save_steps; the Trainer's own load_best_model_at_end stays off.
    ("transformers.trainer_callback", "Using EarlyStoppingCallback without load_best_model_at_end=True",
     "the train stage loads the best adapter itself"),
)


class _DropKnown(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_known_warnings() -> None:
    """Drop exactly the known messages above; idempotent."""
    for category, message, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, start, _ in KNOWN_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.start == start for f in logger.filters):
            logger.addFilter(_DropKnown(start))
