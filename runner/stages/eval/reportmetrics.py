"""The report's sections on the figures a clinical study reports beside accuracy: calibration and
selective accuracy, free-text answers (ROUGE-L, BLEU), perplexity on a held-out corpus; and the
reliability diagram. Pure Python plus matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.stages.eval.reportdoc import Section, pct

MODELS = (("base", "base", "#9a9a9a"), ("tuned", "fine-tuned", "#1f77b4"))


def calibration(inputs: Any) -> Section:
    s = Section("Calibration and selective accuracy")
    found = {name: r["calibration"] for name, r in inputs.metrics["benchmarks"].items() if r.get("calibration")}
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
    found = inputs.metrics.get("free_text") or {}
    if not found:
        return s
    rows = [[name, r["format"], str(r["n"]), *[_num(r[label][k], 1) if label in r else "-"
                                               for k in ("rougeL", "bleu") for label in ("base", "tuned")]]
            for name, r in found.items()]
    s.blocks.append(("table", ["benchmark", "format", "n", "ROUGE-L base", "ROUGE-L fine-tuned", "BLEU base",
                               "BLEU fine-tuned"], rows))
    tokens = next(iter(found.values()))["max_new_tokens"]
    s.blocks.append(("p", f"Greedy answers (at most {tokens} new tokens) to prompts rendered as in training, against "
                          "the references: ROUGE-L F1 (rouge-score, stemmed), mean over questions, x 100; corpus BLEU "
                          "(sacrebleu, default 13a tokenization). Every answer is in `free_text.jsonl`."))
    return s


def free_text_contamination(spec: Any, rows: list[dict[str, Any]], train_texts: Sequence[str]) -> dict[str, Any]:
    """Per free-text benchmark (its free_text.jsonl rows): questions found in the training data, as the
    multiple-choice ones are counted, and each model's ROUGE-L on the others. For the report only."""
    from runner.contamination import overlaps
    from runner.stages.eval.freetext import score_texts

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
    p = inputs.metrics.get("perplexity")
    if not p:
        return s
    rows = [[shown, _num(p[label]["ppl"], 2), _num(p[label]["nll"], 4)] for label, shown, _ in MODELS if label in p]
    s.blocks.append(("table", ["model", "perplexity", "mean NLL per token"], rows))
    s.blocks.append(("p", f"`{p['path']}`: {p['texts']} texts, {p['tokens']:,} predicted tokens in windows of "
                          f"{p['max_length']} tokens, counted as the training loss counts them (every token after "
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


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
