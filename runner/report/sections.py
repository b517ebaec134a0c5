"""What the report says, as a small document (sections of paragraphs, tables, pictures) that
`report.py` writes out as Markdown and as HTML. Pure Python."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.outputs import Benchmark, EvalMetrics, Paired, ParityReport, Score, TrainSummary
from runner.rows.mixture import describe

Block = tuple[Any, ...]  # ("p", text) ("note", text) ("h3", text) ("pre", text) ("img", file, alt) ("table", header, rows)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Doc:
    title: str
    sections: list[Section]


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def with_ci(r: dict[str, Any] | None) -> str:
    if r is None or r.get("acc") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{pct(r['acc'])} [{100 * lo:.1f}, {100 * hi:.1f}]"


def change(p: dict[str, Any] | None) -> str:
    if p is None or p.get("delta") is None:
        return "-"
    lo, hi = p["ci95"]
    return f"{100 * p['delta']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def p_value(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    value = p["mcnemar_p"]
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def document(inputs: Any) -> Doc:
    spec = inputs.spec


    sections = [results(inputs), groups(inputs), calibration(inputs), free_text(inputs),
                perplexity(inputs), contamination(inputs), training(inputs), parity(inputs), samples(inputs),
                generations(inputs),
                spec_summary(inputs), profile(inputs), artifacts(inputs)]
    return Doc(f"{spec.name}: evaluation report", [s for s in sections if s.blocks])


def results(inputs: Any) -> Section:
    metrics, spec = inputs.metrics, inputs.spec
    s = Section("Results")
    if spec.description:
        s.blocks.append(("p", spec.description))
    if inputs.model_info.get("random_init"):
        s.blocks.append(("note", "The base model is a **random-initialised demo model**: it knows no medicine. "
                                 "These numbers show the machinery working, not clinical ability."))
    if not metrics.benchmarks:
        scored = [what for what, there in (("free-text scores", metrics.free_text),
                                          ("perplexity", metrics.perplexity)) if there]
        s.blocks.append(("p", "No multiple-choice benchmark in the spec (`eval.benchmarks`)"
                              + (f": the {' and '.join(scored)} follow." if scored else ".")))
        return s
    s.blocks += accuracy_blocks(metrics, inputs.pictures) + generative_blocks(metrics.benchmarks)
    s.blocks += [("p", f"{name}: rows left out ({', '.join(f'{reason}: {count}' for reason, count in r.dropped.items())}).")
                 for name, r in metrics.benchmarks.items() if r.dropped]
    return s


def accuracy_blocks(metrics: EvalMetrics, pictures: dict[str, str]) -> list[Block]:
    """The multiple-choice table, base vs fine-tuned with the paired test, and how it was scored."""
    rows = [[name, f"`{r.harness_task}`" if r.harness_task else str(r.format), str(r.tuned.n), score_ci(r.base),
             score_ci(r.tuned), paired_change(r.paired), paired_p(r.paired), _discordant(r.paired), pct(r.chance)]
            for name, r in metrics.benchmarks.items()]
    template = "the model's chat template around each prompt" if metrics.chat_template else "no chat template"
    blocks: list[Block] = [
        ("table", ["benchmark", "task", "n", "base [95% CI]", "fine-tuned [95% CI]", "change [95% CI]", "McNemar p",
                   "only base / only tuned right", "chance"], rows),
        ("p", f"Zero-shot, scored by the log-likelihood of each choice after the prompt, exactly as "
              f"lm-evaluation-harness scores the named task ({template}). Intervals: Wilson 95%. Change: "
              f"fine-tuned minus base on the same questions, with Newcombe's 95% interval for paired "
              f"data; p: exact McNemar test on the questions only one of the two got right.")]
    if "accuracy" in pictures:
        blocks.append(("img", pictures["accuracy"], "accuracy, base vs fine-tuned"))
    return blocks


def generative_blocks(benchmarks: dict[str, Benchmark]) -> list[Block]:
    """Accuracy of the answers read off greedy text, where eval.generative scored them."""
    generative = {name: r.generative for name, r in benchmarks.items() if r.generative is not None}
    if not generative:
        return []
    rows = [[name, str(g.tuned.n), score_ci(g.base), score_ci(g.tuned), paired_change(g.paired), paired_p(g.paired),
             " / ".join(str(m.unreadable) for m in (g.base, g.tuned) if m is not None)] for name, g in generative.items()]
    return [("h3", "Generative accuracy"),
            ("table", ["benchmark", "n", "base [95% CI]", "fine-tuned [95% CI]", "change [95% CI]",
                       "McNemar p", "unreadable (base / tuned)"], rows),
            *generative_note({name: benchmarks[name].raw["generative"] for name in generative})]


def score_ci(r: Score | None) -> str:
    if r is None or r.acc is None or r.ci95 is None:
        return "-"
    lo, hi = r.ci95
    return f"{pct(r.acc)} [{100 * lo:.1f}, {100 * hi:.1f}]"


def paired_change(p: Paired | None) -> str:
    if p is None or p.delta is None or p.ci95 is None:
        return "-"
    lo, hi = p.ci95
    return f"{100 * p.delta:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def paired_p(p: Paired | None) -> str:
    if p is None or p.mcnemar_p is None:
        return "-"
    return "< 0.001" if p.mcnemar_p < 0.001 else f"{p.mcnemar_p:.3f}"


def _discordant(p: Paired | None) -> str:
    return "-" if p is None else f"{p.only_base_right} / {p.only_tuned_right}"


def groups(inputs: Any) -> Section:
    s = Section("By group")
    for name, r in inputs.metrics.raw["benchmarks"].items():
        if not r.get("groups"):
            continue
        rows = [[group, str(g["tuned"]["n"]), with_ci(g.get("base")), with_ci(g["tuned"]), change(g.get("paired")),
                 p_value(g.get("paired"))] for group, g in r["groups"].items()]
        s.blocks.append(("h3", name))
        s.blocks.append(("table", ["group", "n", "base [95% CI]", "fine-tuned [95% CI]", "change [95% CI]",
                                   "McNemar p"], rows))
    return s


def contamination(inputs: Any) -> Section:
    s = Section("Benchmark questions in the training data")
    checked = {name: r["contamination"] for name, r in inputs.metrics.raw["benchmarks"].items() if "contamination" in r}
    free = getattr(inputs, "free_contamination", None) or {}
    if not checked and not free:
        return s
    similarity = next(iter([*checked.values(), *free.values()]))["similarity"]
    found = f"near duplicates (>= {similarity:g})"
    if checked:
        rows = []
        for name, c in checked.items():
            n = inputs.metrics.benchmarks[name].tuned.n
            clean = c["clean"]
            rows.append([name, str(n), str(c["exact"]), str(c["near"]), pct((c["exact"] + c["near"]) / n if n else None),
                         with_ci(clean.get("base")), with_ci(clean["tuned"])])
        s.blocks.append(("table", ["benchmark", "n", "exact copies", found, "share", "base on the rest",
                                   "fine-tuned on the rest"], rows))
    if free:
        rows = [[name, str(c["n"]), str(c["exact"]), str(c["near"]), pct((c["exact"] + c["near"]) / c["n"] if c["n"] else None),
                 *[_num(c["clean"][label]["rougeL"], 1) if label in c["clean"] else "-" for label in ("base", "tuned")]]
                for name, c in free.items()]
        s.blocks.append(("table", ["free-text benchmark", "n", "exact copies", found, "share", "ROUGE-L base on the rest",
                                   "ROUGE-L fine-tuned on the rest"], rows))
    checked |= free
    if any(c["exact"] + c["near"] for c in checked.values()):
        s.blocks.append(("note", "Some benchmark questions are in the training data (`data.train`): accuracy on them "
                                 "measures memory, not skill. The columns on the right leave them out."))
    else:
        s.blocks.append(("p", "No benchmark question was found in the training data."))
    return s


def training(inputs: Any) -> Section:
    s = Section("Training")
    t: TrainSummary | None = inputs.train_summary
    if "loss" in inputs.pictures:
        s.blocks.append(("img", inputs.pictures["loss"], "training loss and learning rate per step"))
    if t is not None:
        s.blocks.append(("table", ["", "value"], training_rows(t)))
    return s


def training_rows(t: TrainSummary) -> list[list[str]]:
    rows = [["optimizer steps", str(t.steps)],
            ["training loss, first -> last logged step", f"{_num(t.train_loss_first)} -> {_num(t.train_loss_last)}"]]
    if t.eval_loss_after is not None and t.eval_loss_before is not None:
        before, after = t.eval_loss_before, t.eval_loss_after
        held_out = t.held_out  # dpo, orpo, kto: a preference loss, no perplexity
        method = f" ({t.method})" if held_out else ""
        rows.append([f"validation loss{method}, before -> after", f"{_num(before)} -> {_num(after)}"])
        if not held_out:
            rows.append(["validation perplexity (answer tokens), before -> after", f"{_num(math.exp(before), 1)} -> {_num(math.exp(after), 1)}"])
        for name, h in held_out.items():
            rows.append([f"held-out {name.replace('_', ' ')}, before -> after", f"{_num(h.before)} -> {_num(h.after)}"])
        for name, v in (t.by_source or {}).items():
            rows.append([f"validation loss, source {name}, before -> after", f"{_num(v.before)} -> {_num(v.after)}"])
    e = t.early_stopping
    if e:
        best = f"; the adapter is step {e.best_step}'s (validation {_num(e.best_eval_loss)})" if e.best_step else ""
        rows.append(["early stopping", e.reason + best])
    trainable, total = t.trainable or 0, t.total or 0
    seconds = t.seconds if t.seconds is not None else math.nan  # no runtime from the Trainer: said as nan, as written
    return rows + [["rows: train / validation", f"{t.train_rows} / {t.validation_rows}"],
                   ["trainable parameters", f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"],
                   ["training time", f"{seconds:.0f} s"]]


def parity(inputs: Any) -> Section:
    """The export's forms scored against the adapter (export.parity): what each exported file computes."""
    s = Section("Export parity")
    report: ParityReport | None = getattr(inputs, "parity", None)
    if report:
        rows = [[form, pct(f.agreement), f"{f.max_logprob_diff:.4g}", pct(f.accuracy), pct(f.tokens_identical)]
                for form, f in report.forms.items()]
        s.blocks.append(("p", f"The first {report.questions} benchmark questions through each exported form, against "
                              "the adapter over its base (what this report scores)."))
        s.blocks.append(("table", ["form", "same prediction", "max log-likelihood difference", "accuracy",
                                   "same tokens (llama.cpp)"], rows))
    return s


def samples(inputs: Any) -> Section:
    """The first questions of each benchmark and what each model answered, whatever the benchmark's kind."""
    s = Section("Sample answers")
    found = getattr(inputs, "samples", None) or {}
    for name, shown in found.items():
        rows = shown["rows"]
        labels = [label for label in ("base", "tuned") if rows and label in rows[0]]
        s.blocks.append(("h3", f"{name} ({shown['kind']}, the first {len(rows)})"))
        s.blocks.append(("table", ["question", "answer" if shown["kind"] == "multiple choice" else "reference",
                                   *["base" if label == "base" else "fine-tuned" for label in labels]],
                         [[r["question"], printable(r["reference"]), *[printable(r[label]) or "(empty)" for label in labels]]
                          for r in rows]))
    kinds = {shown["kind"] for shown in found.values()}
    said = {"multiple choice": ("Multiple choice: the choice each model scored most likely (with `eval.generative`, "
                                "and the first line it wrote); every question is in `predictions.jsonl`."),
            "free text": "Free text: each model's greedy answer; every question is in `free_text.jsonl`."}
    if kinds:
        s.blocks.append(("p", " ".join(text for kind, text in said.items() if kind in kinds)))
    return s


def generations(inputs: Any) -> Section:
    s = Section("Answers to the spec's queries")
    if not inputs.answers:
        return s
    g = inputs.answers[0]["generation"]
    decoding = "greedy" if g["decoding"] == "greedy" else f"sampled, temperature {g['temperature']}, top-p {g['top_p']}"
    s.blocks.append(("p", f"Generation: {decoding}, at most {g['max_new_tokens']} new tokens; prompts rendered "
                          f"as in training (`data.template: {inputs.spec.data.template}`)."))
    labels = list(inputs.answers[0]["answers"])
    header = ["query"] + ["base" if label == "base" else "fine-tuned" for label in labels]
    rows = [[a["query"]] + [printable(a["answers"][label]) or "(empty)" for label in labels] for a in inputs.answers]
    s.blocks.append(("table", header, rows))
    flagged = [[str(i + 1), "base" if label == "base" else "fine-tuned", f["rule"], f"`{f['match']}`"]
               for i, a in enumerate(inputs.answers) for label, fs in a["flags"].items() for f in fs]
    s.blocks.append(("h3", "Safety flags"))
    if flagged:
        s.blocks.append(("table", ["query", "model", "rule", "matched"], flagged))
    else:
        s.blocks.append(("p", "No answer raised a flag."))
    return s


def spec_summary(inputs: Any) -> Section:
    spec = inputs.spec
    m, d, lora, t = spec.model, spec.data, spec.lora, spec.train
    info = inputs.model_info
    where = {"hub": f"`{m.id}` at `{info.get('commit', m.revision)}`", "local": f"`{m.path}`",
             "init": f"random-initialised ({info.get('parameters', '?'):,} parameters)"
             if isinstance(info.get("parameters"), int) else "random-initialised"}[m.source]
    if isinstance(d.train, tuple):  # a mixture: each source with its share
        source = "; ".join(line.strip() for line in describe(spec, None))
    else:
        source = f"`{d.train.path or f'{d.train.hub} ({d.train.split})'}`, format {d.format}"
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    rows = [["model", f"{where}, quantization {m.quantization}" + (" (double)" if m.double_quant and m.quantization != "none" else "")],
            ["data", f"{source}, template {d.template}, max length {d.max_length}"],
            ["LoRA", f"r {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g}, targets {_targets(lora.target_modules)}"],
            ["training", f"{steps}, learning rate {t.learning_rate:g} ({t.scheduler}, warmup {t.warmup:g}), "
                         f"batch {t.batch_size}, weight decay {t.weight_decay:g}"],
            ["seed", str(spec.seed)],
            ["benchmarks", ", ".join(f"{b.name} ({b.format}{', first ' + str(b.limit) if b.limit else ''})"
                                     for b in spec.eval.benchmarks) or "-"]]
    return Section("Spec", [("table", ["", "value"], rows)])


def _targets(targets: Any) -> str:
    return targets if isinstance(targets, str) else ", ".join(targets)


def profile(inputs: Any) -> Section:
    p = inputs.profile
    rows = [["device", p.device], ["compute dtype", p.dtype], ["base weights", p.quantization],
            ["optimizer", p.optimizer], ["micro-batch x accumulation", f"{p.micro_batch_size} x {p.gradient_accumulation}"],
            ["gradient checkpointing", "on" if p.gradient_checkpointing else "off"], ["attention", p.attn_implementation]]
    s = Section("Hardware profile", [("table", ["", "value"], rows)])
    if p.reasons:
        s.blocks.append(("p", "Why: " + "; ".join(p.reasons) + "."))
    return s


def artifacts(inputs: Any) -> Section:
    rows = [[stage, f"`{path}`"] for stage, path in inputs.artifacts.items()]
    rows.append(["eval", "this report's folder: `metrics.json`, `predictions.jsonl` (one row per question and model), "
                         "`generations.jsonl`, `free_text.jsonl` (free-text answers), `report.md`, `report.html`"])
    return Section("Where everything is", [("table", ["stage", "folder"], rows)])


def printable(text: str) -> str:
    """Generated text without control characters (a small model emits stray bytes), newlines kept."""
    return "".join(c for c in text if c == "\n" or unicodedata.category(c)[0] != "C")


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


MODELS = (("base", "base", "#9a9a9a"), ("tuned", "fine-tuned", "#1f77b4"))


def calibration(inputs: Any) -> Section:
    s = Section("Calibration and selective accuracy")
    found = {name: r["calibration"] for name, r in inputs.metrics.raw["benchmarks"].items() if r.get("calibration")}
    if not found:
        return s
    # metrics.json sorts its keys ("100" < "20"): most coverage first, by number.
    coverages = sorted(next(c[label] for c in found.values() for label in ("tuned", "base") if label in c)["selective_acc"],
                       key=int, reverse=True)
    rows = []
    for name, c in found.items():
        for label, shown, _ in MODELS:
            if label in c:
                m = c[label]
                rows.append([name, shown, _num(m["ece"]), _num(m["brier"]), pct(m["confidence"]),
                             *[pct(m["selective_acc"][k]) for k in coverages]])
    s.blocks.append(("table", ["benchmark", "model", "ECE", "Brier", "mean confidence",
                               *[f"acc @ {k}%" for k in coverages]], rows))
    first = next(iter(found.values()))
    s.blocks.append(("p", f"Probabilities: {first['probabilities']}; the confidence is that of the predicted choice. "
                          f"ECE: {first['bins']} equal-width confidence bins, the gap between accuracy and mean "
                          "confidence weighted by each bin's share (0 is perfectly calibrated). Brier: multi-class, "
                          "sum over the choices of (probability - one-hot answer)^2, averaged (0 best, 2 worst). "
                          "Acc @ c%: selective accuracy at c% coverage, the accuracy when the model answers only the c% "
                          "of questions it is most confident about and abstains on the rest."))
    if "calibration" in inputs.pictures:
        s.blocks.append(("img", inputs.pictures["calibration"], "reliability diagrams, base vs fine-tuned"))
    return s


def free_text(inputs: Any) -> Section:
    s = Section("Free-text answers")
    found = inputs.metrics.free_text
    if not found:
        return s
    rows = [[name, str(r.format), str(r.n), *[_num(r.scores[label][k], 1) if label in r.scores else "-"
                                              for k in ("rougeL", "bleu") for label in ("base", "tuned")]]
            for name, r in found.items()]
    s.blocks.append(("table", ["benchmark", "format", "n", "ROUGE-L base", "ROUGE-L fine-tuned", "BLEU base",
                               "BLEU fine-tuned"], rows))
    tokens = next(iter(found.values())).max_new_tokens
    s.blocks.append(("p", f"Greedy answers (at most {tokens} new tokens) to prompts rendered as in training, against "
                          "the references: ROUGE-L F1 (rouge-score, stemmed), mean over questions, x 100; corpus BLEU "
                          "(sacrebleu, default 13a tokenization). Every answer is in `free_text.jsonl`."))
    return s


def free_text_contamination(spec: Any, rows: list[dict[str, Any]], train_texts: Sequence[str]) -> dict[str, Any]:
    """Per free-text benchmark (its free_text.jsonl rows): questions found in the training data, as the
    multiple-choice ones are counted, and each model's ROUGE-L on the others. For the report only."""
    from runner.rows.contamination import overlaps
    from runner.scoring.texts import score_texts

    similarity = spec.eval.contamination.similarity
    out: dict[str, Any] = {}
    for name in dict.fromkeys(row["benchmark"] for row in rows):
        mine = [row for row in rows if row["benchmark"] == name]
        found = overlaps(train_texts, [row["prompt"] for row in mine], similarity)
        seen = {o.item for o in found}
        clean = [row for i, row in enumerate(mine) if i not in seen]
        out[name] = {"n": len(mine), "exact": sum(o.similarity == 1.0 for o in found),
                     "near": sum(o.similarity < 1.0 for o in found), "similarity": similarity,
                     "clean": {label: {"n": len(clean), **score_texts([r[label] for r in clean],
                                                                      [r["reference"] for r in clean])}
                               for label in ("base", "tuned") if mine and label in mine[0] and clean}}
    return out


def perplexity(inputs: Any) -> Section:
    s = Section("Perplexity on a held-out corpus")
    p = inputs.metrics.perplexity
    if p is None:
        return s
    rows = [[shown, _num(p.ppl[label], 2), _num(p.nll[label], 4)] for label, shown, _ in MODELS if label in p.ppl]
    s.blocks.append(("table", ["model", "perplexity", "mean NLL per token"], rows))
    s.blocks.append(("p", f"`{p.path}`: {p.texts} texts, {p.tokens:,} predicted tokens in windows of "
                          f"{p.max_length} tokens, counted as the training loss counts them (every token after "
                          "the first of a window); perplexity = exp(mean NLL)."))
    return s


def plot_reliability(benchmarks: dict[str, Any], path: Path) -> bool:
    """Per benchmark, a reliability diagram (accuracy per confidence bin, base and fine-tuned, against
    the diagonal a calibrated model follows) over the share of questions in each bin, which says how
    much each bar can be trusted. False when there is nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    found = {name: r["calibration"] for name, r in benchmarks.items() if r.get("calibration")}
    if not found:
        return False
    fig = Figure(figsize=(3.7 * len(found), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(found), squeeze=False, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for column, (name, c) in enumerate(found.items()):
        top, bottom = axes[0][column], axes[1][column]
        top.plot([0, 1], [0, 1], color="#d62728", linestyle=":", linewidth=1.2, label="calibrated")
        eces = []
        for offset, (label, shown, colour) in zip((-0.022, 0.022), MODELS):
            if label not in c:
                continue
            bins, n = c[label]["reliability"], c[label]["n"]
            centres = [(b["bin"][0] + b["bin"][1]) / 2 + offset for b in bins]
            top.bar(centres, [b["acc"] for b in bins], width=0.044, color=colour, label=shown)
            bottom.bar(centres, [b["n"] / n for b in bins], width=0.044, color=colour)
            eces.append(f"{shown} {_num(c[label]['ece'])}")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{name}\nECE: {', '.join(eces)}")
        bottom.set(xlabel="confidence (predicted choice)", ylabel="share")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110)
    return True


def generative_note(generative: dict[str, dict[str, Any]]) -> list[Any]:
    """How the generative answers were made: greedy (a note), or sampled (the self-consistency table). Read
    from the entries as written: eval's sampled mode came after runner.core.outputs."""
    if any("consistency" in g for g in generative.values()):
        return consistency_blocks(generative)
    tokens = next(iter(generative.values()))["max_new_tokens"]
    return [("p", f"The same prompts answered by greedy decoding ({tokens} new tokens), the choice read off the first "
                  f"line of the text (\"B\", \"(B)\", \"The answer is B\"; yes/no/maybe). An answer no choice could "
                  f"be read from counts as wrong. Every text is in predictions.jsonl.")]


def consistency_blocks(generative: dict[str, dict[str, Any]]) -> list[Any]:
    """The sampled mode: per benchmark and model the vote, one sample, pass@k, agreement, failures."""
    rows = []
    for name, g in generative.items():
        for label, c in g.get("consistency", {}).items():
            k = str(c["samples"])
            rows.append([name, label, k, with_ci(c["vote"]), with_ci(c["single"]),
                         f"{pct(c['pass_at_k'][k]['mean'])} [{pct(c['pass_at_k'][k]['ci95'][0])}, "
                         f"{pct(c['pass_at_k'][k]['ci95'][1])}]", f"{c['agreement']['mean']:.2f}",
                         f"{c['failed_samples']} / {c['vote']['n'] * c['samples']}"])
    g0 = next(iter(generative.values()))
    budget = f", up to {g0['thinking_budget']} thinking tokens first" if g0.get("thinking_budget") else ""
    return [("h3", "Self-consistency"),
            ("table", ["benchmark", "model", "k", "vote [95% CI]", "one sample [95% CI]", "pass@k [95% CI]",
                       "agreement", "failed extractions"], rows),
            ("p", f"Each question answered {g0['samples']} time(s) ({g0['decoding']}, temperature {g0['temperature']}, "
                  f"{g0['max_new_tokens']} new tokens{budget}); the answer read by `{g0['extract']}`; the majority "
                  f"vote is the accuracy above (failed extractions do not vote; a tie goes to the answer sampled "
                  f"first). One sample: sample 1. pass@k: the unbiased estimator (Chen et al. 2021). Agreement: the "
                  f"vote's share of the samples. A failed extraction counts as wrong. Every text is in "
                  f"predictions.jsonl.")]
