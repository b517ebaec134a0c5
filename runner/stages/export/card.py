"""The adapter's model card: what was trained, how, and how well; with the Hub's metadata when pushed."""

from __future__ import annotations

from runner.core.outputs import ExportMetadata
from runner.spec.typed import Spec


def model_card(spec: Spec, metadata: ExportMetadata) -> str:
    base, m = metadata.base_model, metadata
    base_name = base.id or ("a random-initialised demo model" if base.random_init else base.path)
    quantization = metadata.quantization
    method = f"QLoRA ({quantization} 4-bit base)" if quantization != "none" else "LoRA"
    lines = [
        "---", "library_name: peft", "tags: [lora, qlora, medical, qlora-runner]", "---", "",
        f"# LoRA adapter: {spec.name}", "", spec.description or "", "",
        f"- Base model: {base_name}" + (f" at commit `{base.commit}`" if base.commit else ""),
        f"- Method: {method}"
        f", r={spec.lora.r}, alpha={spec.lora.alpha}, dropout={spec.lora.dropout}, targets {spec.lora.target_modules}",
        f"- Training: {m.steps} steps, learning rate {spec.train.learning_rate}, batch {spec.train.batch_size}, "
        f"{spec.train.scheduler} schedule, seed {spec.seed}",
        f"- Loss: train {m.train_loss_first} -> {m.train_loss_last}; validation {m.eval_loss_before} -> {m.eval_loss_after}",
        f"- Trainable parameters: {m.trainable_parameters:,}", "",
        "Made with qlora-runner; `metadata.json` holds the spec slice, stage keys and metrics.", "",
        "Not for clinical use: outputs of a fine-tuned language model can be wrong.", "",
    ]
    return "\n".join(lines)
