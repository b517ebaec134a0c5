"""GRPO's memory beside the training step's (runner.machine.memory): the generation of the completions.

TRL generates the whole per-process batch of completions (train.batch_size / processes sequences:
prompts x num_generations) at once, under no_grad, before the step's forward and backward: the KV cache
of those sequences at their longest (prompt + max_completion_length) is held while generating, then
freed. The training step then runs on rows of prompt + completion tokens, which the supervised
estimate covers with that length. The two peaks do not coexist; the larger one is the step's.
"""

from __future__ import annotations

from typing import Any

from runner.machine.memory import GIB, Shape


def kv_cache_bytes(shape: Shape, compute_bytes: int, sequences: int, tokens: int) -> int:
    """Keys and values of every layer for `sequences` rows of `tokens` positions."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * compute_bytes * sequences * tokens


def generation_bytes(shape: Shape, compute_bytes: int, sequences: int, prompt_len: int, completion_len: int) -> int:
    """The generation's peak above the weights: the KV cache at full length and one position's fp32
    logits per sequence (sampling reads the last position only)."""
    return kv_cache_bytes(shape, compute_bytes, sequences, prompt_len + completion_len) + sequences * shape.vocab * 4


def grpo_memory_line(spec: Any, profile: Any, config: dict[str, Any], prompt_len: int) -> str:
    """For `plan`: the generation's share of a GRPO step, with the counts it follows from."""
    g = spec.train.grpo
    sequences = spec.train.batch_size // profile.processes
    need = generation_bytes(Shape.from_config(config), 4 if profile.dtype == "fp32" else 2, sequences,
                            prompt_len, g.max_completion_length)
    return (f"  - GRPO generation: {need / GIB:.2f} GiB KV cache and logits for {sequences} completions "
            f"({sequences // g.num_generations} prompts x {g.num_generations}) of up to {prompt_len} + "
            f"{g.max_completion_length} tokens, freed before the step (the step's rows are prompt + completion)")
