"""What the comparison report says, as sections of blocks (the eval report's document shape: ("p", text),
("h3", text), ("table", header, rows), ("img", file, alt), ("note", text)). Pure Python."""

from __future__ import annotations

import math
from typing import Any

from runner.compare import LEVEL, Comparison, Run, accuracy, benchmarks, cost, differences, loss_curves

Section = tuple[str, list[tuple[Any, ...]]]
KNOWN = {"n", "correct", "acc", "ci95", "unreadable", "max_new_tokens"}  # accuracy's own fields, shown in the accuracy table
SKIP = {"paired", "groups", "contamination", "dropped", "generative"}  # shown elsewhere, or not per run


def pct(r: dict[str, Any] | None) -> str:
    if r is None or r.get("acc") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def p_text(p: float | None) -> str:
    return "-" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def sections(runs: list[Run], found: list[Comparison], against: str, pictures: dict[str, str]) -> list[Section]:
    return [s for s in (runs_section(runs, against), accuracy_section(runs, found, against, pictures),
                        more_metrics(runs), loss_section(runs, pictures), cost_section(runs)) if s[1]]


def runs_section(runs: list[Run], against: str) -> Section:
    base = runs[0]
    rows = [[r.label, ", ".join(f"`{d}`" for d in differences(r, base)) or ("(the baseline)" if r is base else "-"),
             f"`{r.artifacts['eval'].name[:12]}`", f"`{r.record_path.name}`"] for r in runs]
    reference = (f"each run is tested against the baseline, **{base.label}** (the first given)" if against == "baseline"
                 else "each run is tested against the most accurate run on each benchmark (chosen after seeing the "
                      "results: a difference that does not survive says the two are not told apart on these "
                      "questions, not that the best is better)")
    return ("Runs", [("p", f"{len(runs)} runs; {reference}."),
                     ("table", ["run", f"differs from {base.label} in", "eval key", "run record"], rows)])


def accuracy_section(runs: list[Run], found: list[Comparison], against: str, pictures: dict[str, str]) -> Section:
    blocks: list[tuple[Any, ...]] = []
    for bench in benchmarks(runs):
        tests = {c.run: c for c in found if c.benchmark == bench}
        reference = next(iter(tests.values())).reference if tests else None
        rows = [_accuracy_row(r, bench, tests.get(r.label), reference) for r in runs]
        bases = {pct(accuracy(r, bench, "base")) for r in runs} - {"-"}
        said = ([f"base model {next(iter(bases))}"] if len(bases) == 1 else []) + ([f"reference {reference}"] if reference else [])
        blocks.append(("h3", bench + (f" ({', '.join(said)})" if said else "")))
        # A column only where it says something: the base when runs have different bases (a model-size
        # sweep), generative accuracy when some run scored generated answers.
        # The questions a test paired, when that is not every question the run answered (sets that differ).
        keep = [h for h in rows[0] if h not in ("base model [95% CI]", "generative [95% CI]", "paired n")
                or (h.startswith("base") and len(bases) > 1) or (h.startswith("gen") and any(r[h] != "-" for r in rows))
                or (h == "paired n" and any(r[h] not in ("-", r["n"]) for r in rows))]
        blocks.append(("table", keep, [[row[h] for h in keep] for row in rows]))
    m = sum(c.holm_p is not None for c in found)
    blocks.append(("p", f"Accuracy: the eval stage's zero-shot log-likelihood score of the fine-tuned model, with "
                        f"Wilson 95% intervals (generative: the answer read off greedy text, where scored). Change: "
                        f"the run minus the reference on the questions both answered, with Newcombe's 95% interval "
                        f"for paired data; p: exact McNemar test on the questions only one of the two got right, as "
                        f"the eval stage tests base vs fine-tuned. Holm p: corrected for the {m} comparison{'s' if m != 1 else ''} "
                        f"in this report; a difference survives when it is below {LEVEL:g}. Discordant: the questions "
                        f"only the reference, or only the run, answered right. Paired n, shown where the runs' question "
                        f"sets differ: the questions a test paired."))
    if "accuracy" in pictures:
        blocks.append(("img", pictures["accuracy"], "accuracy per run and benchmark, 95% intervals"))
    return ("Accuracy", blocks)


def _accuracy_row(r: Run, bench: str, c: Comparison | None, reference: str | None) -> dict[str, str]:
    entry = r.metrics["benchmarks"].get(bench, {})
    t = c.test if c else None
    change = (f"{100 * t['delta']:+.1f} pt [{100 * t['ci95'][0]:+.1f}, {100 * t['ci95'][1]:+.1f}]"
              if t and t.get("delta") is not None else "(reference)" if r.label == reference else "-")
    return {"run": r.label, "n": str(entry.get("tuned", {}).get("n", "-")),
            "base model [95% CI]": pct(accuracy(r, bench, "base")), "accuracy [95% CI]": pct(accuracy(r, bench)),
            "generative [95% CI]": pct(entry.get("generative", {}).get("tuned")), "paired n": str(c.n) if c else "-",
            "change [95% CI]": change,
            "McNemar p": p_text(t["mcnemar_p"] if t else None), "Holm p": p_text(c.holm_p if c else None),
            "survives": "-" if c is None or c.holm_p is None else "**yes**" if c.survives else "no",
            "discordant: only ref / only run right": f"{t['only_base_right']} / {t['only_tuned_right']}" if t else "-"}


def numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics entry as `name.sub` -> value (lists, such as bins, left out)."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: value} if math.isfinite(value) else {}  # NaN: a figure the eval could not make
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out |= numbers(v, f"{prefix} {k}".strip())
        return out
    return {}


def extra(entry: dict[str, Any]) -> dict[str, float]:
    """The fine-tuned model's figures beyond accuracy (calibration, ROUGE-L, BLEU, perplexity...):
    whatever the eval stage wrote for `tuned`, read as it is."""
    out: dict[str, float] = {}
    for name, part in [("", entry), *((k, v) for k, v in entry.items() if k not in SKIP and isinstance(v, dict))]:
        if isinstance(part.get("tuned"), dict):
            out |= {f"{name} {k}".strip(): v for k, v in numbers(part["tuned"]).items() if k.split(" ")[0] not in KNOWN}
    return out


def more_metrics(runs: list[Run]) -> Section:
    blocks: list[tuple[Any, ...]] = []
    scopes = [(b, [r.metrics["benchmarks"].get(b, {}) for r in runs]) for b in benchmarks(runs)]
    free = list(dict.fromkeys(name for r in runs for name in r.metrics.get("free_text", {})))  # qa / alpaca sets
    scopes += [(f"{name} (free text)", [r.metrics.get("free_text", {}).get(name, {}) for r in runs]) for name in free]
    scopes.append(("whole run", [{k: v for k, v in r.metrics.items() if k not in ("benchmarks", "free_text")}
                                 for r in runs]))
    for scope, entries in scopes:
        found = [extra(e) for e in entries]
        names = list(dict.fromkeys(k for f in found for k in f))
        if names:
            rows = [[name] + [_num(f.get(name)) for f in found] for name in names]
            blocks += [("h3", scope), ("table", ["fine-tuned"] + [r.label for r in runs], rows)]
    if blocks:
        blocks.append(("p", "Further figures the eval stage wrote for the fine-tuned models, as written in each "
                            "run's metrics.json."))
    return ("More metrics", blocks)


def loss_section(runs: list[Run], pictures: dict[str, str]) -> Section:
    blocks: list[tuple[Any, ...]] = []
    if "loss" in pictures:
        blocks.append(("img", pictures["loss"], "training and validation loss per step, all runs"))
    rows = []
    for r in runs:
        curves = loss_curves(r)
        v, t = curves["validation"], curves["train"]
        rows.append([r.label, f"{_num(t[0][1])} -> {_num(t[-1][1])}" if t else "-",
                     f"{_num(v[0][1])} -> {_num(v[-1][1])}" if len(v) > 1 else "-"])
    if any(row[1] != "-" for row in rows):
        blocks.append(("table", ["run", "training loss, first -> last step", "validation loss, before -> after"], rows))
        blocks.append(("p", "Training loss per logged step; validation loss (answer tokens) before training, after "
                            "it, and at every step the training log holds one."))
    return ("Loss", blocks)


def cost_section(runs: list[Run]) -> Section:
    rows = []
    for r in runs:
        c = cost(r)
        params = (f"{c['trainable']:,} ({100 * c['trainable'] / c['total']:.2f}%)" if c["trainable"] and c["total"]
                  else "-")
        memory = f"{c['peak_memory_mib']:,.0f} MiB ({c['device']})" if c["peak_memory_mib"] is not None else "-"
        rows.append([r.label, _secs(c["train_seconds"]), _secs(c["stage_seconds"]), memory, params,
                     f"{c['tokens']:,}" if c["tokens"] is not None else "-", str(c["steps"] or "-")])
    return ("Cost", [("table", ["run", "training", "train stage", "peak memory", "trainable parameters",
                                "tokens seen", "steps"], rows),
                     ("p", "From each run's train artifact: the Trainer's runtime and the whole stage's time "
                           "(model loading and saving included), the largest memory logged during training (GPU: "
                           "torch's peak allocation; CPU: the process's resident memory), LoRA's trainable "
                           "parameters of all, and the tokens of the training examples seen (the data stage's token "
                           "count of one epoch times the epochs trained, as the Trainer logged them). A stage reused from an earlier run "
                           "shows that run's time.")])


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def summary_lines(runs: list[Run], found: list[Comparison]) -> list[str]:
    """A few lines for the terminal: each run's accuracy per benchmark and what survives Holm."""
    lines = []
    for bench in benchmarks(runs):
        lines.append(f"  {bench}:")
        tests = {c.run: c for c in found if c.benchmark == bench}
        for r in runs:
            c = tests.get(r.label)
            vs = ""
            if c is not None and c.test is not None and c.test.get("delta") is not None:
                verdict = "survives Holm" if c.survives else "not significant after Holm"
                on = f" on {c.n} shared questions" if str(c.n) != str(r.metrics["benchmarks"][bench].get("tuned", {}).get("n")) else ""
                vs = (f"; vs {c.reference} {100 * c.test['delta']:+.1f} pt{on}, McNemar p{_eq(c.test['mcnemar_p'])}, "
                      f"Holm p{_eq(c.holm_p)}: {verdict}")
            lines.append(f"    {r.label:<28} {pct(accuracy(r, bench))}{vs}")
    return lines


def _eq(p: float | None) -> str:
    return "<0.001" if p is not None and p < 0.001 else f"={p_text(p)}"
