"""Stage `eval`: multiple-choice accuracy by log-likelihood, base model vs fine-tuned, in one stage.

The adapter is loaded over the same base the way it was trained (4-bit when training was), and the
base score comes from the same model with the adapter switched off: one load, two scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from runner.formats import Dropped, Question, count_reasons, read_local, to_question
from runner.spec import Benchmark, Spec
from runner.stages import StageContext

name = "eval"
version = 1
upstream = ("model", "export:adapter")
volatile = ("report.md",)
uses_profile = True


def spec_slice(spec: Spec) -> dict[str, Any]:
    benchmarks = [{k: (vars(v) if k == "fields" else v) for k, v in vars(b).items() if k != "path"}
                  for b in spec.eval.benchmarks]
    return {"eval": {"benchmarks": benchmarks, "compare_base": spec.eval.compare_base,
                     "chat_template": spec.eval.chat_template},
            "model": {"quantization": spec.model.quantization, "double_quant": spec.model.double_quant}}


def local_files(spec: Spec) -> dict[str, Path]:
    return {f"benchmark/{b.name}": spec.resolve(b.path) for b in spec.eval.benchmarks if b.path is not None}


def run(ctx: StageContext) -> None:
    from peft import PeftModel

    from runner.stages.loading import load_base, load_tokenizer
    from runner.stages.scoring import predictions, requests_for, score

    spec = ctx.spec
    tok = load_tokenizer(ctx.upstream["model"])
    model = PeftModel.from_pretrained(load_base(ctx.upstream["model"], spec, ctx.profile),
                                      str(ctx.upstream["export"] / "adapter"))
    model.eval()
    render = _renderer(tok) if spec.eval.chat_template else (lambda prompt: prompt)
    results: dict[str, Any] = {}
    with open(ctx.out / "predictions.jsonl", "w", encoding="utf-8") as preds_file:
        for bench in spec.eval.benchmarks:
            questions, dropped = load_questions(bench, ctx.files.get(f"benchmark/{bench.name}"))
            requests = requests_for(questions, tok, render)
            scored: dict[str, list[int]] = {}
            variants = (("base", True), ("tuned", False)) if spec.eval.compare_base else (("tuned", False),)
            for label, adapter_off in variants:
                ctx.log(f"eval: {bench.name}, {label} model, {len(questions)} questions")
                if adapter_off:
                    with model.disable_adapter():
                        logliks = score(model, requests, spec.eval.batch_size, tok.pad_token_id)
                else:
                    logliks = score(model, requests, spec.eval.batch_size, tok.pad_token_id)
                scored[label] = predictions(questions, requests, logliks)
            results[bench.name] = summarize(questions, scored, dropped)
            for i, q in enumerate(questions):
                preds_file.write(json.dumps({"benchmark": bench.name, "index": i, "answer": q.answer,
                                             **{label: p[i] for label, p in scored.items()}}) + "\n")
    metrics = {"benchmarks": results, "chat_template": spec.eval.chat_template, "scoring": "loglikelihood, zero-shot"}
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True), "utf-8")
    (ctx.out / "report.md").write_text(report(spec, metrics), "utf-8")


def load_questions(bench: Benchmark, path: Path | None) -> tuple[list[Question], dict[str, int]]:
    if path is not None:
        rows: Any = read_local(path)
    else:
        import datasets

        rows = datasets.load_dataset(bench.hub, bench.config, split=bench.split, revision=bench.revision)
    questions, dropped = [], []
    for row in rows:
        try:
            if isinstance(row, Dropped):
                raise row
            questions.append(to_question(row, bench.fields))
        except Dropped as reason:
            dropped.append(str(reason))
        if bench.limit is not None and len(questions) >= bench.limit:
            break
    return questions, count_reasons(dropped)


def _renderer(tok: Any) -> Any:
    def render(prompt: str) -> str:
        text: str = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
        return text

    return render


def accuracy(correct: list[bool]) -> dict[str, float | int]:
    """Accuracy with a 95% Wilson interval (sound at small n and near 0 or 1, unlike the normal one)."""
    n = len(correct)
    if n == 0:
        return {"n": 0, "acc": math.nan, "ci95": [math.nan, math.nan]}  # type: ignore[dict-item]
    p, z = sum(correct) / n, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "acc": round(p, 4), "ci95": [round(centre - half, 4), round(centre + half, 4)]}  # type: ignore[dict-item]


def summarize(questions: list[Question], scored: dict[str, list[int]], dropped: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"dropped": dropped}
    for label, preds in scored.items():
        out[label] = accuracy([p == q.answer for p, q in zip(preds, questions)])
    if "base" in scored:
        out["delta"] = round(out["tuned"]["acc"] - out["base"]["acc"], 4)
    return out


def report(spec: Spec, metrics: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {spec.name}", "", "| benchmark | n | base | fine-tuned | change |", "|---|---|---|---|---|"]
    for bench, r in metrics["benchmarks"].items():
        def cell(label: str) -> str:
            if label not in r:
                return "-"
            lo, hi = r[label]["ci95"]
            return f"{100 * r[label]['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        delta = f"{100 * r['delta']:+.1f} pt" if "delta" in r else "-"
        lines.append(f"| {bench} | {r['tuned']['n']} | {cell('base')} | {cell('tuned')} | {delta} |")
    lines += ["", "Zero-shot, log-likelihood of each option letter; 95% Wilson intervals.", ""]
    return "\n".join(lines)
