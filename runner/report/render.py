"""The run's report: what was trained, on what machine, how training went, how the scores moved and
how sure we are, what the models answered, and where every artifact is.

Written twice from one document: `report.md` (pictures beside it) and `report.html` (one file, the
pictures inlined, readable anywhere without the runner). Pure Python plus matplotlib, no torch.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.outputs import EvalMetrics, ParityReport, TrainRow, TrainSummary
from runner.core.stage import StageContext
from runner.report.learning import PICTURE, plot_learning, with_learning
from runner.report.sections import Doc, document, plot_reliability
from runner.report.uncertainty import plot_risk_coverage, with_uncertainty


@dataclass(frozen=True)
class Inputs:
    """Everything the report shows, gathered from the stage's context and its upstream artifacts."""

    spec: Any
    profile: Any
    metrics: EvalMetrics
    answers: list[dict[str, Any]]
    model_info: dict[str, Any]
    train_summary: TrainSummary | None
    artifacts: dict[str, str]  # stage -> folder
    pictures: dict[str, str]  # name -> file name beside the report
    parity: ParityReport | None = None  # the export's parity.json, when it converted to GGUF
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark -> {kind, rows}: sample answers
    free_contamination: dict[str, Any] = field(default_factory=dict)  # free-text benchmark -> what was found
    train_rows: list[TrainRow] = field(default_factory=list)  # metrics.jsonl of a method other than SFT


SAMPLES = 3  # questions per benchmark shown with both models' answers: enough to see what each writes


def write_report(ctx: StageContext, metrics: EvalMetrics, answers: list[dict[str, Any]], loaded: Any = None,
                 train_texts: Sequence[str] = ()) -> None:
    """report.md and report.html in the stage's folder, from metrics.json's figures, the answers in
    predictions.jsonl and free_text.jsonl (written before), and `loaded`: the questions the stage read."""
    from runner.report.sections import free_text_contamination

    pictures = {}
    train = ctx.upstream.get("train")
    if train is not None and (train / "loss.png").is_file():
        shutil.copyfile(train / "loss.png", ctx.out / "loss.png")
        pictures["loss"] = "loss.png"
    if metrics.benchmarks:
        plot_accuracy(metrics.raw["benchmarks"], ctx.out / "accuracy.png")
        pictures["accuracy"] = "accuracy.png"
    if plot_reliability(metrics.raw["benchmarks"], ctx.out / "calibration.png"):
        pictures["calibration"] = "calibration.png"
    if plot_risk_coverage(metrics.raw["benchmarks"], ctx.out / "risk_coverage.png"):
        pictures["risk_coverage"] = "risk_coverage.png"
    summary = TrainSummary.read(train / "summary.json") if train is not None and (train / "summary.json").is_file() else None
    rows = TrainRow.read(train / "metrics.jsonl") if train is not None and summary and summary.method != "sft" else []
    if summary is not None and plot_learning(summary.method, rows, ctx.out / PICTURE):
        pictures["learning"] = PICTURE
    inputs = Inputs(spec=ctx.spec, profile=ctx.profile, metrics=metrics, answers=answers,
                    model_info=_json(ctx.upstream["model"] / "model.json") or {},
                    train_summary=summary, train_rows=rows,
                    artifacts={stage: str(path) for stage, path in ctx.upstream.items()}, pictures=pictures,
                    parity=_parity(ctx.upstream["export"] / "parity.json") if "export" in ctx.upstream else None,
                    samples=sample_answers(ctx.out, loaded) if loaded is not None else {},
                    free_contamination=free_text_contamination(ctx.spec, _jsonl(ctx.out / "free_text.jsonl"), train_texts)
                    if ctx.spec.eval.contamination.check and metrics.free_text else {})
    doc = with_learning(with_uncertainty(document(inputs), inputs), inputs)
    (ctx.out / "report.md").write_text(to_markdown(doc), "utf-8")
    (ctx.out / "report.html").write_text(to_html(doc, ctx.out), "utf-8")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def _parity(path: Path) -> ParityReport | None:
    return ParityReport.read(path) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.is_file() else []


def sample_answers(folder: Path, loaded: Any, per_benchmark: int = SAMPLES) -> dict[str, dict[str, Any]]:
    """The first questions of each benchmark, with the answer and what each model answered: for a
    multiple-choice one the choice it scored highest (and the text it wrote, when generative), for a
    free-text one its answer. Read back from what the stage wrote: multiple choice first, each kind in the
    spec's order."""
    out: dict[str, dict[str, Any]] = {}
    for row in _jsonl(folder / "predictions.jsonl"):
        items = loaded.choice.get(row["benchmark"], ([],))[0]
        if row["index"] >= per_benchmark or row["index"] >= len(items):
            continue
        item = items[row["index"]]
        shown = out.setdefault(row["benchmark"], {"kind": "multiple choice", "rows": []})
        answered: dict[str, str] = {label: _picked(item, row, label) for label in ("base", "tuned") if label in row}
        shown["rows"].append({"question": _question(item.prompt), "reference": item.choices[item.answer], **answered})
    for row in _jsonl(folder / "free_text.jsonl"):
        if row["index"] < per_benchmark:
            shown = out.setdefault(row["benchmark"], {"kind": "free text", "rows": []})
            answered = {label: row[label] for label in ("base", "tuned") if label in row}
            shown["rows"].append({"question": _question(row["prompt"]), "reference": row["reference"], **answered})
    return out


def _question(prompt: str, limit: int = 400) -> str:
    text = prompt.strip().removesuffix("Answer:").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _picked(item: Any, row: dict[str, Any], label: str) -> str:
    mark = "right" if row[label] == item.answer else "wrong"
    wrote = row.get(f"{label}_generated")
    first = next((line.strip() for line in (wrote or "").splitlines() if line.strip()), "")
    return f"{item.choices[row[label]]} ({mark})" + (f"; wrote: {_question(first, 80)!r}" if wrote is not None else "")


def plot_accuracy(benchmarks: dict[str, Any], path: Path) -> None:
    """Base vs fine-tuned accuracy per benchmark, with 95% intervals and the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(benchmarks)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.75 * len(names)))
    for label, colour, offset in (("base", "#9a9a9a", 0.18), ("tuned", "#1f77b4", -0.18)):
        ys: list[float] = []
        accs: list[float] = []
        errs: list[list[float]] = [[], []]
        for i, name in enumerate(names):
            r = benchmarks[name].get(label)
            if r is None or r["acc"] is None:
                continue
            ys.append(i + offset)
            accs.append(100 * r["acc"])
            errs[0].append(100 * (r["acc"] - r["ci95"][0]))
            errs[1].append(100 * (r["ci95"][1] - r["acc"]))
        ax.barh(ys, accs, height=0.34, color=colour, xerr=errs, capsize=3,
                label="base" if label == "base" else "fine-tuned")
    for i, name in enumerate(names):
        chance = benchmarks[name].get("chance")
        if chance:
            ax.plot([100 * chance] * 2, [i - 0.42, i + 0.42], color="#d62728", linestyle=":", linewidth=1.2)
    ax.plot([], [], color="#d62728", linestyle=":", label="chance")
    ax.set(yticks=range(len(names)), yticklabels=names, xlim=(0, 100), xlabel="accuracy (%), 95% interval")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)  # clear of the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def to_markdown(doc: Doc) -> str:
    lines = [f"# {doc.title}", ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for kind, *rest in section.blocks:
            if kind == "p":
                lines += [rest[0], ""]
            elif kind == "note":
                lines += [f"> {rest[0]}", ""]
            elif kind == "img":
                lines += [f"![{rest[1]}]({rest[0]})", ""]
            elif kind == "pre":
                lines += ["```", rest[0], "```", ""]
            elif kind == "h3":
                lines += [f"### {rest[0]}", ""]
            elif kind == "table":
                header, rows = rest
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


STYLE = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1b1b1b;max-width:1060px;margin:24px auto;padding:0 20px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:30px}
h3{font-size:16px;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}
th,td{border:1px solid #d5d5d5;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f8}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%;border:1px solid #e3e3e3;margin:6px 0 12px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:13px;white-space:pre-wrap}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:10px 0}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:13px}
"""


def to_html(doc: Doc, folder: Path) -> str:
    """One self-contained page: the pictures are inlined as data URIs."""
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(doc.title)}</h1>"]
    for section in doc.sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        for kind, *rest in section.blocks:
            if kind == "p":
                out.append(f"<p>{_inline(rest[0])}</p>")
            elif kind == "note":
                out.append(f'<div class="note">{_inline(rest[0])}</div>')
            elif kind == "h3":
                out.append(f"<h3>{_inline(rest[0])}</h3>")
            elif kind == "pre":
                out.append(f"<pre>{html.escape(rest[0])}</pre>")
            elif kind == "img":
                data = base64.b64encode((folder / rest[0]).read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(rest[1])}" src="data:image/png;base64,{data}">')
            elif kind == "table":
                header, rows = rest
                figures = header[0] != ""  # a key/value table (first header empty) reads better left-aligned
                out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>")
                for row in rows:
                    out.append("<tr>" + "".join(_td(c, figures) for c in row) + "</tr>")
                out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _td(cell: str, figures: bool) -> str:
    text = str(cell)
    numeric = figures and bool(text) and (text[0].isdigit() or text[0] in "+-−<") and len(text) < 40
    return f'<td class="num">{_inline(text)}</td>' if numeric else f"<td>{_inline(text)}</td>"


def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown the document uses: `code` and **bold**; newlines break."""
    parts = html.escape(str(text)).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    return text.replace("\n", "<br>")
