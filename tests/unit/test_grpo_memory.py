"""GRPO's generation memory: the KV cache of num_generations x (prompt + completion) tokens."""

from __future__ import annotations

from runner.machine.grpomemory import generation_bytes, kv_cache_bytes
from runner.machine.memory import GIB, Shape

# Llama 3 8B: 32 layers, 8 KV heads of 128: 128 KiB of keys and values per token in bf16 (the published figure).
LLAMA3_8B = Shape(vocab=128256, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                  tied=False)


def test_the_kv_cache_is_128_kib_a_token_for_llama3_8b_in_bf16() -> None:
    assert kv_cache_bytes(LLAMA3_8B, 2, 1, 1) == 128 * 1024
    # 8 prompts x 8 generations, 512 prompt tokens + 1024 completion tokens: 12 GiB while generating.
    assert kv_cache_bytes(LLAMA3_8B, 2, 64, 512 + 1024) == 12 * GIB


def test_generation_adds_one_position_of_fp32_logits_per_sequence() -> None:
    kv = kv_cache_bytes(LLAMA3_8B, 2, 64, 1536)
    assert generation_bytes(LLAMA3_8B, 2, 64, 512, 1024) == kv + 64 * 128256 * 4
    # Twice the completions or twice the length: twice the cache.
    assert kv_cache_bytes(LLAMA3_8B, 2, 128, 1536) == 2 * kv == kv_cache_bytes(LLAMA3_8B, 2, 64, 3072)
