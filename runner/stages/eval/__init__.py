"""Stage `eval`: benchmark accuracy by log-likelihood (as lm-evaluation-harness scores it), base model
vs fine-tuned in one stage, answers to the spec's queries side by side, and the run's report.

The adapter is loaded over the same base the way it was trained (4-bit when training was), and the
base score comes from the same model with the adapter switched off: one load, two scores. The train
artifact is upstream for its loss curve and summary, which only the report reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from runner.core.outputs import EvalMetrics
from runner.core.stage import StageContext, benchmark_ids_role, benchmark_role
from runner.models.adapter import adapter_off
from runner.rows.mixture import file_roles, is_mixture, resolved
from runner.rows.reading import read_rows
from runner.rows.slices import mixture_slice
from runner.scoring.benchmarks import HARNESS_TASKS, Item, benchmark_items
from runner.scoring.significance import summarize
from runner.spec.slices import benchmark_slice, fields_slice, hub_slice, quantization_slice
from runner.spec.typed import (
    FREE_TEXT,  # benchmark formats answered in free text, scored by ROUGE-L and BLEU
    Benchmark,
    Generative,
    Spec,
)

PERPLEXITY_ROLE = "perplexity"

name = "eval"
version = 6  # 2: harness-exact scoring, built-in formats, paired test, groups, queries, contamination;
# 3: McNemar p to 4 significant digits; 4: choices as branches off the prompt's cache (rounding may differ);
# 5: identical questions share rows correctly (a twin with fewer choices was scored 0);
# 6: calibration (ECE, Brier, selective accuracy) in metrics.json; free-text sets; perplexity
upstream = ("model", "train:adapter", "export:adapter")
volatile = ("report.md", "report.html", "*.png")  # pictures and prose: cosmetic, out of the digest
uses_profile = True
gate = None  # nothing to check before it builds
side_effect = None  # it acts on nothing outside the store


def spec_slice(spec: Spec) -> dict[str, Any]:
    ev = spec.eval
    out: dict[str, Any] = {
        "eval": {"benchmarks": [benchmark_slice(b) for b in ev.benchmarks], "compare_base": ev.compare_base,
                 "chat_template": ev.chat_template},
        "model": quantization_slice(spec.model)}
    if ev.generative.enabled:  # left out when off: keys of specs without it stay as they were
        # Batched greedy decoding pads each batch its own way: a rounding-level change can change a text.
        out["eval"]["generative"] = {"enabled": ev.generative.enabled, "max_new_tokens": ev.generative.max_new_tokens,
                                     "batch_size": ev.batch_size} | reasoning_slice(spec)
        if ev.generative.temperature > 0:
            out["seed"] = spec.seed  # the samples draw from it
    if ev.abstain is not None:  # left out when unset: only what metrics.json counts as answered changes
        out["eval"]["abstain"] = {"signal": ev.abstain.signal, "threshold": ev.abstain.threshold}
    if ev.contamination.check:  # what the check reads of the training data
        d = spec.data
        if isinstance(d.train, tuple):  # a mixture: every training source, as the data stage reads it
            out["eval"]["contamination"] = {"similarity": ev.contamination.similarity, "max_rows": d.max_rows,
                                            "train": mixture_slice(spec)["data"]["train"]}
        else:
            out["eval"]["contamination"] = {"similarity": ev.contamination.similarity, "format": d.format,
                                            "fields": fields_slice(d.fields), "max_rows": d.max_rows,
                                            "train": hub_slice(d.train)}
    if ev.queries:  # answers depend on these only when there is something to answer
        g = ev.generation
        out["eval"] |= {"queries": list(ev.queries),
                        "generation": {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p},
                        "safety": _safety_slice(spec)}
        out["data"] = {"template": spec.data.template, "system_prompt": spec.data.system_prompt}
        if g.temperature > 0:
            out["seed"] = spec.seed  # sampling draws from it; greedy decoding does not
    if any(b.format in FREE_TEXT for b in ev.benchmarks):  # greedy answers, prompted as training prompted
        out["eval"]["free_text"] = {"max_new_tokens": ev.generation.max_new_tokens, "batch_size": ev.batch_size}
        out["data"] = {"template": spec.data.template, "system_prompt": spec.data.system_prompt}
    if ev.perplexity is not None:  # the corpus enters by its digest; windows are data.max_length tokens
        out["eval"]["perplexity"] = {"field": ev.perplexity.field, "max_texts": ev.perplexity.max_texts,
                                     "max_length": spec.data.max_length, "batch_size": ev.batch_size}
    return out


def reasoning_slice(spec: Spec) -> dict[str, Any]:
    """The generative fields set away from their defaults (only those: keys of specs without them stay)."""
    gen, default = spec.eval.generative, Generative()
    names = ("samples", "temperature", "top_p", "thinking_budget", "think_end", "stop", "extract", "filters")
    out = {n: getattr(gen, n) for n in names if getattr(gen, n) != getattr(default, n)}
    if "filters" in out:
        out["filters"] = [dataclasses.asdict(f) for f in gen.filters]
    if "stop" in out:
        out["stop"] = list(gen.stop)
    return out


def _safety_slice(spec: Spec) -> dict[str, Any]:
    return {"builtin": spec.eval.safety.builtin,
            "rules": [{"name": r.name, "pattern": r.pattern, "unless": r.unless} for r in spec.eval.safety.rules]}


def local_files(spec: Spec) -> dict[str, Path]:
    files = {benchmark_role(b.name): spec.resolve(b.path) for b in spec.eval.benchmarks if b.path is not None}
    files |= {benchmark_ids_role(b.name): spec.resolve(b.ids) for b in spec.eval.benchmarks if b.ids is not None}
    if spec.eval.contamination.check:
        for src in resolved(spec, "train"):
            files |= file_roles(spec, src, one_source=not is_mixture(spec))
    if spec.eval.perplexity is not None:
        files[PERPLEXITY_ROLE] = spec.resolve(spec.eval.perplexity.path)
    return files


def run(ctx: StageContext) -> None:
    from runner.models.loading import cpu_threads

    with cpu_threads(ctx.profile.threads):  # in the key on CPU: the scores' float sums follow it
        _evaluate(ctx)


@dataclass(frozen=True)
class Loaded:
    """Everything the stage reads from files, read before the model loads."""

    choice: dict[str, tuple[list[Item], dict[str, int]]]  # multiple-choice benchmarks: items, dropped rows
    free: dict[str, tuple[list[Any], dict[str, int]]]  # free-text benchmarks: examples, dropped rows
    corpus: list[str]  # the perplexity corpus (empty without eval.perplexity)


def read_inputs(ctx: StageContext) -> Loaded:
    """Every benchmark and the corpus, read before the model loads: a broken file stops the stage at
    once, naming its line, not after the benchmarks before it were scored."""
    from runner.stages.eval.freetext import free_text_examples
    from runner.stages.eval.perplexity import read_corpus

    spec = ctx.spec
    rows = {b.name: read_rows(b, ctx.files.get(benchmark_role(b.name)), None) for b in spec.eval.benchmarks}
    choice = {b.name: benchmark_items(b, rows[b.name], ctx.files.get(benchmark_ids_role(b.name)))
              for b in spec.eval.benchmarks if b.format not in FREE_TEXT}
    free = {b.name: free_text_examples(b, rows[b.name]) for b in spec.eval.benchmarks if b.format in FREE_TEXT}
    ppl = spec.eval.perplexity
    corpus = read_corpus(ctx.files[PERPLEXITY_ROLE], ppl.field, ppl.max_texts) if ppl is not None else []
    return Loaded(choice, free, corpus)


def _evaluate(ctx: StageContext) -> None:
    from peft import PeftModel

    from runner.models.loading import load_base, load_tokenizer
    from runner.report.trackers import require_trackers
    from runner.rows.training_texts import training_texts_of
    from runner.stages.eval.freetext import score_free_text
    from runner.stages.eval.generation import answer_queries

    spec = ctx.spec
    require_trackers(spec)  # a missing tracker package stops the stage before scoring, not after
    loaded = read_inputs(ctx)
    tok = load_tokenizer(ctx.upstream["model"])
    model = PeftModel.from_pretrained(load_base(ctx.upstream["model"], spec, ctx.profile),
                                      str(ctx.upstream["export"] / "adapter"))
    model.eval()
    labels = ("base", "tuned") if spec.eval.compare_base else ("tuned",)
    results: dict[str, Any] = {}
    train_texts: list[str] = []
    if spec.eval.contamination.check and (loaded.choice or loaded.free):
        train_texts, _ = training_texts_of(spec, ("train",))
    with open(ctx.out / "predictions.jsonl", "w", encoding="utf-8") as preds_file:
        for bench in (b for b in spec.eval.benchmarks if b.name in loaded.choice):
            results[bench.name] = score_benchmark(ctx, model, tok, bench, loaded.choice[bench.name], labels,
                                                  preds_file, train_texts)
    answers = answer_queries(model, tok, spec, labels, adapter_off) if spec.eval.queries else []
    with open(ctx.out / "generations.jsonl", "w", encoding="utf-8") as handle:
        for row in answers:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    metrics = {"benchmarks": results, "chat_template": spec.eval.chat_template,
               "scoring": "zero-shot log-likelihood of each choice, as lm-evaluation-harness 0.4 (acc)",
               "flags": sum(len(flags) for row in answers for flags in row["flags"].values())}
    if loaded.free:
        with open(ctx.out / "free_text.jsonl", "w", encoding="utf-8") as rows_file:
            metrics["free_text"] = {b.name: score_free_text(ctx, model, tok, b, loaded.free[b.name], labels, rows_file)
                                    for b in spec.eval.benchmarks if b.name in loaded.free}
    if spec.eval.perplexity is not None:
        metrics["perplexity"] = corpus_perplexity(ctx, model, tok, loaded.corpus, labels)
    _finish(ctx, metrics, answers, loaded, train_texts)


def _finish(ctx: StageContext, metrics: dict[str, Any], answers: list[dict[str, Any]], loaded: Loaded,
            train_texts: list[str]) -> None:
    """metrics.json, the report (it also shows sample answers and the free-text benchmarks' contamination:
    prose, out of the digest), and the trackers the spec names (a side effect, after the outputs)."""
    from runner.report.render import write_report
    from runner.report.trackers import log_eval

    written = EvalMetrics.of(metrics)
    written.write(ctx.out / "metrics.json")
    write_report(ctx, written, answers, loaded, train_texts)
    log_eval(ctx, metrics)


def corpus_perplexity(ctx: StageContext, model: Any, tok: Any, corpus: list[str], labels: tuple[str, ...]) -> dict[str, Any]:
    from runner.stages.eval.perplexity import perplexity

    spec = ctx.spec
    assert spec.eval.perplexity is not None
    out: dict[str, Any] = {"path": spec.eval.perplexity.path, "texts": len(corpus), "max_length": spec.data.max_length}
    for label in labels:
        ctx.log(f"eval: perplexity, {label} model, {len(corpus)} texts")
        with adapter_off(model, label == "base"):
            out[label] = perplexity(model, tok, corpus, spec.data.max_length, spec.eval.batch_size)
    out["tokens"] = out["tuned"]["tokens"]
    return out


def score_benchmark(ctx: StageContext, model: Any, tok: Any, bench: Benchmark,
                    loaded: tuple[list[Item], dict[str, int]], labels: tuple[str, ...], preds_file: TextIO,
                    train_texts: list[str]) -> dict[str, Any]:
    """Score one benchmark's items with each model; write its predictions; return its summary."""
    from runner.scoring.loglik import max_length_of, predictions, requests_for, score

    spec = ctx.spec
    items, dropped = loaded
    chat = spec.eval.chat_template
    # With a chat template the harness scores "A", not " A": the template ends the prompt.
    requests = requests_for(items, tok, _renderer(tok) if chat else (lambda prompt: prompt), "" if chat else " ")
    scored: dict[str, list[int]] = {}
    logliks: dict[str, list[float]] = {}
    for label in labels:
        ctx.log(f"eval: {bench.name}, {label} model, {len(items)} questions")
        with adapter_off(model, label == "base"):
            logliks[label] = score(model, requests, spec.eval.batch_size, tok.pad_token_id, max_length_of(model, tok))
        scored[label] = predictions(len(items), requests, logliks[label])
    written: dict[str, list[str]] = {}
    sampled: dict[str, Any] = {}
    if spec.eval.generative.enabled and spec.eval.generative.reasoning:
        sampled = sampled_answers(ctx, model, tok, bench, items, requests, labels)
    elif spec.eval.generative.enabled:
        written = generate_answers(ctx, model, tok, items, requests, labels)
    signals = answer_signals(ctx, model, tok, items, requests, logliks, scored, written)
    rows = prediction_rows(bench, items, scored, written, sampled, signals)
    for row in rows:
        preds_file.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = summarize([it.answer for it in items], [it.group for it in items], scored, dropped)
    if written:
        summary["generative"] = generative_summary(items, written, spec.eval.generative.max_new_tokens)
    if sampled:
        summary["generative"] = sampled["summary"]
    summary["calibration"] = calibration_of(items, requests, logliks)
    summary["uncertainty"] = uncertainty_of(spec, rows)
    summary["format"] = bench.format
    summary["harness_task"] = HARNESS_TASKS.get(bench.format)
    summary["chance"] = round(sum(1 / len(it.choices) for it in items) / len(items), 4) if items else None
    if spec.eval.contamination.check:
        summary["contamination"] = contamination(items, scored, train_texts, spec.eval.contamination.similarity)
    return summary


def prediction_rows(bench: Benchmark, items: list[Item], scored: dict[str, list[int]], written: dict[str, list[str]],
                    sampled: dict[str, Any], signals: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One predictions.jsonl row per item: the picks, the texts written, the samples and their vote, the signals."""
    rows = []
    for i, item in enumerate(items):
        row: dict[str, Any] = {"benchmark": bench.name, "index": i, "id": item.id, "group": item.group, "answer": item.answer,
               **{label: preds[i] for label, preds in scored.items()}}
        for label, texts in written.items():
            row[f"{label}_generated"] = texts[i]
        for extra in sampled.get("rows", {}).values():
            row |= extra[i]
        row["signals"] = {label: per_item[i] for label, per_item in signals.items()}
        for label in sampled.get("rows", {}):  # the vote's agreement: a confidence the samples give for free
            row["signals"][label]["vote"] = {"confidence": row[f"{label}_agreement"],
                                             "correct": row[f"{label}_vote"] == item.choices[item.answer]}
        rows.append(row)
    return rows


def answer_signals(ctx: StageContext, model: Any, tok: Any, items: list[Item], requests: list[Any],
                   logliks: dict[str, list[float]], scored: dict[str, list[int]],
                   written: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Each answer's confidence signals, per model and item (see confidence.py)."""
    from runner.stages.eval.confidence import loglik_signals, merged, token_signals

    found = [("loglik", loglik_signals(items, requests, logliks, scored))]
    if written:
        ctx.log(f"eval: scoring the generated answers' token probabilities, {len(items)} questions")
        picked = {label: picked_of(items, texts) for label, texts in written.items()}
        found.append(("token_prob", token_signals(model, tok, items, requests, written, picked,
                                                  ctx.spec.eval.batch_size, adapter_off)))
    return merged(*found)


def uncertainty_of(spec: Spec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Risk-coverage, AURC, ECE and Brier per model and signal; the spec's abstention rule when it has one."""
    from runner.scoring.selective import uncertainty

    rule = spec.eval.abstain
    return uncertainty(rows, (rule.signal, rule.threshold) if rule is not None else None)


def calibration_of(items: list[Item], requests: list[Any], logliks: dict[str, list[float]]) -> dict[str, Any]:
    """ECE, Brier and selective accuracy per model, from the choices' scores (requests are in item, choice order)."""
    from runner.scoring.calibration import BINS, PROBABILITIES, calibration

    out: dict[str, Any] = {"probabilities": PROBABILITIES, "bins": BINS}
    for label, scores in logliks.items():
        per_item: list[list[float]] = [[] for _ in items]
        for r, ll in zip(requests, scores):
            per_item[r.item].append(ll)
        out[label] = calibration(per_item, [it.answer for it in items])
    return out


def generate_answers(ctx: StageContext, model: Any, tok: Any, items: list[Any], requests: list[Any],
                     labels: tuple[str, ...]) -> dict[str, list[str]]:
    """Each model's greedy answer to each question, after the very prompt tokens the scoring used."""
    from runner.scoring.loglik import max_length_of
    from runner.stages.eval.generation import generate_batch

    gen = ctx.spec.eval.generative
    room = max(1, max_length_of(model, tok) - gen.max_new_tokens)  # left-truncated, as scoring does
    prompts, seen = [], set()
    for r in requests:  # one context per item, tokenized as scored
        if r.item not in seen:
            seen.add(r.item)
            prompts.append(list(r.context[-room:]))
    written = {}
    for label in labels:
        ctx.log(f"eval: generating answers, {label} model, {len(items)} questions, {gen.max_new_tokens} tokens each")
        with adapter_off(model, label == "base"):
            written[label] = generate_batch(model, tok, prompts, gen.max_new_tokens, ctx.spec.eval.batch_size)
    return written


def sampled_answers(ctx: StageContext, model: Any, tok: Any, bench: Benchmark, items: list[Any],
                    requests: list[Any], labels: tuple[str, ...]) -> dict[str, Any]:
    """Each model's k sampled texts per question (checkpointed in the work folder, so a killed eval
    resumes), the answers read off them, the vote; the summary and the predictions' extra fields."""
    from runner.stages.eval.sampling import Budget, prediction_fields, read_answers, sample_texts, summary, think_end_of

    gen = dataclasses.replace(ctx.spec.eval.generative, think_end=think_end_of(ctx.spec, tok))
    budget = Budget.of(gen, ctx.spec.seed, ctx.spec.eval.batch_size)
    prompts = _generation_prompts(model, tok, requests, gen.max_new_tokens + (gen.thinking_budget or 0))
    answers, rows = {}, {}
    keys = [it.choices[it.answer] for it in items]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", bench.name)[:80]
    for label in labels:
        ctx.log(f"eval: {bench.name}, writing {gen.samples} answer(s) per question, {label} model, "
                f"{len(items)} questions, {gen.max_new_tokens} tokens" +
                (f" after up to {gen.thinking_budget} of thinking" if gen.thinking_budget else ""))
        with adapter_off(model, label == "base"):
            texts = sample_texts(model, tok, prompts, budget, ctx.work / "generations" / f"{safe}.{label}.jsonl",
                                 ctx.log)
        answers[label] = read_answers(texts, items, gen)
        rows[label] = [prediction_fields(label, t, a, k) for t, a, k in zip(texts, answers[label], keys)]
    return {"summary": summary(answers, keys, gen), "rows": rows}


def _generation_prompts(model: Any, tok: Any, requests: list[Any], new_tokens: int) -> list[list[int]]:
    """One context per item, tokenized as scored, left-truncated to leave room for what is written."""
    from runner.scoring.loglik import max_length_of

    room = max(1, max_length_of(model, tok) - new_tokens)
    prompts, seen = [], set()
    for r in requests:
        if r.item not in seen:
            seen.add(r.item)
            prompts.append(list(r.context[-room:]))
    return prompts


def generative_summary(items: list[Any], written: dict[str, list[str]], max_new_tokens: int) -> dict[str, Any]:
    """Accuracy of the answers read off the generated text; an unreadable answer counts as wrong."""
    from runner.scoring.significance import accuracy, paired

    out: dict[str, Any] = {"max_new_tokens": max_new_tokens, "decoding": "greedy"}
    correct = {}
    for label, texts in written.items():
        picked = picked_of(items, texts)
        correct[label] = [p == it.answer for p, it in zip(picked, items)]
        out[label] = accuracy(correct[label]) | {"unreadable": sum(p is None for p in picked)}
    if "base" in correct:
        out["paired"] = paired(correct["base"], correct["tuned"])
    return out


def picked_of(items: list[Any], texts: list[str]) -> list[int | None]:
    """The choice read off each generated text (None: unreadable)."""
    from runner.scoring.benchmarks import extract_choice

    return [extract_choice(_first_line(t), it.choices) for t, it in zip(texts, items)]


def _first_line(text: str) -> str:
    """The answer, not what the model rambles on to (the next "Question:" of a plain prompt)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def contamination(items: list[Any], scored: dict[str, list[int]], train_texts: list[str],
                  similarity: float) -> dict[str, Any]:
    """Benchmark questions found in the training data, and the accuracy on the others."""
    from runner.rows.contamination import overlaps
    from runner.scoring.significance import accuracy

    found = overlaps(train_texts, [it.prompt for it in items], similarity)
    seen = {o.item for o in found}
    clean = [i for i in range(len(items)) if i not in seen]
    return {"exact": sum(o.similarity == 1.0 for o in found), "near": sum(o.similarity < 1.0 for o in found),
            "similarity": similarity, "pairs": [vars(o) for o in found[:50]],
            "clean": {label: accuracy([preds[i] == items[i].answer for i in clean]) for label, preds in scored.items()}}


def _renderer(tok: Any) -> Any:
    def render(prompt: str) -> str:
        text: str = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
        return text

    return render
