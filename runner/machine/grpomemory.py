"""GRPO's generation, for `plan`'s line beside the estimate (runner.machine.memory counts it).

TRL generates the whole per-process batch of completions (train.batch_size / processes sequences:
prompts x num_generations) at once, under no_grad, before the step's forward and backward: the KV cache
of those sequences at their longest (prompt + max_completion_length) is held while generating, then
freed. The training step then runs on micro-batch rows of prompt + completion tokens. The two peaks
do not coexist: the estimate's total is the larger one (runner.machine.memory.Estimate.apart).
"""

from __future__ import annotations

from typing import Any

from runner.machine.memory import GIB, Shape, generation, generation_bytes, kv_cache_bytes, setup_for

__all__ = ["generation_bytes", "grpo_memory_line", "kv_cache_bytes"]


def grpo_memory_line(spec: Any, profile: Any, config: dict[str, Any], prompt_len: int) -> str:
    """For `plan`: the generation's share of a GRPO step, with the counts it follows from."""
    g = spec.train.grpo
    setup = setup_for(spec, profile, prompt_len)
    need = generation(Shape.from_config(config), setup)
    return (f"  - GRPO generation: {need / GIB:.2f} GiB KV cache and logits (or the prompts' forward) for "
            f"{setup.generated} completions ({setup.generated // g.num_generations} prompts x {g.num_generations}) "
            f"of up to {prompt_len} + {g.max_completion_length} tokens, freed before the step (the step's rows "
            "are prompt + completion)")
