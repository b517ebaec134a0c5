"""The report's "When not to answer" section: each confidence signal's risk-coverage curve, base vs
fine-tuned per benchmark (a picture), its AURC, ECE and Brier (a table), and the spec's abstention
rule's operating point. Read from metrics.json's `uncertainty` entries; matplotlib, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.report.sections import MODELS, Doc, Section, _num, pct

TITLE = "When not to answer: confidence signals"
AFTER = "Calibration and selective accuracy"  # the section this one follows, when the report has it
STYLES = {"loglik": "-", "token_prob": "--", "vote": ":"}  # one line style per signal, one colour per model
SHOWN = {"loglik": "log-likelihood softmax", "token_prob": "answer token probability", "vote": "vote agreement"}


def _found(benchmarks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r["uncertainty"] for name, r in benchmarks.items() if r.get("uncertainty")}


def _signals(u: dict[str, Any], label: str) -> dict[str, Any]:
    return u.get(label) or {}


def plot_risk_coverage(benchmarks: dict[str, Any], path: Path) -> bool:
    """Per benchmark, risk (error rate among the answered) against coverage (share answered), one line per
    model and signal; the abstention rule's point when there is one. False when there is nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    found = _found(benchmarks)
    if not found:
        return False
    lines = max(sum(len(_signals(u, label)) for label, _, _ in MODELS) for u in found.values())
    fig = Figure(figsize=(3.9 * len(found), 3.6 + 0.16 * lines))  # the legends sit below the plots
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    for ax, (name, u) in zip(axes, found.items()):
        for label, shown, colour in MODELS:
            for signal, figures in _signals(u, label).items():
                xs, ys = zip(*figures["curve"]) if figures["curve"] else ((), ())
                ax.plot(xs, ys, color=colour, linestyle=STYLES.get(signal, "-."), linewidth=1.6,
                        label=f"{shown}, {SHOWN.get(signal, signal)} (AURC {_num(figures['aurc'])})")
            rule = (u.get("abstain") or {}).get(label)
            if rule and rule["answered"]:
                ax.plot([1 - rule["abstained"]], [1 - rule["acc_answered"]], marker="o", color=colour,
                        markeredgecolor="black", linestyle="none")
        if u.get("abstain"):
            ax.plot([], [], marker="o", color="white", markeredgecolor="black", linestyle="none",
                    label=f"answered at {u['abstain']['signal']} >= {u['abstain']['threshold']}")
        # a little room past 0 and 1: a curve at risk 1 (every answer wrong) must not hide in the frame
        ax.set(xlim=(0, 1.03), ylim=(-0.03, 1.05), xlabel="coverage (share answered)",
               ylabel="risk (error rate answered)", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def uncertainty_section(inputs: Any) -> Section:
    s = Section(TITLE)
    found = _found(inputs.metrics.raw["benchmarks"])  # untyped yet: eval.uncertainty came after runner.core.outputs
    if not found:
        return s
    rows = [[name, shown, SHOWN.get(signal, signal), str(f["n"]), pct(f["acc"]), _num(f["aurc"]), _num(f["eaurc"]),
             _num(f["ece"]), _num(f["brier"]), pct(f["selective_acc"].get("80")), pct(f["selective_acc"].get("60"))]
            for name, u in found.items() for label, shown, _ in MODELS for signal, f in _signals(u, label).items()]
    s.blocks.append(("table", ["benchmark", "model", "signal", "n", "accuracy", "AURC", "excess AURC", "ECE", "Brier",
                               "acc @ 80%", "acc @ 60%"], rows))
    s.blocks.append(("p", "Each signal is a confidence in [0, 1] for one answer: the **log-likelihood softmax** of "
                          "the picked choice; the **answer token probability**, exp of the mean log-probability of "
                          "the generated answer's tokens (generative mode); the **vote agreement**, the share of "
                          "sampled answers agreeing with the vote. Risk at coverage c is the error rate over the c "
                          "share of answers the signal is most sure of (ties count their mean). AURC: the mean risk "
                          "over all coverages (lower is better); excess AURC: above a perfect ranking at the same "
                          "accuracy (0 is perfect). ECE (10 bins) and Brier, mean (confidence - correct)^2, of the "
                          "signal itself. A curve that falls to the left means abstaining on low confidence helps."))
    rules = {name: u["abstain"] for name, u in found.items() if u.get("abstain")}
    if rules:
        s.blocks.append(("h3", "The spec's abstention rule"))
        s.blocks.append(("p", "Answer only when the signal is at least the threshold, abstain below: the accuracy "
                              "on what is answered and the share abstained (the dots on the curves)."))
        s.blocks.append(("table", ["benchmark", "model", "rule", "answered", "abstained", "accuracy answered",
                                   "accuracy if all answered"],
                         [[name, shown, f"{r['signal']} >= {r['threshold']}", f"{r[label]['answered']} / {r[label]['n']}",
                           pct(r[label]["abstained"]), pct(r[label]["acc_answered"]), pct(r[label]["acc_all"])]
                          for name, r in rules.items() for label, shown, _ in MODELS if label in r]))
    if "risk_coverage" in inputs.pictures:
        s.blocks.append(("img", inputs.pictures["risk_coverage"], "risk-coverage curves, base vs fine-tuned"))
    return s


def with_uncertainty(doc: Doc, inputs: Any) -> Doc:
    """The document with this section after the calibration one (or after the results)."""
    section = uncertainty_section(inputs)
    if not section.blocks:
        return doc
    titles = [s.title for s in doc.sections]
    at = titles.index(AFTER) + 1 if AFTER in titles else min(1, len(titles))
    return Doc(doc.title, doc.sections[:at] + [section] + doc.sections[at:])
