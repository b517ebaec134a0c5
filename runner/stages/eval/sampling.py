"""Generative evaluation of a model that reasons: k sampled texts per question (a thinking budget, stop
strings, batched with the KV cache), checkpointed batch by batch, the answer extracted as the harness
extracts it, and the samples voted.

Reproducible by construction: questions are batched in one fixed order (longest prompt first, then by
index), and each batch seeds the sampler with `seed + batch number` before it generates, so a batch's
texts depend on the seed and the batch alone, never on which batches ran before. That is what lets a
killed evaluation resume: the batches already in the checkpoint are read back, the others are
generated as they would have been, and the predictions are identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.rows.templates import template_of
from runner.scoring.consistency import compare, consistency, per_question
from runner.scoring.extract import option_texts, read_choice, reading_think_end, steps_from
from runner.spec.typed import Generative, Spec


@dataclass(frozen=True)
class Budget:
    """How each question is written: what generation reads of the spec, in one place."""

    max_new_tokens: int
    samples: int
    temperature: float
    top_p: float
    thinking_budget: int | None
    think_end: str
    stop: tuple[str, ...]
    seed: int
    batch_size: int

    @classmethod
    def of(cls, gen: Generative, seed: int, batch_size: int) -> Budget:
        return cls(gen.max_new_tokens, gen.samples, gen.temperature, gen.top_p, gen.thinking_budget, gen.think_end,
                   gen.stop, seed, batch_size)


def think_end_of(spec: Spec, tok: Any) -> str:
    """`eval.generative.think_end` as written; left at its default, the delimiter training closed the traces
    with: the chat template's `</think>` where it takes the trace as `reasoning_content`, else
    `data.reasoning.think_end` (a spec that changes it need not repeat it here)."""
    return reading_think_end(spec, template_of(tok))  # GRPO's answer_correct reads after the same one


def batches_of(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Question indexes in batches, longest prompt first (a batch pads little), ties by index."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def read_checkpoint(path: Path) -> dict[int, list[str]]:
    """The texts of the questions already written; a line cut short by a kill is cut off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        with open(path, "r+b") as handle:  # the next append must start on a fresh line
            handle.truncate(len(whole))
    done: dict[int, list[str]] = {}
    for line in whole.decode("utf-8").splitlines():
        row = json.loads(line)
        done[int(row["index"])] = list(row["texts"])
    return done


def sample_texts(model: Any, tok: Any, prompts: list[list[int]], budget: Budget, checkpoint: Path,
                 log: Callable[[str], None]) -> list[list[str]]:
    """Each question's `samples` texts, resuming from (and appending to) `checkpoint`."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    done = read_checkpoint(checkpoint)
    batches = batches_of(prompts, budget.batch_size)
    todo = [b for b, chunk in enumerate(batches) if not all(i in done for i in chunk)]
    if len(todo) < len(batches):
        log(f"eval: resuming, {len(batches) - len(todo)} of {len(batches)} batches read from {checkpoint.name}")
    with open(checkpoint, "a", encoding="utf-8") as handle:
        for b in todo:
            chunk = batches[b]
            texts = write_batch(model, tok, [prompts[i] for i in chunk], budget, budget.seed + b)
            for i, t in zip(chunk, texts):
                done[i] = t
                handle.write(json.dumps({"index": i, "texts": t}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # a batch on disk is a batch never generated again
    return [done[i] for i in range(len(prompts))]


def write_batch(model: Any, tok: Any, prompts: list[list[int]], budget: Budget, seed: int) -> list[list[str]]:
    """One batch: per prompt `samples` texts; with a thinking budget, thinking first, then the answer."""
    import torch

    torch.manual_seed(seed)
    rows = [list(p) for p in prompts for _ in range(budget.samples)]  # (B*k) rows, each prompt's k together
    heads = [""] * len(rows)
    if budget.thinking_budget is not None:
        new = _generate(model, tok, rows, budget.thinking_budget, budget, (budget.think_end,))
        end = tok(budget.think_end, add_special_tokens=False).input_ids
        for r, ids in enumerate(new):
            text = tok.decode(ids, skip_special_tokens=True)
            if budget.think_end in text:  # stopped at the delimiter: keep the tokens as written
                heads[r] = text[: text.index(budget.think_end) + len(budget.think_end)]
                rows[r] = rows[r] + ids
            else:  # out of budget (or ended): the thinking is closed for it
                heads[r] = text + budget.think_end
                rows[r] = rows[r] + ids + end
    tails = _generate(model, tok, rows, budget.max_new_tokens, budget, budget.stop)
    texts = [h + _cut(tok.decode(ids, skip_special_tokens=True), budget.stop) for h, ids in zip(heads, tails)]
    k = budget.samples
    return [texts[j * k : (j + 1) * k] for j in range(len(prompts))]


def _cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string, as lm-eval's `until` cuts it."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def _generate(model: Any, tok: Any, rows: list[list[int]], max_new: int, budget: Budget,
              stop: Sequence[str]) -> list[list[int]]:
    """New token ids per row (left-padded batch, KV cache, each row stopping at EOS or a stop string),
    without the padding and end-of-sequence tokens after a row's end."""
    import torch

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T), left-padded
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad, "do_sample": budget.temperature > 0}
    if budget.temperature > 0:
        kwargs |= {"temperature": budget.temperature, "top_p": budget.top_p, "top_k": 0}
    if stop:
        kwargs |= {"stop_strings": list(stop), "tokenizer": tok}
    with torch.inference_mode():
        new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)[:, width:]
    out = []
    for row in new.tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        out.append(row)
    return out


def choice_texts(item: Any) -> tuple[str, ...]:
    """The choices' own texts (what lm-eval's `doc["choices"]` holds, read by `multi_choice_regex`): the
    "A. text" lines of the prompt, or the choices themselves when they are words (yes/no/maybe)."""
    if not all(len(c) == 1 for c in item.choices):
        return tuple(item.choices)
    return option_texts(item.prompt, item.choices)


def read_answers(texts: list[list[str]], items: Sequence[Any], gen: Generative) -> list[list[str | None]]:
    """Each sample's answer, read by the spec's filters or its named pipeline (extract.read_choice, as
    GRPO's answer_correct reads it); None: a failure."""
    steps = steps_from([{k: v for k, v in vars(f).items() if v is not None} for f in gen.filters])
    how = steps or gen.extract
    return [[read_choice(t, item.choices, how, gen.think_end, choice_texts(item)) for t in samples]
            for samples, item in zip(texts, items)]


def summary(answers: dict[str, list[list[str | None]]], keys: list[str], gen: Generative) -> dict[str, Any]:
    """The benchmark's generative summary: per model the vote's accuracy (under the label, as the greedy
    mode reports it), its self-consistency figures, and base vs tuned paired on the vote and on sample 1."""
    out: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "samples": gen.samples,
                           "decoding": "sampled" if gen.temperature > 0 else "greedy", "temperature": gen.temperature,
                           "thinking_budget": gen.thinking_budget, "extract": "filters" if gen.filters else gen.extract,
                           "consistency": {}}
    for label, rows in answers.items():
        c = consistency(rows, keys)
        out["consistency"][label] = c
        out[label] = c["vote"] | {"unreadable": c["failed_votes"], "failed_samples": c["failed_samples"]}
    if "base" in answers and "tuned" in answers:
        both = compare(answers["base"], answers["tuned"], keys)
        out["paired"] = both["vote"]
        out["paired_single"] = both["single"]
    return out


def prediction_fields(label: str, texts: list[str], answers: list[str | None], key: str) -> dict[str, Any]:
    """What predictions.jsonl gains per question and model."""
    q = per_question(answers, key)
    # `_generated` stays one text (sample 1), as the greedy mode writes it and the report reads it.
    return {f"{label}_generated": texts[0], f"{label}_samples": texts, f"{label}_answers": q["answers"],
            f"{label}_vote": q["vote"], f"{label}_agreement": q["agreement"]}
