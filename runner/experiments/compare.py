"""`runner compare`: one report over several runs, read from their run records and stage artifacts.

It recomputes nothing: accuracy and its interval come from each eval stage's metrics.json, the paired
test between two runs from their per-question predictions (predictions.jsonl: the same questions,
each right or wrong), and the cost from the train stage's summary, metrics log and manifest. The
paired test is the one the eval stage uses for base vs fine-tuned (exact McNemar, Newcombe's
interval), Holm-corrected for the number of comparisons. Light: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.core.errors import RunnerError
from runner.core.outputs import (
    MAX_BENCHMARKS,
    EvalMetrics,
    OutputError,
    Prediction,
    RunRecord,
    Score,
    cut,
    shown,
)
from runner.core.records import runs_dir
from runner.experiments.costs import Cost, curves, training_cost
from runner.experiments.learned import learning_sections
from runner.scoring.significance import holm, paired
from runner.spec.schema import field_schema

LEVEL = 0.05  # the family-wise error level a difference must survive


class CompareError(RunnerError):
    """A run to compare cannot be found or has no evaluation."""

    exit_code = 2


@dataclass
class Run:
    label: str
    record_path: Path
    record: RunRecord
    artifacts: dict[str, Path]  # stage -> folder in the store
    metrics: EvalMetrics  # the eval stage's metrics.json
    outcomes: dict[str, dict[Any, tuple[Any, Any]]] = field(default_factory=dict)  # bench -> question -> (answer, tuned)


@contextmanager
def reading() -> Iterator[None]:
    """A file that is not what its stage writes stops compare with one line naming it."""
    try:
        yield
    except OutputError as exc:
        raise CompareError(str(exc)) from None


def find_run(ref: Path, store: Path) -> Path:
    """A run record as given, or the newest completed run of a spec file in `store`."""
    if ref.suffix == ".json" and ref.is_file():
        return ref
    if not ref.is_file():
        raise CompareError(f"{cut(str(ref))}: no such run record or spec file")
    wanted, newest = str(ref.resolve()), None
    for path in sorted(runs_dir(store).glob("*.json")) if runs_dir(store).is_dir() else []:
        try:
            record = RunRecord.read(path)
        except OutputError:
            continue  # not a run record at all (a stray file, a FIFO): not this spec's
        if record.spec_path != wanted:
            continue
        finished = record.status == "completed" and any(stage == "eval" for stage, _ in record.stages)
        if finished and (newest is None or record.started > newest[0]):
            newest = (record.started, path)
    if newest is None:
        raise CompareError(f"{ref}: no completed run of this spec in {store}; run it first (runner run {ref})")
    return newest[1]


def load_run(record_path: Path) -> Run:
    with reading():
        record = RunRecord.read(record_path)
        store = record_path.resolve().parent.parent
        artifacts = {stage: store / stage / key for stage, key in record.stages}
        metrics_path = artifacts["eval"] / "metrics.json" if "eval" in artifacts else None
        if metrics_path is None or not metrics_path.exists():
            raise CompareError(f"{record_path}: the run has no eval metrics (status {shown(record.status)}); "
                               "compare needs runs that finished their eval stage")
        metrics = EvalMetrics.read(metrics_path)
        run = Run(record.name, record_path, record, artifacts, metrics)
        for row in Prediction.read(artifacts["eval"] / "predictions.jsonl"):
            run.outcomes.setdefault(row.benchmark, {})[row.question] = (row.answer, row.tuned)
    return run


def distinct(records: list[Path], refs: list[Path]) -> None:
    """Each run once: a run tested against itself would only add a comparison to Holm's count."""
    seen: dict[Path, Path] = {}
    for record, ref in zip(records, refs):
        if record.resolve() in seen:
            raise CompareError(f"{seen[record.resolve()]} and {ref} are the same run ({record}); give each run once")
        seen[record.resolve()] = ref


def unique_labels(runs: list[Run]) -> None:
    """Runs of one spec name are told apart by their eval key, and where that is shared too (a run that
    reused another's stages) by their run record; every one of them, not just the first."""
    for suffix in ("eval key", "run record"):
        clashing = {r.label for r in runs if sum(x.label == r.label for x in runs) > 1}
        for run in runs:
            if run.label in clashing:
                run.label += "@" + (run.artifacts["eval"].name[:8] if suffix == "eval key" else run.record_path.stem)


def differences(run: Run, reference: Run) -> list[str]:
    """The spec fields where `run` differs from `reference` (name and description are cosmetic; a path
    relative to the spec file is compared as the file it names, since a sweep's variants hold it absolute)."""
    mine, theirs = spec_fields(run), spec_fields(reference)
    skip = ("name", "description")
    return [f"{k}={mine.get(k)}" for k in sorted(set(mine) | set(theirs))
            if k not in skip and mine.get(k) != theirs.get(k)]


def spec_fields(run: Run) -> dict[str, Any]:
    folder = Path(run.record.spec_path or run.record_path).parent
    out = flatten(run.record.spec)
    for key, value in out.items():
        if isinstance(value, str) and value:
            found = field_schema(tuple(int(p) if p.isdigit() else p for p in key.split(".")))[0]
            if found is not None and "relative to the spec" in found.get("description", ""):
                try:
                    out[key] = str((folder / value).resolve())
                except (OSError, ValueError, RuntimeError):  # a NUL or a link loop (RuntimeError before 3.13)
                    pass
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}.{i}").items()}
    return {prefix: value}


@dataclass(frozen=True)
class Comparison:
    benchmark: str
    run: str
    reference: str
    n: int  # questions both answered
    test: dict[str, Any] | None  # stats.paired (delta = run - reference); None when no question is shared
    holm_p: float | None = None

    @property
    def survives(self) -> bool:
        return self.holm_p is not None and self.holm_p < LEVEL


def benchmarks(runs: list[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [b for b in run.metrics.benchmarks if b not in names]
    return names


def accuracy(run: Run, bench: str, label: Literal["tuned", "base"] = "tuned") -> Score | None:
    """The run's accuracy on `bench` (the fine-tuned model's, or the base's), None where it has none."""
    entry = run.metrics.benchmarks.get(bench)
    found = None if entry is None else entry.tuned if label == "tuned" else entry.base
    return found if found is not None and found.acc is not None else None


def reference_for(runs: list[Run], bench: str, against: Literal["baseline", "best"]) -> Run | None:
    """The run every other is tested against on `bench`: the first (the baseline) or the most accurate."""
    scored = [r for r in runs if accuracy(r, bench) is not None]
    if not scored:
        return None
    if against == "baseline":
        return runs[0] if runs[0] in scored else None
    return max(scored, key=lambda r: accuracy(r, bench).acc or 0.0)  # type: ignore[union-attr]  # scored: not None


def compare(runs: list[Run], against: Literal["baseline", "best"] = "baseline") -> list[Comparison]:
    """Each run against the reference on each benchmark, paired on the questions both answered,
    with Holm's correction over every test made."""
    if len(benchmarks(runs)) > MAX_BENCHMARKS:  # each file is bounded, their union is too: a report stays readable
        raise CompareError(f"the runs have {len(benchmarks(runs)):,} benchmarks together, more than the {MAX_BENCHMARKS} "
                           "one report shows; compare fewer runs, or runs scored on the same benchmarks")
    found = []
    for bench in benchmarks(runs):
        reference = reference_for(runs, bench, against)
        if reference is None:
            continue
        for run in runs:
            if run is reference or accuracy(run, bench) is None:
                continue
            mine, theirs = run.outcomes.get(bench, {}), reference.outcomes.get(bench, {})
            shared = [q for q in mine if q in theirs and mine[q][0] == theirs[q][0]]
            test = None
            if shared:
                test = paired([theirs[q][1] == theirs[q][0] for q in shared], [mine[q][1] == mine[q][0] for q in shared])
            found.append(Comparison(bench, run.label, reference.label, len(shared), test))
    adjusted = holm([c.test["mcnemar_p"] for c in found if c.test is not None])
    out, tested = [], iter(adjusted)
    for c in found:
        out.append(Comparison(c.benchmark, c.run, c.reference, c.n, c.test, next(tested) if c.test else None))
    return out


def cost(run: Run) -> Cost:
    """What the run's training took, from the train stage's summary, metrics log and manifest."""
    with reading():
        return training_cost(run.artifacts, run.record)


def loss_curves(run: Run) -> dict[str, list[tuple[float, float]]]:
    """Training loss per logged step, and validation loss before training, wherever logged, and after."""
    with reading():
        return curves(run.artifacts)


def write_report(runs: list[Run], found: list[Comparison], folder: Path,
                 against: Literal["baseline", "best"] = "baseline") -> Path:
    """report.md (pictures beside it) and report.html (pictures inlined), written as the eval report is.

    The one light module that reaches into the eval stage: for its document writer and plotting
    (matplotlib), so both reports read and look alike (tests/unit/test_layout.py names this exception)."""
    if "\0" in str(folder):
        raise CompareError(f"{cut(repr(str(folder)))}: a NUL in the report folder's name; give --out a folder you "
                           "can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _write(runs, found, folder, against)
    except OSError as exc:  # a file in the way, /proc, a full disk
        raise CompareError(f"{cut(str(folder))}: cannot write the report there ({exc.strerror or exc}); give --out "
                           "a folder you can write to") from None


def _write(runs: list[Run], found: list[Comparison], folder: Path, against: str) -> Path:
    from runner.report.curves import plot_loss_curves, plot_run_accuracy
    from runner.report.render import to_html, to_markdown
    from runner.report.sections import Doc, Section

    pictures = {}
    table = {r.label: {b: _plotted(accuracy(r, b)) for b in benchmarks(runs)} for r in runs}
    if any(v for by_bench in table.values() for v in by_bench.values()):
        plot_run_accuracy(table, folder / "accuracy.png")
        pictures["accuracy"] = "accuracy.png"
    curves = {r.label: loss_curves(r) for r in runs}
    if any(c["train"] or c["validation"] for c in curves.values()):
        plot_loss_curves(curves, folder / "loss.png")
        pictures["loss"] = "loss.png"
    parts = sections(runs, found, against, pictures)
    with reading():  # before Cost: what each method other than SFT learned
        parts[-1:-1] = learning_sections(runs, folder)
    doc = Doc(f"Comparison of {len(runs)} runs: {', '.join(r.label for r in runs)}"[:160],
              [Section(title, blocks) for title, blocks in parts])
    (folder / "report.md").write_text(to_markdown(doc), "utf-8")
    (folder / "report.html").write_text(to_html(doc, folder), "utf-8")
    (folder / "comparison.json").write_text(json.dumps(
        {"runs": {r.label: str(r.record_path) for r in runs}, "against": against,
         "comparisons": [vars(c) for c in found]}, indent=1), "utf-8")
    return folder / "report.html"


Section = tuple[str, list[tuple[Any, ...]]]
KNOWN = {"n", "correct", "acc", "ci95", "unreadable", "max_new_tokens"}  # accuracy's own fields, shown in the accuracy table
SKIP = {"paired", "groups", "contamination", "dropped", "generative"}  # shown elsewhere, or not per run


def _plotted(r: Score | None) -> dict[str, Any] | None:
    """An accuracy as the plot reads it ({acc, ci95})."""
    return None if r is None or r.ci95 is None else {"acc": r.acc, "ci95": list(r.ci95)}


def pct(r: Score | None) -> str:
    if r is None or r.acc is None or r.ci95 is None:
        return "-"
    lo, hi = r.ci95
    return f"{100 * r.acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


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
    blocks = [block for bench in benchmarks(runs) for block in benchmark_blocks(runs, found, bench)]
    blocks.append(("p", _accuracy_note(sum(c.holm_p is not None for c in found))))
    if "accuracy" in pictures:
        blocks.append(("img", pictures["accuracy"], "accuracy per run and benchmark, 95% intervals"))
    return ("Accuracy", blocks)


def benchmark_blocks(runs: list[Run], found: list[Comparison], bench: str) -> list[tuple[Any, ...]]:
    """The benchmark's heading (the base model's accuracy where all runs share it) and its table."""
    tests = {c.run: c for c in found if c.benchmark == bench}
    reference = next(iter(tests.values())).reference if tests else None
    rows = [_accuracy_row(r, bench, tests.get(r.label), reference) for r in runs]
    bases = {pct(accuracy(r, bench, "base")) for r in runs} - {"-"}
    keep = [h for h in rows[0] if _shown(h, rows, len(bases))]
    return [("h3", _heading(bench, bases, reference)), ("table", keep, [[row[h] for h in keep] for row in rows])]


def _heading(bench: str, bases: set[str], reference: str | None) -> str:
    said = ([f"base model {next(iter(bases))}"] if len(bases) == 1 else []) + ([f"reference {reference}"] if reference else [])
    return bench + (f" ({', '.join(said)})" if said else "")


def _shown(column: str, rows: list[dict[str, str]], bases: int) -> bool:
    """A column only where it says something: the base when runs have different bases (a model-size
    sweep), generative accuracy when some run scored generated answers, the questions a test paired
    when that is not every question the run answered (sets that differ)."""
    if column == "base model [95% CI]":
        return bases > 1
    if column == "generative [95% CI]":
        return any(r[column] != "-" for r in rows)
    if column == "paired n":
        return any(r[column] not in ("-", r["n"]) for r in rows)
    return True


def _accuracy_note(m: int) -> str:
    return (f"Accuracy: the eval stage's zero-shot log-likelihood score of the fine-tuned model, with "
            f"Wilson 95% intervals (generative: the answer read off greedy text, where scored). Change: "
            f"the run minus the reference on the questions both answered, with Newcombe's 95% interval "
            f"for paired data; p: exact McNemar test on the questions only one of the two got right, as "
            f"the eval stage tests base vs fine-tuned. Holm p: corrected for the {m} comparison{'s' if m != 1 else ''} "
            f"in this report; a difference survives when it is below {LEVEL:g}. Discordant: the questions "
            f"only the reference, or only the run, answered right. Paired n, shown where the runs' question "
            f"sets differ: the questions a test paired.")


def _accuracy_row(r: Run, bench: str, c: Comparison | None, reference: str | None) -> dict[str, str]:
    entry = r.metrics.benchmarks.get(bench)
    n = entry.tuned.n if entry is not None else None
    generative = entry.generative.tuned if entry and entry.generative else None
    return {"run": r.label, "n": "-" if n is None else str(n),
            "base model [95% CI]": pct(accuracy(r, bench, "base")), "accuracy [95% CI]": pct(accuracy(r, bench)),
            "generative [95% CI]": pct(generative), **_test_columns(c, r.label == reference)}


def _test_columns(c: Comparison | None, is_reference: bool) -> dict[str, str]:
    """The paired test against the reference, Holm's correction and whether the difference survives."""
    t = c.test if c else None
    if c is None or t is None:
        return {"paired n": str(c.n) if c else "-", "change [95% CI]": "(reference)" if is_reference else "-",
                "McNemar p": "-", "Holm p": "-", "survives": "-", "discordant: only ref / only run right": "-"}
    change = (f"{100 * t['delta']:+.1f} pt [{100 * t['ci95'][0]:+.1f}, {100 * t['ci95'][1]:+.1f}]"
              if t.get("delta") is not None else "(reference)" if is_reference else "-")
    return {"paired n": str(c.n), "change [95% CI]": change, "McNemar p": p_text(t["mcnemar_p"]),
            "Holm p": p_text(c.holm_p), "survives": "-" if c.holm_p is None else "**yes**" if c.survives else "no",
            "discordant: only ref / only run right": f"{t['only_base_right']} / {t['only_tuned_right']}"}


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
    """Per benchmark, free-text set and the whole run: the further figures each run's eval wrote."""
    blocks = [block for scope, entries in metric_scopes(runs) for block in _metric_table(scope, entries, runs)]
    if blocks:
        blocks.append(("p", "Further figures the eval stage wrote for the fine-tuned models, as written in each "
                            "run's metrics.json."))
    return ("More metrics", blocks)


def metric_scopes(runs: list[Run]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(scope, each run's entry there): the benchmarks, the free-text sets, then the run's own figures.
    Read from `raw`: these are whatever figures the eval stage wrote, shown as written."""
    raws = [r.metrics.raw for r in runs]
    free = list(dict.fromkeys(name for raw in raws for name in raw.get("free_text", {})))  # qa / alpaca sets
    return ([(b, [raw["benchmarks"].get(b, {}) for raw in raws]) for b in benchmarks(runs)]
            + [(f"{name} (free text)", [raw.get("free_text", {}).get(name, {}) for raw in raws]) for name in free]
            + [("whole run", [{k: v for k, v in raw.items() if k not in ("benchmarks", "free_text")} for raw in raws])])


def _metric_table(scope: str, entries: list[dict[str, Any]], runs: list[Run]) -> list[tuple[Any, ...]]:
    found = [extra(e) for e in entries]
    names = list(dict.fromkeys(k for f in found for k in f))
    if not names:
        return []
    rows = [[name] + [_num(f.get(name)) for f in found] for name in names]
    return [("h3", scope), ("table", ["fine-tuned"] + [r.label for r in runs], rows)]


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
        params = f"{c.trainable:,} ({100 * c.trainable / c.total:.2f}%)" if c.trainable and c.total else "-"
        memory = f"{c.peak_memory_mib:,.0f} MiB ({c.device})" if c.peak_memory_mib is not None else "-"
        rows.append([r.label, _secs(c.train_seconds), _secs(c.stage_seconds), memory, params,
                     f"{c.tokens:,}" if c.tokens is not None else "-", str(c.steps or "-")])
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
                on = f" on {c.n} shared questions" if c.n != r.metrics.benchmarks[bench].tuned.n else ""
                vs = (f"; vs {c.reference} {100 * c.test['delta']:+.1f} pt{on}, McNemar p{_eq(c.test['mcnemar_p'])}, "
                      f"Holm p{_eq(c.holm_p)}: {verdict}")
            lines.append(f"    {r.label:<28} {pct(accuracy(r, bench))}{vs}")
    return lines


def _eq(p: float | None) -> str:
    return "<0.001" if p is not None and p < 0.001 else f"={p_text(p)}"
