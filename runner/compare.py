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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.errors import RunnerError
from runner.records import runs_dir
from runner.schema import field_schema
from runner.stats import holm, paired

LEVEL = 0.05  # the family-wise error level a difference must survive


class CompareError(RunnerError):
    """A run to compare cannot be found or has no evaluation."""

    exit_code = 2


@dataclass
class Run:
    label: str
    record_path: Path
    record: dict[str, Any]
    artifacts: dict[str, Path]  # stage -> folder in the store
    metrics: dict[str, Any]  # the eval stage's metrics.json
    outcomes: dict[str, dict[Any, tuple[Any, Any]]] = field(default_factory=dict)  # bench -> question -> (answer, tuned)


def find_run(ref: Path, store: Path) -> Path:
    """A run record as given, or the newest completed run of a spec file in `store`."""
    if ref.suffix == ".json" and ref.is_file():
        return ref
    if not ref.is_file():
        raise CompareError(f"{ref}: no such run record or spec file")
    wanted, newest = str(ref.resolve()), None
    for path in sorted(runs_dir(store).glob("*.json")) if runs_dir(store).is_dir() else []:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("spec_path") != wanted or shape_problem(data):
            continue  # another spec's run, or not a run record at all (a stray file): not this spec's
        finished = data.get("status") == "completed" and any(s.get("stage") == "eval" for s in data["stages"])
        started = data.get("started")
        started = started if isinstance(started, (int, float)) and not isinstance(started, bool) else 0.0
        if finished and (newest is None or started > newest[0]):
            newest = (started, path)
    if newest is None:
        raise CompareError(f"{ref}: no completed run of this spec in {store}; run it first (runner run {ref})")
    return newest[1]


def shape_problem(record: Any) -> str | None:
    """What makes `record` no run record (runner.records writes an object with spec and stages)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a run record (an object)"
    if not isinstance(record.get("spec"), dict):
        return "no spec in it"
    stages = record.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("stage"), str) for s in stages):
        return "its stages are not a list of {stage, key}"
    return None


def load_run(record_path: Path) -> Run:
    try:
        record = json.loads(record_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"{record_path}: run record cannot be read ({exc})") from None
    problem = shape_problem(record)
    if problem:
        raise CompareError(f"{record_path}: not a run record: {problem}; give a file from STORE/runs/ or a spec file")
    store = record_path.resolve().parent.parent
    artifacts = {s["stage"]: store / s["stage"] / str(s["key"]) for s in record.get("stages", []) if s.get("key")}
    metrics = read_json(artifacts["eval"] / "metrics.json") if "eval" in artifacts else None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("benchmarks", {}), dict):
        raise CompareError(f"{record_path}: the run has no eval metrics (status {record.get('status')}); "
                           "compare needs runs that finished their eval stage")
    run = Run(str(record["spec"].get("name", record_path.stem)), record_path, record, artifacts, metrics)
    for row in read_jsonl(artifacts["eval"] / "predictions.jsonl"):
        if not isinstance(row, dict) or not {"benchmark", "answer", "tuned"} <= set(row):
            raise CompareError(f"{artifacts['eval'] / 'predictions.jsonl'}: a row without benchmark, answer and tuned; "
                               "the eval artifact is damaged: run that spec with --force eval")
        question = row["id"] if row.get("id") is not None else row.get("index")
        run.outcomes.setdefault(str(row["benchmark"]), {})[question] = (row["answer"], row["tuned"])
    return run


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


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
    folder = Path(str(run.record.get("spec_path") or run.record_path)).parent
    out = flatten(run.record["spec"])
    for key, value in out.items():
        if isinstance(value, str) and value:
            found = field_schema(tuple(int(p) if p.isdigit() else p for p in key.split(".")))[0]
            if found is not None and "relative to the spec" in found.get("description", ""):
                out[key] = str((folder / value).resolve())
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
        names += [b for b in run.metrics.get("benchmarks", {}) if b not in names]
    return names


def accuracy(run: Run, bench: str, label: str = "tuned") -> dict[str, Any] | None:
    found: dict[str, Any] | None = run.metrics.get("benchmarks", {}).get(bench, {}).get(label)
    return found if found and found.get("acc") is not None else None


def reference_for(runs: list[Run], bench: str, against: Literal["baseline", "best"]) -> Run | None:
    """The run every other is tested against on `bench`: the first (the baseline) or the most accurate."""
    scored = [r for r in runs if accuracy(r, bench) is not None]
    if not scored:
        return None
    if against == "baseline":
        return runs[0] if runs[0] in scored else None
    return max(scored, key=lambda r: accuracy(r, bench)["acc"])  # type: ignore[index]  # scored: not None


def compare(runs: list[Run], against: Literal["baseline", "best"] = "baseline") -> list[Comparison]:
    """Each run against the reference on each benchmark, paired on the questions both answered,
    with Holm's correction over every test made."""
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


def cost(run: Run) -> dict[str, Any]:
    """What the run's training took, from the train stage's summary, metrics log and manifest."""
    train = run.artifacts.get("train")
    summary = read_json(train / "summary.json") if train else None
    manifest = read_json(train / "manifest.json") if train else None
    rows = read_jsonl(train / "metrics.jsonl") if train else []
    stats = read_json(run.artifacts["data"] / "stats.json") if "data" in run.artifacts else None
    memory = [r["memory_mib"] for r in rows if r.get("memory_mib") is not None]
    out: dict[str, Any] = {"train_seconds": summary.get("seconds") if summary else None,
                           "stage_seconds": (manifest or {}).get("info", {}).get("seconds"),
                           "peak_memory_mib": max(memory) if memory else None,
                           "device": run.record.get("profile", {}).get("device"),
                           "trainable": summary.get("trainable_parameters") if summary else None,
                           "total": summary.get("total_parameters") if summary else None,
                           "steps": summary.get("steps") if summary else None, "tokens": None}
    seen = [r["num_input_tokens_seen"] for r in rows if r.get("num_input_tokens_seen") is not None]
    if seen:
        out["tokens"] = seen[-1]
    elif stats and isinstance(stats.get("train_tokens"), dict) and stats["train_tokens"].get("total"):
        # The data stage's token count of one epoch times the epochs trained: the Trainer's last logged
        # epoch, else the steps over the steps an epoch takes (its last batch partial, not full).
        epochs = next((r["epoch"] for r in reversed(rows) if isinstance(r.get("epoch"), (int, float))), None)
        batch = run.record["spec"].get("train", {}).get("batch_size")
        if epochs is None and summary and summary.get("train_rows") and summary.get("steps") and batch:
            epochs = summary["steps"] / math.ceil(summary["train_rows"] / batch)
        out["tokens"] = round(stats["train_tokens"]["total"] * epochs) if epochs is not None else None
    return out


def loss_curves(run: Run) -> dict[str, list[tuple[float, float]]]:
    """Training loss per logged step, and validation loss before training, wherever logged, and after."""
    train = run.artifacts.get("train")
    rows = read_jsonl(train / "metrics.jsonl") if train else []
    summary = (read_json(train / "summary.json") if train else None) or {}
    validation = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if summary.get("eval_loss_before") is not None and not any(step == 0 for step, _ in validation):
        validation.insert(0, (0, summary["eval_loss_before"]))
    last = summary.get("steps")
    if summary.get("eval_loss_after") is not None and last is not None and not any(s == last for s, _ in validation):
        validation.append((last, summary["eval_loss_after"]))
    return {"train": [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None], "validation": validation}


def write_report(runs: list[Run], found: list[Comparison], folder: Path,
                 against: Literal["baseline", "best"] = "baseline") -> Path:
    """report.md (pictures beside it) and report.html (pictures inlined), written as the eval report is.

    The one light module that reaches into the eval stage: for its document writer and plotting
    (matplotlib), so both reports read and look alike (tests/unit/test_layout.py names this exception)."""
    from runner.comparedoc import sections
    from runner.stages.eval.curves import plot_loss_curves, plot_run_accuracy
    from runner.stages.eval.report import to_html, to_markdown
    from runner.stages.eval.reportdoc import Doc, Section

    folder.mkdir(parents=True, exist_ok=True)
    pictures = {}
    table = {r.label: {b: accuracy(r, b) for b in benchmarks(runs)} for r in runs}
    if any(v for by_bench in table.values() for v in by_bench.values()):
        plot_run_accuracy(table, folder / "accuracy.png")
        pictures["accuracy"] = "accuracy.png"
    curves = {r.label: loss_curves(r) for r in runs}
    if any(c["train"] or c["validation"] for c in curves.values()):
        plot_loss_curves(curves, folder / "loss.png")
        pictures["loss"] = "loss.png"
    doc = Doc(f"Comparison of {len(runs)} runs: {', '.join(r.label for r in runs)}"[:160],
              [Section(title, blocks) for title, blocks in sections(runs, found, against, pictures)])
    (folder / "report.md").write_text(to_markdown(doc), "utf-8")
    (folder / "report.html").write_text(to_html(doc, folder), "utf-8")
    (folder / "comparison.json").write_text(json.dumps(
        {"runs": {r.label: str(r.record_path) for r in runs}, "against": against,
         "comparisons": [vars(c) for c in found]}, indent=1), "utf-8")
    return folder / "report.html"
