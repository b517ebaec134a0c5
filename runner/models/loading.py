"""Loading the base model the way the profile says (device, dtype, 4-bit, CPU threads), for train,
export, eval and serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.core.plan import local_weights
from runner.machine.profile import Profile
from runner.spec.typed import Spec

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` while the block runs, then put back for what follows."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


def weights_path(model_dir: Path) -> str:
    """Where the base weights are: inside the artifact (init), the user's folder, or the Hub cache."""
    folder = local_weights(model_dir)
    if folder is not None:
        return str(folder)
    from huggingface_hub import snapshot_download

    info = json.loads((model_dir / "model.json").read_text("utf-8"))
    # The exact commit recorded by the model stage, never the moving branch.
    return str(snapshot_download(info["id"], revision=info["commit"]))


def quiet_bitsandbytes() -> None:
    """bitsandbytes warns at import, on AVX512-BF16 CPUs, that it could not fetch an optional kernel
    from the Hub. The fallback kernel is the one we want (see `disable_cpu_inference_repack`)."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # Llama 3 ships no pad token; padding is masked out anyway
    return tok


def require_chat_template(tok: Any, stage: str) -> None:
    """Stop with one line when a chat must be rendered and the tokenizer has no template to do it."""
    if not getattr(tok, "chat_template", None):
        from runner.core.errors import StageError

        raise StageError(f"{stage}: the model's tokenizer has no chat template; set data.chat_template to the "
                         "model family's (llama3, chatml, qwen, mistral, gemma, phi), or data.template: plain")


def load_base(model_dir: Path, spec: Spec, profile: Profile, quantized: bool = True, sharded: bool = False) -> Any:
    """The base model on the profile's device, 4-bit when the profile says so (and `quantized`).
    `sharded`: for an FSDP training process, which places (and shards) the weights itself."""
    quiet_bitsandbytes()
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch_dtype(profile.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": profile.attn_implementation,
                              "trust_remote_code": spec.model.trust_remote_code}
    four_bit = quantized and profile.quantization != "none"
    if four_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=profile.quantization,
            bnb_4bit_use_double_quant=spec.model.double_quant, bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype)
    if profile.device == "cuda" and not sharded:
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # a launched process: its own GPU (worker.py)
    model = AutoModelForCausalLM.from_pretrained(weights_path(model_dir), **kwargs)
    if profile.device == "mps":
        model.to("mps")  # type: ignore[arg-type]  # transformers wraps .to in a decorator typed for models
    if four_bit and profile.device == "cpu":
        disable_cpu_inference_repack(model)
    return model


def disable_cpu_inference_repack(model: Any) -> int:
    """bitsandbytes on CPUs with AVX512-BF16 repacks 4-bit weights into an inference-only layout on
    the first no-grad forward (an eval step, `generate`); training after that computes silently wrong
    gradients. Turning the repack off on every Linear4bit keeps gradients right. Returns the count."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
