"""GRPO (`train.method: grpo`): TRL's GRPOTrainer on the same QLoRA model, profile, checkpoints,
signals, metrics log and trackers as supervised training; only the trainer and its rows differ.

The rows are the data stage's own (the same artifact SFT trains on, so a GRPO spec with SFT's data
section shares that stage): each example's prompt tokens, decoded, are the prompt as training renders
it, and its answer tokens give the key the rewards check (a multiple_choice answer's letter, a qa
answer's words). torch, transformers and trl are imported inside the functions (see loop.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runner.machine.profile import Profile
from runner.scoring.rewards import LETTER, TEXT, reward_functions
from runner.spec.typed import Spec
from runner.stages.train.batches import MetricsLog
from runner.stages.train.chaining import put_reference_back, set_reference_aside
from runner.stages.train.engine import vllm_settings

OPTION = re.compile(r"^([A-Z])\. ", re.MULTILINE)  # an option line of the multiple-choice prompt (formats.to_question)
# What metrics.jsonl keeps of GRPO's logs, beside SFT's loss, learning rate and grad norm.
GRPO_LOGS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
             "frac_reward_zero_std")


def prompt_rows(rows: Any, tok: Any) -> list[dict[str, Any]]:
    """{prompt, answer, kind, choices} for each tokenized example (input_ids, labels) of the data stage."""
    out = []
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        start = next((i for i, label in enumerate(labels) if label != -100), len(ids))
        prompt_ids = ids[:start]
        if prompt_ids and prompt_ids[0] == tok.bos_token_id:
            prompt_ids = prompt_ids[1:]  # the trainer's tokenizer adds it again
        prompt = tok.decode(prompt_ids, skip_special_tokens=False)
        answer = tok.decode([t for t in labels[start:] if t != -100], skip_special_tokens=True).strip()
        out.append(key_of(prompt, answer))
    return out


def key_of(prompt: str, answer: str) -> dict[str, Any]:
    """The key a reward checks: the letter when the answer picks one of the prompt's options, else its words."""
    letters = OPTION.findall(prompt)
    picked = re.match(r"^\(?([A-Z])[.)]", answer)
    if letters and picked and picked.group(1) in letters:
        return {"prompt": prompt, "answer": picked.group(1), "kind": LETTER, "choices": len(letters)}
    return {"prompt": prompt, "answer": answer, "kind": TEXT, "choices": 0}


def grpo_args(spec: Spec, profile: Profile, output_dir: Path) -> Any:
    """GRPOConfig with the supervised trainer's settings (training_args) and the spec's GRPO section."""
    from trl import GRPOConfig

    from runner.stages.train.trainer import training_args

    base = training_args(spec, profile, output_dir).to_dict()
    drop = {"eval_strategy", "eval_steps", "metric_for_best_model", "greater_is_better", "eval_on_start",
            "restore_callback_states_from_checkpoint", "train_sampling_strategy", "data_seed"}
    kept = {k: v for k, v in base.items() if k not in drop and not k.startswith("_")
            and k in GRPOConfig.__dataclass_fields__ and GRPOConfig.__dataclass_fields__[k].init}
    g = spec.train.grpo
    own = {"num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
           "temperature": g.temperature, "beta": g.beta, "reward_weights": [r.weight for r in g.rewards],
           "data_seed": spec.seed, "log_completions": False,
           "gradient_checkpointing": False,  # enabled on the model, as for SFT (trainer.attach_lora)
           # the model trains with use_cache off (attach_lora); generation wants its KV cache
           "generation_kwargs": {"use_cache": True}}
    return GRPOConfig(**(kept | own | vllm_settings(spec, profile)))


class GrpoMetricsLog(MetricsLog):
    """metrics.jsonl rows as SFT writes them, plus each reward's mean, std and shares, the total reward,
    KL and completion length of the step (TRL logs them with the loss)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        self._extra = {k: v for k, v in (logs or {}).items() if k.startswith("rewards/") or k in GRPO_LOGS}
        super().on_log(args, state, control, logs, **kw)

    def _append(self, row: dict[str, Any]) -> None:
        super()._append({**row, **getattr(self, "_extra", {})} if "loss" in row else row)


def build_grpo_trainer(model: Any, spec: Spec, profile: Profile, work: Path, train_rows: Any, tok: Any,
                       metrics: Path) -> Any:
    """A GRPOTrainer over `model` (already carrying its LoRA adapters, so TRL wraps nothing) that
    checkpoints into work/checkpoints, logs each step to `metrics`, and stops on a signal."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOTrainer

    from runner.report.trackers import tracker_log
    from runner.rows.templates import template_of
    from runner.stages.train.batches import QuietProgress, StopOnSignal

    funcs: list[Any] = reward_functions(spec, template_of(tok))[0]  # TRL types a reward as returning list[float | None]
    tracked = tracker_log(spec, work)
    callbacks = [GrpoMetricsLog(metrics, profile.device, tracked.row if tracked else None), StopOnSignal()]
    callbacks += [tracked] if tracked else []
    tok.padding_side = "left"  # generation appends to the prompt: pad before it
    reference = set_reference_aside(model)  # an out-of-memory retry's model has the first trainer's KL reference
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=grpo_args(spec, profile, work / "checkpoints"),
                          train_dataset=Dataset.from_list(prompt_rows(train_rows, tok)), processing_class=tok,
                          callbacks=callbacks)
    put_reference_back(model, reference)
    # TRL casts a quantized model's adapters to bf16 (the QLoRA paper's advice on GPU); SFT trains them in
    # fp32 (peft's autocast), and bf16 steps on CPU lose the small updates: keep them as SFT has them.
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer


def drop_reference(model: Any) -> None:
    """TRL keeps a frozen copy of a starting adapter as its KL reference ("ref", with beta > 0): the
    adapter written is the trained one alone."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")
