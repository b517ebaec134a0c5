"""The parity gate: each exported form scored against the adapter on the same questions.

The reference is what eval scores: the adapter over its base, loaded as training loaded it (4-bit when
training was). Each form answers the first `export.parity.samples` questions of the spec's benchmarks
with the same prompts, by the log-likelihood of each choice (scoring.py): the merged model through
transformers, each GGUF through llama.cpp (llama-cpp-python) with llama.cpp's own tokenizer, so a
wrong pre-tokenizer or a lost special token shows as disagreement, not only a wrong weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.outputs import ParityReport
from runner.core.stage import StageContext, benchmark_ids_role, benchmark_role
from runner.rows.reading import read_rows
from runner.scoring.benchmarks import Item, benchmark_items
from runner.spec.typed import Spec

TIERS = {"merged": "unquantized", "lora": "unquantized", "f16": "unquantized", "bf16": "unquantized",
         "q8_0": "q8", "q6_k": "q8", "q5_k_m": "q4", "q4_k_m": "q4"}


def sample(ctx: StageContext) -> list[Item]:
    """The first `samples` questions of the spec's benchmarks, in order."""
    wanted, items = ctx.spec.export.parity.samples, list[Item]()
    for b in ctx.spec.eval.benchmarks:
        rows = read_rows(b, ctx.files.get(benchmark_role(b.name)), None)
        items += benchmark_items(b, rows, ctx.files.get(benchmark_ids_role(b.name)))[0][: wanted - len(items)]
    return items


def check(ctx: StageContext, model_dir: Path, ggufs: dict[str, Path]) -> dict[str, Any]:
    """Score every form, write parity.json, and stop (or warn) past the spec's tolerance."""
    from runner.models.loading import load_tokenizer

    items = sample(ctx)
    if not items:
        raise StageError("export.parity: needs questions to score: add a benchmark under eval.benchmarks")
    tok = load_tokenizer(model_dir)
    render, delimiter = _prompting(ctx.spec, tok)
    scores = {"adapter": _adapter(ctx, items, tok, render, delimiter)}
    ctx.log(f"export: parity, {len(items)} questions, merged model")
    scores["merged"] = _merged(ctx, items, tok, render, delimiter)
    for form, path in ggufs.items():
        if form == "base":
            continue
        ctx.log(f"export: parity, {len(items)} questions, GGUF {form}")
        model, lora = (ggufs["base"], path) if form == "lora" else (path, None)
        scores[form] = gguf_scores(model, lora, items, render, delimiter, scores["adapter"]["requests"],
                                   ctx.profile.threads)
    report = summarize(items, scores)
    text = ParityReport.of(report).dumped()  # forms in the order scored: the reference, merged, then each GGUF
    (ctx.out / "parity.json").write_text(text, "utf-8")
    (ctx.work / "parity.json").write_text(text, "utf-8")  # kept when the gate stops the stage
    for line in table(report):
        ctx.log(f"export: {line}")
    judge(ctx.spec, report, ctx.work / "parity.json", ctx.log)
    return report


def _prompting(spec: Spec, tok: Any) -> tuple[Callable[[str], str], str]:
    """Prompts as eval writes them: with a chat template the harness scores "A", not " A"."""
    if not spec.eval.chat_template:
        return (lambda prompt: prompt), " "

    def render(prompt: str) -> str:
        text: str = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
        return text

    return render, ""


def _transformers_scores(model: Any, items: list[Item], tok: Any, render: Callable[[str], str], delimiter: str,
                         batch: int) -> dict[str, Any]:
    from runner.scoring.loglik import max_length_of, predictions, requests_for, score

    requests = requests_for(items, tok, render, delimiter)
    logliks = score(model, requests, batch, tok.pad_token_id, max_length_of(model, tok))
    return {"logliks": logliks, "predictions": predictions(len(items), requests, logliks),
            "requests": [(r.item, r.choice, r.context, r.continuation) for r in requests]}


def _adapter(ctx: StageContext, items: list[Item], tok: Any, render: Callable[[str], str], delimiter: str) -> dict[str, Any]:
    from peft import PeftModel

    from runner.models.loading import load_base

    ctx.log(f"export: parity, {len(items)} questions, adapter over its base (as eval scores it)")
    model = PeftModel.from_pretrained(load_base(ctx.upstream["model"], ctx.spec, ctx.profile), str(ctx.out / "adapter"))
    model.eval()
    return _transformers_scores(model, items, tok, render, delimiter, ctx.spec.eval.batch_size)


def _merged(ctx: StageContext, items: list[Item], tok: Any, render: Callable[[str], str], delimiter: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.out / "merged"), dtype="auto")
    model.eval()
    return _transformers_scores(model, items, tok, render, delimiter, ctx.spec.eval.batch_size)


def gguf_scores(path: Path, lora: Path | None, items: list[Item], render: Callable[[str], str], delimiter: str,
                reference: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]], threads: int) -> dict[str, Any]:
    """Log-likelihood of each choice through llama.cpp, tokenized by llama.cpp as its users' prompts are."""
    import numpy as np
    from llama_cpp import Llama

    window = min(_context_length(path), 4096)  # room for eval's prompts; a 128k window's cache is not needed
    llm = Llama(str(path), lora_path=str(lora) if lora else None, n_ctx=window, n_batch=window, n_ubatch=window,
                logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace") if llm.token_bos() >= 0 else ""
    requests = []
    for i, item in enumerate(items):
        context = render(item.prompt)
        stem = context.rstrip()
        moved = context[len(stem):]
        add_bos = not (bos and stem.startswith(bos))  # as the GGUF's metadata says, unless a template wrote it
        ctx_ids = llm.tokenize(stem.encode(), add_bos=add_bos, special=True)
        for c, choice in enumerate(item.choices):
            whole = llm.tokenize((stem + moved + delimiter + choice).encode(), add_bos=add_bos, special=True)
            if len(whole) > window:
                raise StageError(f"export.parity: question {i} is {len(whole)} tokens, past the {window} scored "
                                 "through llama.cpp; lower export.parity.samples or use shorter benchmarks")
            requests.append((i, c, tuple(ctx_ids), tuple(whole[len(ctx_ids):])))
    logliks = []
    for _, _, context_ids, continuation in requests:
        llm.reset()
        tokens = list(context_ids + continuation)[:-1]
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)  # (T, V)
        rows = logits[len(context_ids) - 1:]
        logprobs = rows - np.logaddexp.reduce(rows, axis=-1, keepdims=True)
        logliks.append(float(sum(logprobs[k, t] for k, t in enumerate(continuation))))
    best: dict[int, tuple[float, int]] = {}
    for (i, c, _, _), ll in zip(requests, logliks):
        if i not in best or ll > best[i][0]:
            best[i] = (ll, c)
    same = sum(r[2:] == ref[2:] for r, ref in zip(requests, reference))
    return {"logliks": logliks, "predictions": [best[i][1] for i in range(len(items))],
            "tokens_identical": round(same / len(requests), 4)}


def _context_length(path: Path) -> int:
    """The GGUF's training context (`<arch>.context_length`), read from its metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    return int(fields[f"{arch}.context_length"].contents())


def summarize(items: list[Item], scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ref = scores["adapter"]
    forms: dict[str, Any] = {}
    for form, got in scores.items():
        agree = sum(a == b for a, b in zip(got["predictions"], ref["predictions"])) / len(items)
        gaps = [abs(a - b) for a, b in zip(got["logliks"], ref["logliks"])]
        diff = math.nan if any(math.isnan(g) for g in gaps) else max(gaps)  # max() alone skips a NaN past the first
        correct = sum(p == it.answer for p, it in zip(got["predictions"], items)) / len(items)
        forms[form] = {"agreement": round(agree, 4), "max_logprob_diff": float(f"{diff:.4g}"),
                       "accuracy": round(correct, 4)} | (
            {"tokens_identical": got["tokens_identical"]} if "tokens_identical" in got else {})
    return {"questions": len(items), "reference": "adapter", "forms": forms}


def table(report: dict[str, Any]) -> list[str]:
    """The parity table as text lines (the log and the README)."""
    lines = [f"{'form':<10}{'agreement':>10}{'max |dlogp|':>13}{'accuracy':>10}"]
    for form, f in report["forms"].items():
        lines.append(f"{form:<10}{f['agreement']:>10.1%}{f['max_logprob_diff']:>13.4g}{f['accuracy']:>10.1%}")
    return lines


def judge(spec: Spec, report: dict[str, Any], kept: Path, log: Callable[[str], None]) -> None:
    """Each form against its tier's tolerance: an error naming the form and by how much, or a warning."""
    parity = spec.export.parity
    for form, f in report["forms"].items():
        if form == "adapter":
            continue
        tier = TIERS[form]
        tol = getattr(parity, tier)
        problems = []
        if f["agreement"] < tol.min_agreement:
            problems.append(f"agrees with the adapter on {f['agreement']:.1%} of {report['questions']} questions "
                            f"(needs {tol.min_agreement:.1%})")
        if not math.isfinite(f["max_logprob_diff"]) or f["max_logprob_diff"] > tol.max_logprob_diff:
            problems.append(f"log-likelihoods differ by up to {f['max_logprob_diff']:.4g} (allowed {tol.max_logprob_diff:g})")
        if not problems:
            continue
        message = (f"export parity: {form} {' and '.join(problems)}; loosen export.parity.{tier} or set "
                   f"export.parity.on_fail: warn (table: {kept})")
        if parity.on_fail == "error":
            raise StageError(message)
        log(f"warning: {message}")
