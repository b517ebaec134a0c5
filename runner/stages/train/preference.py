"""The preference methods (train.method dpo, orpo, kto): TRL's DPOTrainer, ORPOTrainer and KTOTrainer,
built by the train loop's one dispatch on train.method (runner.stages.train.loop.train).

Each is given what SFT's Trainer is given: the same model (the QLoRA base with the spec's adapters),
the same arguments from the spec and the fitted profile, and the same callbacks (metrics log,
signals, trackers, progress), so checkpoints, resume, out-of-memory retries and the run record are
the loop's, whatever the method.

The data stage has tokenized the rows (runner.stages.data.encoding.encode_pair), with the chat
template and masking SFT uses: each trainer's own tokenizing is skipped, and the rows are only cut
into the columns its collator reads. The reference of DPO and KTO is the base with the adapter
disabled, never a second copy of the model. torch, transformers and trl are imported inside the
functions (see runner.stages.train.loop).
"""

from __future__ import annotations

from typing import Any

from runner.core.stage import StageContext
from runner.machine.profile import Profile
from runner.stages.train.chaining import put_reference_back, set_reference_aside

PREFERENCE_METHODS = ("dpo", "orpo", "kto")
# TRL's evaluation metrics under the names our summary keeps (no "/": a "/" names a source there).
MEASURED = {"eval_rewards/accuracies": "eval_preference_accuracy", "eval_rewards/margins": "eval_reward_margin",
            "eval_log_odds_ratio": "eval_log_odds_ratio", "eval_kl": "eval_kl"}


def build_preference_trainer(ctx: StageContext, ready: Any, profile: Profile) -> Any:
    """TRL's DPOTrainer, ORPOTrainer or KTOTrainer over our model, rows, arguments and callbacks."""
    from transformers.trainer_callback import ProgressCallback

    from runner.models.loading import load_tokenizer
    from runner.stages.train.batches import QuietProgress
    from runner.stages.train.trainer import callbacks_for

    spec, method = ctx.spec, ctx.spec.train.method
    tok = load_tokenizer(ctx.upstream["model"])
    config_cls, trainer_cls = _trl_classes(method)
    args = config_cls(**method_arguments(spec, profile, ctx.work / "checkpoints"))
    train_rows = trl_rows(ready.train_rows, method)
    val_rows = trl_rows(ready.val_rows, method) if len(ready.val_rows) else None
    kwargs: dict[str, Any] = {"ref_model": None} if method != "orpo" else {}
    reference = set_reference_aside(ready.model)  # an out-of-memory retry's model has the first trainer's
    start = {name: p.detach().clone() for name, p in ready.model.named_parameters() if p.requires_grad}
    trainer = trainer_cls(model=ready.model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                          processing_class=tok, callbacks=callbacks_for(spec, profile, ctx.work, ready.metrics),
                          **kwargs)
    _reference_is_the_base(ready.model, spec)
    _keep_start(ready.model, start)
    put_reference_back(ready.model, reference)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer


def method_arguments(spec: Any, profile: Profile, output_dir: Any) -> dict[str, Any]:
    """The TRL config's arguments: the SFT ones (runner.stages.train.trainer.training_kwargs), then the method's."""
    from runner.stages.train.trainer import training_kwargs

    t = spec.train
    kwargs = training_kwargs(spec, profile, output_dir)
    # Checkpointing is set on the model (attach_lora), as for SFT; TRL's configs would turn it on again.
    kwargs |= {"gradient_checkpointing": False, "dataset_num_proc": None}
    if t.method == "dpo":
        # max_length None: the data stage dropped what is longer than data.max_length, so nothing is cut here.
        return kwargs | {"beta": t.dpo.beta, "loss_type": [t.dpo.loss_type], "label_smoothing": t.dpo.label_smoothing,
                         "max_length": None, "precompute_ref_log_probs": False}
    if t.method == "kto":
        # KTO estimates its KL term from completions rotated within a batch (see kto_rows): the order is fixed.
        return kwargs | {"beta": t.kto.beta, "desirable_weight": t.kto.desirable_weight,
                         "undesirable_weight": t.kto.undesirable_weight, "max_length": None,
                         "train_sampling_strategy": "sequential", "precompute_ref_log_probs": False}
    return kwargs | {"beta": t.orpo.beta, "max_length": spec.data.max_length}


def _trl_classes(method: str) -> tuple[Any, Any]:
    """(config class, trainer class) for a method: TRL's, taught to take the data stage's tokens."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, _pretokenized(DPOTrainer)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, _pretokenized(KTOTrainer)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # TRL 1.16 keeps ORPO among its experiments

    return ORPOConfig, _orpo(ORPOTrainer)


def _pretokenized(base: Any) -> Any:
    class Pretokenized(base):  # type: ignore[misc,valid-type]
        """TRL's trainer over rows the data stage tokenized: its own tokenizing is skipped."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

        def measure(self) -> dict[str, float]:
            return measured(self.evaluate())

    Pretokenized.__name__ = f"Pretokenized{base.__name__}"
    return Pretokenized


def _orpo(base: Any) -> Any:
    class Pretokenized(base):  # type: ignore[misc,valid-type]
        """ORPO tokenizes each row in its constructor (tokenize_row): here the row already has its tokens."""

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            return feature

        def measure(self) -> dict[str, float]:
            return measured(self.evaluate())

    return Pretokenized


def measured(metrics: dict[str, float]) -> dict[str, float]:
    """The validation loss and the method's held-out figures, under the names the summary keeps."""
    out = {"eval_loss": metrics["eval_loss"]}
    out |= {ours: float(metrics[theirs]) for theirs, ours in MEASURED.items() if theirs in metrics}
    return out


def _reference_is_the_base(model: Any, spec: Any) -> None:
    """TRL gives a PEFT model a frozen copy of its adapter, "ref", as the reference. A fresh LoRA adapter
    starts at zero (B is zero), so the base with the adapter disabled is the same reference without the
    copy: its memory, its forward passes, and an adapter saved beside ours. The copy is kept where the
    start is not exactly the base: a chained adapter (train.init_adapter, e.g. SFT then DPO: the
    reference is where it started), DoRA (its magnitude rescales the 4-bit base's output by a ratio
    only close to 1) and the orthogonal init (B A is zero only up to rounding); measured on the tiny
    model, their held-out reward margin before any step is then exactly 0, as a fresh LoRA's is.
    loop._save_adapter drops the copy: the adapter written is the trained one alone."""
    from runner.machine.memory import keeps_reference_copy

    if not keeps_reference_copy(spec) and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def _keep_start(model: Any, start: dict[str, Any]) -> None:
    """The trainable weights as SFT starts from them, values and dtypes. TRL rounds them to bf16 over
    a 4-bit base (the QLoRA paper's choice on GPUs): on a CPU that made each step some ten times
    slower, the same spec would train other numbers under another method, and a start that was the
    base no longer was (a modules_to_save copy of embed_tokens rounded to bf16 gave a held-out margin
    of -0.001 and 33% accuracy before any step)."""
    for name, param in model.named_parameters():
        if name in start:
            param.data = start[name]
    # The reference copy (if kept, see _reference_is_the_base) is the adapter as it starts.
    for name, param in model.named_parameters():
        if ".ref." in name:
            param.data = model.get_parameter(name.replace(".ref.", ".default.")).data.detach().clone()


def _prompt_length(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


def trl_rows(rows: Any, method: str) -> Any:
    """The data stage's rows (runner.stages.data.building.ArrowRows) as the columns the method's collator
    reads, in memory: a `map` over the stored file would write a cache file into the data artifact."""
    from datasets import Dataset

    columns = {name: rows[name] for name in rows.column_names}
    if method == "kto":
        return Dataset.from_dict(kto_columns(columns))
    pairs = [_pair(*r) for r in zip(columns["input_ids"], columns["labels"], columns["rejected_ids"],
                                    columns["rejected_labels"])]
    if method == "orpo":
        return Dataset.from_list([orpo_row(prompt, chosen, rejected) for prompt, chosen, rejected in pairs])
    return Dataset.from_dict({"prompt_ids": [p for p, _, _ in pairs], "chosen_ids": [c for _, c, _ in pairs],
                              "rejected_ids": [r for _, _, r in pairs]})


def _pair(ids: list[int], labels: list[int], rejected: list[int],
          rejected_labels: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids: the prompt ends where either answer's labels begin."""
    start = min(_prompt_length(labels), _prompt_length(rejected_labels))
    return ids[:start], ids[start:], rejected[start:]


def kto_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """KTO's columns. Its KL term compares each completion with another row's prompt: TRL rotates the
    completions by one within each batch; here, by one over the whole set (sequential order, so a batch
    sees the neighbours it would have)."""
    starts = [_prompt_length(labels) for labels in columns["labels"]]
    prompts = [ids[:s] for ids, s in zip(columns["input_ids"], starts)]
    completions = [ids[s:] for ids, s in zip(columns["input_ids"], starts)]
    return {"prompt_ids": prompts, "completion_ids": completions, "label": list(columns["desirable"]),
            "KL_completion_ids": completions[-1:] + completions[:-1]}


def orpo_row(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict[str, list[int]]:
    """A row as ORPOTrainer.tokenize_row makes it: the prompt, and each answer after it with its labels."""
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        row[f"{side}_input_ids"] = prompt + answer
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{side}_labels"] = [-100] * len(prompt) + answer
    return row


def preference_summary(method: str, before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """The summary's lines of a preference method: held-out preference accuracy and reward margin (DPO,
    KTO's rewards), before and after training; {} for SFT, whose summary has not changed."""
    if method not in PREFERENCE_METHODS:
        return {}
    names = sorted({k for k in {**(before or {}), **(after or {})} if k in MEASURED.values()})
    return {"method": method, "held_out": {n.removeprefix("eval_"): {"before": (before or {}).get(n),
                                                                      "after": (after or {}).get(n)} for n in names}}
