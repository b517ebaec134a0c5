"""Peak training memory, estimated from the model's shape before anything is loaded.

Pure arithmetic (no torch), so `plan` can show it. Counts what our train stage really holds:
- base weights: 4-bit linears (NF4/FP4 at 0.5 byte, plus quantization constants); everything else
  (embeddings, head, norms) in fp32, because peft's prepare_model_for_kbit_training upcasts it;
  without quantization, every weight in the compute dtype;
- LoRA: A and B in fp32, their gradients, and two Adam moments (1 byte each when 8-bit);
- activations kept for backward per token and layer (all of them, or one layer's worth plus each
  layer's input when gradient checkpointing recomputes them), plus the transient dequantized weight;
- logits: the (B, T, V) scores, the loss's fp32 log-softmax and the two gradients: for a 128k
  vocabulary this is often the largest single item.

Under packing (train.packing) a micro-batch of B examples is packed into rows of up to data.max_length
tokens. The packer computes no more positions than B x the longest example (it falls back to a row per
example), so everything counted per token stays as it is; what grows is what each token attends over:
the attention mask and, on the math path (eager, MPS), the (heads, T, T) scores are quadratic in the
row's width, which is up to data.max_length, not the longest example.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

GIB = 2**30
# The share of the device's memory training is fitted to; the rest is headroom for what the estimate
# does not count. One number for fit_profile, `plan` and the train stage's log.
MEMORY_BUDGET = 0.8


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        """From a Llama/Qwen/Mistral-style config.json."""
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return cls(vocab=config["vocab_size"], hidden=hidden, layers=config["num_hidden_layers"],
                   intermediate=config["intermediate_size"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or hidden // heads,
                   tied=bool(config.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
                "down_proj": (self.intermediate, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears().values())

    def other_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.hidden * (2 * self.layers + 1)  # + the norms

    def parameters(self) -> int:
        return self.linear_params() + self.other_params()


@dataclass(frozen=True)
class Setup:
    quantization: str  # nf4 | fp4 | none
    double_quant: bool
    compute_bytes: int  # 2 for bf16/fp16, 4 for fp32
    lora_r: int
    lora_dropout: float
    targets: str | tuple[str, ...]
    eight_bit_optimizer: bool
    micro_batch: int
    seq_len: int
    checkpointing: bool
    fused_attention: bool  # SDPA's flash / memory-efficient kernels (CUDA, and CPU's flash kernel); MPS: the math path
    shards: int = 1  # FSDP/ZeRO processes: weights, LoRA parameters, gradients and optimizer states split over them
    shard_weights: bool = True  # False under ZeRO-2: the weights stay whole, only gradients and optimizer states split
    autocast: bool = False  # mixed precision (the Trainer's bf16 / fp16 on CUDA): autocast casts per operation
    device: str = "cuda"  # dropout on CPU keeps an input-dtype noise tensor for backward; CUDA and MPS a 1-byte mask
    packed_len: int = 0  # train.packing: the packed row's capacity (data.max_length); 0 when each example is a row
    # train.method (the method block below): dpo, orpo, kto and grpo change the rows, lengths and logits counted
    method: str = "sft"
    reference: bool = False  # a reference forward, no grad, adapter off (dpo, kto; grpo when beta > 0)
    completion_len: int = 0  # grpo: max_completion_length, generated after each prompt (seq_len)
    generated: int = 0  # grpo: sequences generated at once in a process (train.batch_size / processes)
    reference_copy: bool = False  # dpo, kto: TRL's copy of the adapter kept as the reference (keeps_reference_copy)


@dataclass(frozen=True)
class Estimate:
    weights: int
    lora: int
    activations: int
    logits: int
    recompute: int = 0  # checkpointing: one layer's activations again, after the logits are freed
    attention: int = 0  # the math path (eager, MPS): one layer's fp32 scores and their gradients while it runs
    load: int = 0  # FSDP: the whole model, which each process holds while loading, before sharding
    reference: int = 0  # dpo, kto: the reference forward (no grad), while the step's activations are held
    apart: int = 0  # grpo: generating the completions (and the reference pass), before the step holds anything
    counted: str = ""  # what a method's step is made of: "chosen+rejected: 2 x 4 rows of 300 tokens"

    @property
    def total(self) -> int:
        # The logits peak at the loss; a checkpointed layer is recomputed later in the backward, once
        # they are gone: the two never coexist. So is a layer's attention backward (measured on eager),
        # and the reference forward, which runs between the forward and the loss.
        step = self.activations + max(self.logits, self.recompute + self.attention, self.reference)
        return self.weights + self.lora + max(step, self.apart)

    def to_lower(self) -> str:
        """What a user lowers when nothing fits: GRPO's generation is apart from the step, so when it is the
        peak a smaller step does not help; fewer or shorter completions do."""
        if self.apart > 0 and self.apart >= self.total - self.weights - self.lora:
            return "lower train.batch_size (completions generated at once) or train.grpo.max_completion_length"
        return "lower data.max_length"

    def describe(self) -> str:
        names = ("weights", "lora", "activations", "logits") + tuple(n for n in ("recompute", "attention", "reference")
                                                                     if getattr(self, n))
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}" for name in names)
        apart = f"; {self.apart / GIB:.2f} GiB generating before the step" if self.apart else ""
        load = f"; {self.load / GIB:.2f} GiB while loading, before it is sharded" if self.load else ""
        counted = f" [{self.counted}]" if self.counted else ""
        return f"{self.total / GIB:.2f} GiB ({parts}){apart}{load}{counted}"


def estimate(shape: Shape, s: Setup) -> Estimate:
    """Peak bytes of one training step in one process, item by item (see the module's docstring)."""
    if s.method != "sft":
        return method_estimate(shape, s)
    targeted = _targeted(shape, s)
    weights: float = _weights(shape, s)
    lora: float = _lora_state(shape, s, targeted)  # weights, gradients, optimizer states
    load = 0
    if s.shards > 1:
        weights, lora, load = _sharded(shape, s, weights, lora) if s.shard_weights else _zero2(shape, s, lora)
    activations, recompute = _activations(shape, s, targeted)
    attention = 0 if s.fused_attention else 2 * 4 * _scores(shape, s)  # fp32 scores and gradients, one layer
    return Estimate(weights=int(weights), lora=int(lora), activations=int(activations),
                    logits=int(_logits(shape, s)), recompute=int(recompute), load=load, attention=attention)


def _upcast(s: Setup) -> bool:
    # peft's prepare_model_for_kbit_training upcasts embeddings, norms and head to fp32 (not under
    # FSDP, which flattens one dtype: the train stage skips it there)
    return s.quantization != "none" and s.shards == 1


def _stream_bytes(s: Setup) -> int:
    """Bytes per value of the residual stream and the MLP. With fp32 norms, and a 4-bit linear
    returning its input's dtype, they stay fp32 even under bf16/fp16 autocast."""
    return 4 if _upcast(s) else s.compute_bytes


def _attention_bytes(s: Setup) -> int:
    """Bytes per value of attention and each adapter's input: autocast casts them to the compute
    dtype; without it, attention runs in the stream's dtype (and peft casts each adapter's input to
    the adapter's fp32)."""
    return s.compute_bytes if s.autocast else _stream_bytes(s)


def _targeted(shape: Shape, s: Setup) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of a block that gets an adapter."""
    return {n: d for n, d in shape.linears().items() if s.targets == "all-linear" or n in s.targets}


def _weights(shape: Shape, s: Setup) -> float:
    """The base model: 4-bit linears with their quantization constants and the rest in fp32 or the
    compute dtype; unquantized, everything in the compute dtype."""
    if s.quantization == "none":
        return shape.parameters() * s.compute_bytes
    constants = 1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64  # per parameter, blocks of 64
    return shape.linear_params() * (0.5 + constants) + shape.other_params() * (4 if _upcast(s) else s.compute_bytes)


def _lora_state(shape: Shape, s: Setup, targeted: dict[str, tuple[int, int]]) -> int:
    """A and B in fp32, their gradients, and Adam's two moments (1 byte each when 8-bit)."""
    lora_params = shape.layers * sum(s.lora_r * (i + o) for i, o in targeted.values())
    optimizer_bytes = 2 if s.eight_bit_optimizer else 8
    return lora_params * (4 + 4 + optimizer_bytes)  # weights, grads, two moments


def _sharded(shape: Shape, s: Setup, weights: float, lora: float) -> tuple[float, float, int]:
    """(weights, LoRA state, load) per process under FSDP. FULL_SHARD keeps 1/n of everything per GPU,
    and gathers one decoder layer at a time (plus the next one, prefetched) in full for its forward
    and backward. transformers 5 loads a 4-bit model whole in every process first: that is a peak
    of its own."""
    return weights / s.shards + 2 * weights / shape.layers, lora / s.shards, int(weights)


def _zero2(shape: Shape, s: Setup, lora: float) -> tuple[float, float, int]:
    """(weights, LoRA state, load) per process under DeepSpeed ZeRO-2: the weights and the LoRA
    matrices whole in every process; 1/n of the LoRA gradients and optimizer states, plus the bucket
    gradients are reduced through (DeepSpeed's "auto" reduce_bucket_size is hidden^2 values, in fp32;
    LoRA's gradients often fit in less). No load peak of its own: nothing is sharded after loading."""
    optimizer_bytes = 2 if s.eight_bit_optimizer else 8
    params = lora / (4 + 4 + optimizer_bytes)  # _lora_state's bytes per LoRA parameter
    bucket = 4 * min(shape.hidden**2, params)
    return _weights(shape, s), params * (4 + (4 + optimizer_bytes) / s.shards) + bucket, 0


def sharded_setup(setup: Setup, distributed: str, processes: int) -> Setup:
    """The setup as one of `processes` processes sees it: FSDP and ZeRO-3 split weights, LoRA weights,
    gradients and optimizer states over them (with one layer gathered whole at a time); ZeRO-2 only
    the gradients and optimizer states; DDP nothing."""
    if processes == 1 or distributed not in ("fsdp", "zero2", "zero3"):
        return setup
    return replace(setup, shards=processes, shard_weights=distributed != "zero2")


def _activations(shape: Shape, s: Setup, targeted: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(kept through the step, recomputed later): all layers' activations, or under checkpointing
    each layer's input, with one layer's activations again only in its backward."""
    per_layer = _activations_per_layer(shape, s, targeted)
    dequantized = _dequantized(shape, s)
    if s.checkpointing:
        return s.micro_batch * s.seq_len * _stream_bytes(s) * shape.hidden * shape.layers, per_layer + dequantized
    return per_layer * shape.layers + dequantized, 0


def row_len(s: Setup) -> int:
    """The width of a row attention sees: the longest example, or under packing the packed row's
    capacity (at least the longest example, and no wider than all of the micro-batch's tokens)."""
    if not s.packed_len:
        return s.seq_len
    return min(max(s.packed_len, s.seq_len), s.micro_batch * s.seq_len)


def _activations_per_layer(shape: Shape, s: Setup, targeted: dict[str, tuple[int, int]]) -> int:
    """Bytes one decoder block keeps for its backward over the whole micro-batch."""
    per_layer = s.micro_batch * s.seq_len * _per_token(shape, s, targeted)
    if not s.fused_attention:  # the math path keeps the (rows, heads, T, T) probabilities: softmax's fp32
        # output, and its copy in the compute dtype for the product with the values (measured on eager)
        per_layer += _scores(shape, s) * (4 + (_attention_bytes(s) if _attention_bytes(s) < 4 else 0))
    return per_layer


def _scores(shape: Shape, s: Setup) -> int:
    """Elements of one layer's attention scores: rows x heads x T x T = positions x heads x T."""
    return s.micro_batch * s.seq_len * shape.heads * row_len(s)


def _per_token(shape: Shape, s: Setup, targeted: dict[str, tuple[int, int]]) -> int:
    """Saved for backward in one block, per token, in bytes, as measured with autograd's saved-tensor
    hooks (fp32, and bf16 autocast): the two RMSNorms' inputs (2h) and the MLP's gate, up and
    activation (3i); the rotated queries, the keys and values as attention gets them (repeated to
    every query head once a padding mask is present), its output (4q) and the mask (a row's T); each
    adapter's r-wide middle; and the adapters' inputs."""
    h, inter, q = shape.hidden, shape.intermediate, shape.heads * shape.head_dim
    middles = (s.compute_bytes if s.autocast else 4) * s.lora_r * len(targeted)
    per_token = _stream_bytes(s) * (2 * h + 3 * inter) + _attention_bytes(s) * (4 * q + row_len(s)) + middles
    per_token += _adapter_inputs(shape, s, targeted)
    if s.lora_dropout > 0:  # and the dropout's mask for each adapter
        per_token += sum(inp for inp, _ in targeted.values()) * (4 if s.device == "cpu" else 1)
    return per_token


def _adapter_inputs(shape: Shape, s: Setup, targeted: dict[str, tuple[int, int]]) -> int:
    """Bytes per token of the inputs the adapters keep for their backward."""
    inputs = sum(inp for inp, _ in targeted.values())
    if s.autocast:  # each adapter keeps its own compute-dtype copy
        return s.compute_bytes * inputs
    if s.lora_dropout > 0 or _stream_bytes(s) != 4:  # each adapter keeps its own fp32 copy (dropped out, or cast)
        return 4 * inputs
    # the adapters share the normalised inputs and the MLP product (o_proj's is attention's output)
    groups = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "gate_proj": "mlp",
              "up_proj": "mlp", "down_proj": "product"}
    width = {"attention": shape.hidden, "mlp": shape.hidden, "product": shape.intermediate}
    return 4 * sum(width[g] for g in {groups[n] for n in targeted if n in groups})


def _dequantized(shape: Shape, s: Setup) -> int:
    """One dequantized weight at a time, in the compute dtype, forward and backward."""
    if s.quantization == "none":
        return 0
    return 2 * max(i * o for i, o in shape.linears().values()) * s.compute_bytes


def _logits(shape: Shape, s: Setup) -> int:
    """The scores (in the compute dtype under autocast), then at the start of the backward three fp32
    tensors of their shape: the loss's log-softmax, its gradient and the scores' gradient
    (measured: 16 bytes a score in fp32, 14 in bf16)."""
    return s.micro_batch * s.seq_len * shape.vocab * (_attention_bytes(s) + 12)


@dataclass(frozen=True)
class Fit:
    micro_batch: int
    accumulation: int
    checkpointing: bool
    estimate: Estimate
    notes: tuple[str, ...]
    fits: bool


def fit(shape: Shape, setup: Setup, batch_size: int, budget: int, may_checkpoint: bool = True,
        may_shrink: bool = True) -> Fit:
    """Turn on checkpointing, then halve the micro-batch (raising accumulation, so the effective
    batch stays `batch_size`) until the estimate is within `budget`; say what each step saved.
    What the spec fixed (`may_*` False) is left alone."""
    current = estimate(shape, setup)
    notes: list[str] = []
    if current.total > budget and not setup.checkpointing and may_checkpoint:
        setup = replace(setup, checkpointing=True)
        smaller = estimate(shape, setup)
        notes.append(f"gradient checkpointing on: saves {(current.total - smaller.total) / GIB:.2f} GiB")
        current = smaller
    while current.total > budget and setup.micro_batch > 1 and may_shrink:
        micro = halve(setup.micro_batch, batch_size)
        setup = replace(setup, micro_batch=micro)
        smaller = estimate(shape, setup)
        notes.append(f"micro-batch {micro} x {batch_size // micro} accumulation: saves {(current.total - smaller.total) / GIB:.2f} GiB")
        current = smaller
    return Fit(setup.micro_batch, batch_size // setup.micro_batch, setup.checkpointing, current, tuple(notes),
               current.total <= budget and current.load <= budget)


def halve(micro: int, batch_size: int) -> int:
    """The largest divisor of `batch_size` at most half of `micro` (1 at the least)."""
    return max(m for m in range(1, micro // 2 + 1) if batch_size % m == 0)


def setup_for(spec: Any, profile: Any, seq_len: int) -> Setup:
    """The estimate's inputs from a spec and a resolved profile; `seq_len` is the longest example."""
    setup = Setup(quantization=profile.quantization, double_quant=spec.model.double_quant,
                 compute_bytes=4 if profile.dtype == "fp32" else 2, lora_r=spec.lora.r,
                 lora_dropout=spec.lora.dropout, targets=spec.lora.target_modules,
                 eight_bit_optimizer="8bit" in profile.optimizer, micro_batch=profile.micro_batch_size,
                 seq_len=seq_len, checkpointing=profile.gradient_checkpointing,
                 fused_attention=profile.device != "mps" and profile.attn_implementation != "eager",
                 autocast=profile.device == "cuda" and profile.dtype != "fp32", device=profile.device,
                 packed_len=spec.data.max_length if spec.train.packing else 0)
    return replace(setup, **method_fields(spec, profile))


def fit_profile(spec: Any, profile: Any, config: dict[str, Any], seq_len: int) -> Fit:
    """Fit micro-batch and checkpointing to MEMORY_BUDGET of the device's memory, as far as the spec allows."""
    budget = int(profile.memory_mib * 2**20 * MEMORY_BUDGET)
    per_process = spec.train.batch_size // profile.processes  # each process holds its own micro-batch
    setup = setup_for(spec, profile, seq_len)
    setup = sharded_setup(setup, profile.distributed, profile.processes)
    return fit(Shape.from_config(config), setup, per_process, budget,
               may_checkpoint=spec.train.gradient_checkpointing == "auto",
               may_shrink=spec.train.micro_batch_size == "auto")


# The training methods (train.method). TRL's trainers hold other rows than SFT's, at other lengths:
# - dpo: chosen and rejected of each pair in one batch, 2 x micro-batch rows padded to the longer; then
#   the reference (the base with the adapter disabled: never a second model) runs the same rows under
#   no_grad while the step's activations are held (precompute_ref_log_probs is off);
# - orpo: the same 2x rows, no reference; its loss reads the full logits (TRL's experimental ORPO);
# - kto: micro-batch rows, and a KL batch (each prompt with another row's completion), run under
#   no_grad by the policy before the step and by the reference during it;
# - grpo: micro-batch generated completions of prompt + max_completion_length tokens. The step's
#   rows are first generated, all of a process's train.batch_size / processes at once, with their
#   KV cache, and scored by the reference when beta > 0: both before the step holds anything.
# DPO, KTO and GRPO score tokens through TRL's fused LM head (trl.trainer.utils.add_fused_lm_head):
# the (rows, T, vocab) logits are never made, only tiles of 4096 tokens x 32768 vocabulary entries.
FUSED_TOKENS, FUSED_VOCAB = 4096, 32768
# Tile-sized fp32 temporaries beside the tile where TRL folds a tile with torch ops (no Triton: the CPU),
# in the forward and in the backward (measured: 5 and 9.5 tiles of fp32 at once, the tile included, the
# backward's with the input's gradient); on CUDA its Triton kernels work in the tile itself.
FORWARD_TEMPORARIES, BACKWARD_TEMPORARIES = 4, 8


def method_fields(spec: Any, profile: Any) -> dict[str, Any]:
    """The Setup fields of spec.train.method (nothing for sft)."""
    t = spec.train
    if t.method == "grpo":
        return {"method": "grpo", "reference": t.grpo.beta > 0, "completion_len": t.grpo.max_completion_length,
                "generated": t.batch_size // profile.processes}
    reference = t.method in ("dpo", "kto")
    return {"method": t.method, "reference": reference} | ({"reference_copy": True} if reference and keeps_reference_copy(spec) else {})


def keeps_reference_copy(spec: Any) -> bool:
    """DPO, KTO: TRL's frozen copy of the adapter ("ref") stays the reference where the start is not
    exactly the base: a chained adapter (train.init_adapter), DoRA, the orthogonal init (the train
    stage drops it otherwise: runner/stages/train/preference.py)."""
    lora = spec.lora
    return spec.train.init_adapter is not None or lora.use_dora or lora.init == "orthogonal"


def step_rows(s: Setup) -> tuple[int, int]:
    """(rows, tokens a row) of one forward and backward: what SFT's terms are counted over."""
    if s.method in ("dpo", "orpo"):
        return 2 * s.micro_batch, s.seq_len
    return s.micro_batch, s.seq_len + s.completion_len


def method_estimate(shape: Shape, s: Setup) -> Estimate:
    """SFT's estimate over the method's rows, with the method's logits, reference and generation."""
    rows, length = step_rows(s)
    sft = estimate(shape, replace(s, method="sft", micro_batch=rows, seq_len=length, packed_len=0))
    tokens = rows * length
    if s.method == "orpo":
        logits, kept = _orpo_logits(shape, s, tokens), 0
    else:  # the fused head keeps its input, and its backward makes that input's fp32 gradient and tiles
        kept = tokens * shape.hidden * _stream_bytes(s)
        logits = tokens * shape.hidden * 4 + fused_tiles(shape, s, tokens, BACKWARD_TEMPORARIES)
    reference = no_grad_forward(shape, s, rows, length) if s.reference and s.method != "grpo" else 0
    apart = 0
    if s.method == "grpo":
        apart = max(generation(shape, s), no_grad_forward(shape, s, rows, length) if s.reference else 0)
    copied = (s.method == "grpo" and s.reference) or s.reference_copy
    lora = sft.lora + (_reference_adapter(shape, s) if copied else 0)
    recompute = sft.recompute
    if s.method == "orpo" and s.checkpointing:
        # measured (CPU, 4 layers): when the last layer is recomputed, two tensors of the logits' shape are
        # still alive (after the head's backward); counted without them ORPO's estimate ran 25% low
        recompute += 2 * tokens * shape.vocab * _attention_bytes(s)
    return replace(sft, lora=lora, activations=sft.activations + kept, logits=logits, recompute=recompute,
                   reference=reference, apart=apart, counted=counted(s))


def fused_tiles(shape: Shape, s: Setup, tokens: int, temporaries: int) -> int:
    """The fused head's tile (compute dtype) and, without Triton, the fp32 temporaries it is folded with."""
    tile = min(tokens, FUSED_TOKENS) * min(shape.vocab, FUSED_VOCAB)
    return tile * (_attention_bytes(s) + (0 if s.device == "cuda" else 4 * temporaries))


def _orpo_logits(shape: Shape, s: Setup, tokens: int) -> int:
    """ORPO's loss over full logits: SFT's four tensors of their shape for all rows (the chosen half's
    NLL and both halves' log-probabilities)."""
    return tokens * shape.vocab * (_attention_bytes(s) + 12)


def no_grad_forward(shape: Shape, s: Setup, rows: int, length: int) -> int:
    """A forward under no_grad over rows x length tokens (the reference's, KTO's KL batch): nothing is
    kept for a backward. One layer's tensors at a time; then the fused head's input (the last hidden
    states, normalised, and their copy without the last position) and its tile."""
    tokens = rows * length
    head = 3 * tokens * shape.hidden * _stream_bytes(s) + fused_tiles(shape, s, tokens, FORWARD_TEMPORARIES)
    return max(_layer_transient(shape, s, rows, length), head)


def _layer_transient(shape: Shape, s: Setup, rows: int, length: int) -> int:
    """One decoder layer under no_grad: the residual, the normalised input and the MLP's gate, up, their
    product and an adapter's output beside its layer's; the attention mask, which every layer reads
    (measured on the CPU with left-padded prompts: within 5% of a forward's peak); the dequantized weight."""
    tokens = rows * length
    return (tokens * _stream_bytes(s) * (3 * shape.hidden + 4 * shape.intermediate)
            + tokens * length * _attention_bytes(s) + _dequantized(shape, s) // 2)


def kv_cache_bytes(shape: Shape, compute_bytes: int, sequences: int, tokens: int) -> int:
    """Keys and values of every layer for `sequences` rows of `tokens` positions."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * compute_bytes * sequences * tokens


def generation_bytes(shape: Shape, compute_bytes: int, sequences: int, prompt_len: int, completion_len: int) -> int:
    """Generating: the KV cache at full length and one position's fp32 logits per sequence (sampling
    reads the last position only)."""
    return kv_cache_bytes(shape, compute_bytes, sequences, prompt_len + completion_len) + sequences * shape.vocab * 4


def generation(shape: Shape, s: Setup) -> int:
    """GRPO's generation above the weights: generating (generation_bytes), or the prompts' forward
    (prefill) beside their part of the cache, whichever is larger. TRL generates outside autocast: keys
    and values are in the stream's dtype (fp32 over a 4-bit base, whose linears return their input's)."""
    prefill = kv_cache_bytes(shape, _stream_bytes(s), s.generated, s.seq_len)
    prefill += _layer_transient(shape, replace(s, autocast=False), s.generated, s.seq_len)
    return max(generation_bytes(shape, _stream_bytes(s), s.generated, s.seq_len, s.completion_len), prefill)


def _reference_adapter(shape: Shape, s: Setup) -> int:
    """TRL's copy of the adapter ("ref") as the reference, in fp32, without gradients: GRPO with beta >
    0, DPO and KTO where keeps_reference_copy."""
    return 4 * shape.layers * sum(s.lora_r * (i + o) for i, o in _targeted(shape, s).values())


def counted(s: Setup) -> str:
    """What a method's step was counted over, for `plan` and the train stage's log."""
    rows, length = step_rows(s)
    reference = "; reference forward (no grad, adapter off) beside the activations" if s.reference else ""
    if s.method in ("dpo", "orpo"):
        return f"{s.method}: chosen+rejected 2x rows: {rows} of {length} tokens" + (reference or "; no reference")
    if s.method == "kto":
        return f"kto: {rows} rows of {length} tokens + a KL batch of {rows} (no grad){reference}"
    return (f"grpo: {rows} completions of {s.seq_len} + {s.completion_len} tokens a micro-batch; {s.generated} "
            f"generated at once with their KV cache" + ("; reference pass (no grad) before the step" if s.reference else ""))
