"""Which engine generates GRPO's completions: transformers' `generate` (the default, every device), or
TRL's vLLM path colocated in the training process (`train.grpo.vllm: true`, CUDA with vllm installed).
vLLM is TRL's engine, not one of ours: this module only builds the GRPOConfig settings that select it.

Light (no torch, no trl): the unit tests build the settings with a stand-in profile.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from runner.core.errors import ProfileError
from runner.machine.profile import Profile
from runner.spec.typed import Spec

# Colocated, vLLM holds its weights and KV cache beside the training process on the same GPU: the
# share of GPU memory it may take. Training keeps the rest (QLoRA's base is small; the KV cache of
# num_generations x completion length is what vLLM's share pays for).
VLLM_MEMORY_SHARE = 0.3


def vllm_settings(spec: Spec, profile: Profile, installed: bool | None = None) -> dict[str, Any]:
    """TRL's vLLM generation, colocated in the training process, when the spec asks: a CUDA profile and
    vllm installed, else one line saying what to change. Nothing when it does not ask (HF generate).
    `installed`: whether vllm can be imported (found here when None)."""
    if not spec.train.grpo.vllm:
        return {}
    if profile.device != "cuda":
        raise ProfileError(f"train.grpo.vllm: needs a CUDA device, this profile is {profile.device}: "
                           "set train.grpo.vllm: false to generate with transformers")
    if not (importlib.util.find_spec("vllm") is not None if installed is None else installed):
        raise ProfileError("train.grpo.vllm: vllm is not installed: `pip install vllm`, or set train.grpo.vllm: false")
    # One process per GPU here, so vLLM's tensor parallel group is that one GPU; sleep mode stays off
    # (it frees vLLM's memory between generations at the cost of reloading it every step).
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": VLLM_MEMORY_SHARE,
            "vllm_tensor_parallel_size": 1, "vllm_enable_sleep_mode": False,
            # vLLM sizes its KV cache for this length: a prompt as the data stage cuts it, plus the completion
            "vllm_max_model_length": spec.data.max_length + spec.train.grpo.max_completion_length}
