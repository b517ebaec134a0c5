"""The memory estimate and the fitting that keeps the effective batch size (pure arithmetic)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from runner.machine.memory import GIB, Setup, Shape, estimate, fit

LLAMA_32_3B = Shape.from_config({"vocab_size": 128256, "hidden_size": 3072, "num_hidden_layers": 28,
                                 "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8,
                                 "head_dim": 128, "tie_word_embeddings": True})
LLAMA_31_8B = Shape.from_config({"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
                                 "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8})
QLORA = Setup(quantization="nf4", double_quant=True, compute_bytes=2, lora_r=16, lora_dropout=0.05,
              targets="all-linear", eight_bit_optimizer=True, micro_batch=4, seq_len=1024, checkpointing=False,
              fused_attention=True, autocast=True)  # bf16 on a GPU


def test_parameter_counts_match_the_published_sizes() -> None:
    assert round(LLAMA_32_3B.parameters() / 1e9, 2) == 3.21
    assert round(LLAMA_31_8B.parameters() / 1e9, 2) == 8.03


def test_4bit_weights_are_a_quarter_of_bf16_for_the_linears_but_not_for_the_rest() -> None:
    four = estimate(LLAMA_31_8B, QLORA).weights
    plain = estimate(LLAMA_31_8B, Setup(**{**QLORA.__dict__, "quantization": "none"})).weights
    linears = LLAMA_31_8B.linear_params()
    assert round((four - LLAMA_31_8B.other_params() * 4) / linears, 3) == 0.516  # NF4 + double-quant constants
    assert 0.45 < four / plain < 0.5  # peft upcasts the 1B embedding and head parameters to fp32


def test_t4_gets_checkpointing_and_keeps_the_effective_batch() -> None:
    t4_budget = int(15 * GIB * 0.8)
    fitted = fit(LLAMA_32_3B, QLORA, batch_size=16, budget=t4_budget)
    assert fitted.fits and fitted.checkpointing
    assert fitted.micro_batch * fitted.accumulation == 16
    assert fitted.notes[0].startswith("gradient checkpointing on: saves ")


def test_h100_changes_nothing() -> None:
    fitted = fit(LLAMA_32_3B, QLORA, batch_size=16, budget=int(80 * GIB * 0.8))
    assert fitted.fits and not fitted.notes and fitted.micro_batch == 4 and not fitted.checkpointing


def test_shrinks_the_micro_batch_step_by_step_then_gives_up_with_numbers() -> None:
    long = Setup(**{**QLORA.__dict__, "seq_len": 4096, "micro_batch": 8})
    fitted = fit(LLAMA_31_8B, long, batch_size=16, budget=int(15 * GIB * 0.8))
    assert [n.split(":")[0] for n in fitted.notes][:2] == ["gradient checkpointing on", "micro-batch 4 x 4 accumulation"]
    assert fitted.micro_batch * fitted.accumulation == 16
    hopeless = fit(LLAMA_31_8B, long, batch_size=16, budget=2 * GIB)
    assert not hopeless.fits and hopeless.micro_batch == 1 and hopeless.estimate.total > 2 * GIB


def test_checkpointing_recomputes_a_layer_after_the_logits_are_gone() -> None:
    # The logits peak at the loss; a checkpointed layer's activations exist again only later in the
    # backward: the peak is the larger of the two, not their sum (measured by bench/memory.py).
    kept = estimate(LLAMA_32_3B, replace(QLORA, checkpointing=True))
    assert kept.recompute > 0 and kept.logits > 0
    assert kept.total == kept.weights + kept.lora + kept.activations + max(kept.logits, kept.recompute)
    assert "recompute" in kept.describe() and "recompute" not in estimate(LLAMA_32_3B, QLORA).describe()
    plain = estimate(LLAMA_32_3B, QLORA)
    assert plain.recompute == 0 and plain.total == plain.weights + plain.lora + plain.activations + plain.logits


def test_what_the_spec_fixed_is_not_changed() -> None:
    fitted = fit(LLAMA_32_3B, QLORA, batch_size=16, budget=int(6 * GIB), may_checkpoint=False, may_shrink=False)
    assert not fitted.fits and not fitted.notes and fitted.micro_batch == 4


LLAMA_31_70B = {"vocab_size": 128256, "hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672,
                "num_attention_heads": 64, "num_key_value_heads": 8}


def test_fsdp_shards_weights_and_lora_state_but_not_activations() -> None:
    whole, halves = estimate(LLAMA_31_8B, QLORA), estimate(LLAMA_31_8B, replace(QLORA, shards=2))
    loaded = halves.load  # each process loads it whole first
    assert halves.weights == int(loaded / 2 + 2 * loaded / LLAMA_31_8B.layers)  # plus the gathered layer and the next
    assert halves.lora == int(whole.lora / 2) and whole.load == 0
    # FSDP flattens one dtype: embeddings, norms and the residual stream stay bf16 (no fp32 upcast)
    assert loaded == whole.weights - LLAMA_31_8B.other_params() * 2
    assert halves.activations < whole.activations


def test_fsdp_fits_only_when_one_gpu_can_load_the_whole_model() -> None:
    shape = Shape.from_config(LLAMA_31_70B)  # about 37 GiB of 4-bit weights
    sharded = replace(QLORA, shards=2, micro_batch=1, seq_len=512, checkpointing=True)
    assert fit(shape, sharded, 1, int(0.8 * 80 * GIB)).fits  # two 80 GB GPUs
    tight = fit(shape, sharded, 1, int(0.8 * 40 * GIB))  # two 40 GB GPUs: shards fit, loading does not
    assert tight.estimate.total <= 0.8 * 40 * GIB < tight.estimate.load and not tight.fits


def test_a_packed_row_attends_over_max_length_not_the_longest_example() -> None:
    # 8 examples of at most 256 tokens, packed into rows of up to 2048 (data.max_length): the packer
    # computes no more positions than 8 x 256, so what is counted per token stays; each token attends
    # over its row, so the math path's (rows, heads, T, T) scores grow by 2048 / 256.
    math_path = replace(QLORA, micro_batch=8, seq_len=256, fused_attention=False)
    packed = replace(math_path, packed_len=2048)
    plain, rows = estimate(LLAMA_32_3B, math_path), estimate(LLAMA_32_3B, packed)
    assert rows.logits == plain.logits and rows.weights == plain.weights and rows.lora == plain.lora
    scores = 3 * 8 * LLAMA_32_3B.heads * 256 * 256 * 2 * LLAMA_32_3B.layers  # bf16, every layer
    mask = 8 * 256 * 256 * 2 * LLAMA_32_3B.layers  # the mask's row per token
    assert rows.activations - plain.activations == 7 * (scores + mask)
    # SDPA's fused kernels keep no scores: only the mask grows
    fused = estimate(LLAMA_32_3B, replace(packed, fused_attention=True)).activations
    assert fused - estimate(LLAMA_32_3B, replace(math_path, fused_attention=True)).activations == 7 * mask


def test_a_packed_row_is_at_least_the_longest_example_and_at_most_the_micro_batch() -> None:
    from runner.machine.memory import row_len

    assert row_len(replace(QLORA, seq_len=300)) == 300  # unpacked: a row is an example
    assert row_len(replace(QLORA, seq_len=300, packed_len=2048)) == 1200  # 4 examples fill no more
    assert row_len(replace(QLORA, seq_len=300, packed_len=256)) == 300  # the packer widens to the longest
    assert row_len(replace(QLORA, micro_batch=16, seq_len=300, packed_len=2048)) == 2048
    # packing at the same width as the longest example changes nothing
    same = replace(QLORA, fused_attention=False, seq_len=512)
    assert estimate(LLAMA_32_3B, same) == estimate(LLAMA_32_3B, replace(same, packed_len=512))


def test_the_estimate_reads_train_packing_from_the_spec(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from runner.machine.memory import setup_for
    from runner.spec.typed import parse_spec

    (tmp_path / "t.jsonl").write_text("{}\n")
    profile = SimpleNamespace(quantization="nf4", dtype="bf16", optimizer="paged_adamw_8bit", micro_batch_size=4,
                              gradient_checkpointing=False, device="mps", attn_implementation="sdpa")
    for packing, expected in (("false", 0), ("true", 1024)):
        spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}, max_length: 1024}}\n"
                          f"train: {{packing: {packing}}}\n", base_dir=tmp_path)
        s = setup_for(spec, profile, 300)
        assert (s.seq_len, s.packed_len, s.fused_attention) == (300, expected, False)  # MPS: the math path


def test_a_packed_estimate_is_never_below_the_unpacked_one() -> None:
    # Packing only widens the rows attention sees: over every path the estimate counts, what is counted
    # per token (and the weights, LoRA, logits) stays, and nothing shrinks.
    for fused in (True, False):
        for checkpointing in (False, True):
            for device, autocast in (("cuda", True), ("cuda", False), ("mps", False), ("cpu", False)):
                for micro, longest, capacity in ((1, 700, 2048), (4, 300, 2048), (16, 128, 1024), (8, 512, 256)):
                    plain = replace(QLORA, fused_attention=fused, checkpointing=checkpointing, device=device,
                                    autocast=autocast, micro_batch=micro, seq_len=longest)
                    a, b = estimate(LLAMA_32_3B, plain), estimate(LLAMA_32_3B, replace(plain, packed_len=capacity))
                    case = (fused, checkpointing, device, micro, longest, capacity)
                    assert (b.weights, b.lora, b.logits) == (a.weights, a.lora, a.logits), case
                    assert b.activations >= a.activations and b.total >= a.total, case
                    widened = min(capacity, micro * longest) > longest
                    grew = b.activations + b.recompute > a.activations + a.recompute  # kept, or recomputed
                    assert grew == widened, case  # the mask's row, at least
                    if not fused and widened:
                        assert b.attention > a.attention, case


def test_under_eager_attention_a_packed_row_costs_the_square_of_max_length() -> None:
    # A micro-batch that fills one packed row of max_length L: the math path keeps (heads, L, L) softmax
    # probabilities per layer and, in a layer's backward, its fp32 scores and their gradients; doubling L
    # (the examples with it) quadruples both. The fused kernels keep no scores.
    heads, layers = LLAMA_32_3B.heads, LLAMA_32_3B.layers
    kept = {}
    for length in (1024, 2048, 4096):
        row = replace(QLORA, micro_batch=4, seq_len=length // 4, fused_attention=False, packed_len=length)
        eager, fused = estimate(LLAMA_32_3B, row), estimate(LLAMA_32_3B, replace(row, fused_attention=True))
        assert eager.attention == 2 * 4 * heads * length * length and fused.attention == 0
        kept[length] = eager.activations - fused.activations
        assert kept[length] == layers * heads * length * length * (4 + 2)  # fp32 softmax and its bf16 copy
        # unpacked, the same examples attend within themselves only: a quarter of the row's square
        unpacked = estimate(LLAMA_32_3B, replace(row, packed_len=0))
        assert unpacked.attention * 4 == eager.attention
    assert kept[2048] == 4 * kept[1024] and kept[4096] == 4 * kept[2048]
