"""The few lines printed at the end of `runner run` (what ran, what was reused, loss, accuracy, where)
and by `runner plan` (the profile, then each stage). The Python API's results show the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runner.core.outputs import (
    Benchmark,
    Calibrated,
    DataStats,
    EvalMetrics,
    Paired,
    TrainRow,
    TrainSummary,
    quarter_means,
    reward_figure,
)

if TYPE_CHECKING:  # light: `runner --help` and `plan` import this module
    from runner.core.execute import Outcome


Output = TypeVar("Output", DataStats, TrainSummary, EvalMetrics)


def _read(kind: type[Output], folder: Path | None, name: str) -> Output | None:
    return kind.read(folder / name) if folder is not None and (folder / name).is_file() else None


def summary_lines(outcomes: Sequence[Outcome], record_path: Path, seconds: float) -> list[str]:
    folders = {o.stage: o.path for o in outcomes}
    return [f"summary ({seconds:.1f} s): ran {_stages(outcomes, 'ran')}; reused {_stages(outcomes, 'reused')}",
            *result_lines(folders), *where_lines(outcomes), f"  record  {record_path}"]


def _stages(outcomes: Sequence[Outcome], action: str) -> str:
    return ", ".join(o.stage for o in outcomes if o.action == action) or "nothing"


def where_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """Each stage's folder, then the eval report when it was written."""
    lines = [f"  {o.stage:<7} {o.path}" for o in outcomes if o.path is not None]
    report = next((o.path / "report.html" for o in outcomes if o.stage == "eval" and o.path), None)
    return lines + ([f"  report  {report}"] if report is not None and report.is_file() else [])


def result_lines(folders: dict[str, Path | None]) -> list[str]:
    """What the data, train and eval stages wrote, as far as they ran."""
    stats = _read(DataStats, folders.get("data"), "stats.json")
    train = _read(TrainSummary, folders.get("train"), "summary.json")
    metrics = _read(EvalMetrics, folders.get("eval"), "metrics.json")
    lines = mixture_lines(stats) if stats is not None else []
    lines += loss_lines(train) if train is not None else []
    folder = folders.get("train")
    if train is not None and folder is not None and train.method != "sft":  # SFT's lines are what they were
        lines += method_lines(train, TrainRow.read(folder / "metrics.jsonl"))
    if metrics is not None:
        lines += [line for name, bench in metrics.benchmarks.items() for line in benchmark_lines(name, bench)]
        lines += clinical_lines(metrics)
    return lines


def mixture_lines(stats: DataStats) -> list[str]:
    """A mixture: what each source gave (a single source says nothing here)."""
    if not stats.mixture:
        return []
    return [f"  mixture: {stats.train_rows} rows over {stats.epochs} epoch(s)"] + [
        f"    {name}: {s.read} read -> {s.kept} kept, {s.dropped_total} dropped, {s.tokens} tokens, "
        f"{_pct(s.share)} of an epoch" for name, s in stats.sources.items()]


def loss_lines(train: TrainSummary) -> list[str]:
    validation = (f", validation {_loss(train.eval_loss_before)} -> {_loss(train.eval_loss_after)}"
                  if train.eval_loss_after is not None else "")
    return [f"  loss: train {_loss(train.train_loss_first)} -> {_loss(train.train_loss_last)}{validation}",
            *training_notes(train)]


def benchmark_lines(name: str, r: Benchmark) -> list[str]:
    """Base -> fine-tuned accuracy with the paired test; generated answers' accuracy when scored."""
    if not r.tuned.n:
        return [f"  {name}: no usable questions (dropped: {r.dropped})"]
    base = f"base {_pct(r.base.acc)} -> " if r.base is not None else ""
    lines = [f"  {name}: {base}fine-tuned {_pct(r.tuned.acc)} (n={r.tuned.n}{_change(r.paired)})"]
    g = r.generative
    if g is not None:
        gbase = f"base {_pct(g.base.acc)} -> " if g.base is not None else ""
        unreadable = ", ".join(f"{shown} {score.unreadable}" for shown, score in (("base", g.base), ("fine-tuned", g.tuned))
                               if score is not None)
        lines.append(f"  {name} (generated answers): {gbase}fine-tuned {_pct(g.tuned.acc)} "
                     f"(no answer letter: {unreadable} of {g.tuned.n})")
        lines += consistency_lines(name, r.raw.get("generative") or {})
    return lines


def _change(p: Paired | None) -> str:
    if p is None or p.delta is None or p.mcnemar_p is None or p.ci95 is None:
        return ""
    pv = "p<0.001" if p.mcnemar_p < 0.001 else f"p={p.mcnemar_p:.3f}"
    return f", change {100 * p.delta:+.1f} pt [{100 * p.ci95[0]:+.1f}, {100 * p.ci95[1]:+.1f}], McNemar {pv}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pair(values: dict[str, float | None], fmt: str) -> str:
    """Base -> fine-tuned, each as given (a model not scored is left out; a figure it lacks is '-')."""
    shown = {"base": "base ", "tuned": "fine-tuned "}
    return " -> ".join(f"{shown[label]}{'-' if v is None else format(v, fmt)}" for label, v in values.items())


def clinical_lines(metrics: EvalMetrics) -> list[str]:
    """Calibration, free-text scores and perplexity, base -> fine-tuned, one line each."""
    lines = [line for name, r in metrics.benchmarks.items() for line in uncertainty_lines(name, r)]
    lines += [f"  {name} (free text, n={f.n}): ROUGE-L {_pair({k: s['rougeL'] for k, s in f.scores.items()}, '.1f')}; "
              f"BLEU {_pair({k: s['bleu'] for k, s in f.scores.items()}, '.1f')}" for name, f in metrics.free_text.items()]
    p = metrics.perplexity
    if p is not None:
        lines.append(f"  perplexity ({p.path}, {p.tokens:,} tokens): {_pair(p.ppl, '.2f')}")
    return lines


def uncertainty_lines(name: str, r: Benchmark) -> list[str]:
    """Calibration, then the spec's abstention rule: what answering only above the threshold buys."""
    lines = [calibration_line(name, r.calibration)] if r.calibration and r.tuned.n else []
    rule = (r.raw.get("uncertainty") or {}).get("abstain")  # untyped yet: eval.abstain came after runner.core.outputs
    if rule:
        pair = {label: rule[label] for label in ("base", "tuned") if label in rule}
        lines.append(f"  {name} abstaining below {rule['signal']} {rule['threshold']}: accuracy answered "
                     f"{_pair({k: m['acc_answered'] for k, m in pair.items()}, '.1%')}; abstained "
                     f"{_pair({k: m['abstained'] for k, m in pair.items()}, '.1%')}")
    return lines


def calibration_line(name: str, by_model: dict[str, Calibrated]) -> str:
    return (f"  {name} calibration: ECE {_pair({k: c.ece for k, c in by_model.items()}, '.3f')}; Brier "
            f"{_pair({k: c.brier for k, c in by_model.items()}, '.3f')}; acc at 20% coverage "
            f"{_pair({k: c.selective_acc.get('20') for k, c in by_model.items()}, '.1%')}")


def training_notes(train: TrainSummary) -> list[str]:
    """Validation loss per source (a mixture's), a preference method's held-out figures and what early
    stopping did, a line each."""
    lines = []
    if train.by_source:
        lines.append("  validation by source: " + ", ".join(
            f"{name} {_loss(v.before)} -> {_loss(v.after)}" for name, v in train.by_source.items()))
    if train.held_out:  # dpo, orpo, kto
        lines.append(f"  {train.method} held-out pairs: " + ", ".join(
            f"{name.replace('_', ' ')} {_loss(v.before)} -> {_loss(v.after)}" for name, v in train.held_out.items()))
    stopping = train.early_stopping
    if stopping:
        best = f"best step {stopping.best_step}, validation {_loss(stopping.best_eval_loss)}"
        lines.append(f"  early stopping: {stopping.reason}; the adapter is the {best}" if stopping.best_step
                     else f"  early stopping: {stopping.reason}; no evaluation came before the end")
    return lines


# A preference method's figures on its training pairs, as the held-out line names them (TRL logs what it has:
# DPO accuracy and margin, ORPO also its log odds ratio, KTO its margin and KL estimate).
PREFERENCE_FIGURES: tuple[tuple[str, Callable[[TrainRow], float | None]], ...] = (
    ("preference accuracy", lambda r: r.preference_accuracy), ("reward margin", lambda r: r.reward_margin),
    ("log odds ratio", lambda r: r.log_odds_ratio), ("kl", lambda r: r.kl))


def method_lines(train: TrainSummary, rows: Sequence[TrainRow]) -> list[str]:
    """What a method other than SFT learned, from metrics.jsonl's steps: the mean over the first and the
    last quarter of the steps (summary.json's rule), GRPO's per reward, a preference method's on its
    training pairs (the held-out pairs' line, before -> after, is training_notes')."""
    steps = sum(1 for r in rows if r.loss is not None)
    span = f"first -> last quarter of {steps} step{'s' if steps != 1 else ''}"
    if train.method == "grpo":
        return grpo_lines(rows, span)
    moved = [(name, q) for name, figure in PREFERENCE_FIGURES if (q := quarter_means(rows, figure)) is not None]
    return [f"  {train.method} training pairs, {span}: "
            + ", ".join(f"{name} {q[0]:.3f} -> {q[1]:.3f}" for name, q in moved)] if moved else []


def grpo_lines(rows: Sequence[TrainRow], span: str) -> list[str]:
    """One line per reward (answer_correct's with its shares right and unreadable), the weighted total,
    KL to the reference and the completions' length."""
    names = list(dict.fromkeys(name for r in rows for name in r.rewards))
    if not names:
        return []
    lines = [f"  grpo, {span}:"]
    for name in names:
        mean, right, blank = (quarter_means(rows, reward_figure(name, figure))
                              for figure in ("mean", "share_correct", "share_unreadable"))
        shares = (f"; correct {_pct(right[0])} -> {_pct(right[1])}" if right else "") + (
            f", no answer read {_pct(blank[0])} -> {_pct(blank[1])}" if blank else "")
        lines.append(f"    reward {name}: {_moved(mean)}{shares}")
    lines.append(f"    weighted reward: {_moved(quarter_means(rows, lambda r: r.reward))}")
    kl = quarter_means(rows, lambda r: r.kl)
    lines.append(f"    KL to the reference: {_moved(kl)}" if kl else "    KL to the reference: not measured (grpo.beta 0)")
    length, cut = quarter_means(rows, lambda r: r.completion_length), quarter_means(rows, lambda r: r.clipped_ratio)
    if length:
        lines.append(f"    completion length: {length[0]:.1f} -> {length[1]:.1f} tokens"
                     + (f", cut at the limit {_pct(cut[0])} -> {_pct(cut[1])}" if cut else ""))
    return lines


def _moved(q: tuple[float, float] | None) -> str:
    return "n/a" if q is None else f"{q[0]:.3f} -> {q[1]:.3f}"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(outcomes: Sequence[Outcome], record_path: Path, seconds: float) -> None:
    print("\n".join(summary_lines(outcomes, record_path, seconds)), flush=True)


def profile_line(profile: Any) -> str:
    """The profile in one line, as `plan` prints it (the server's /v1/specs/plan says the same)."""
    return (f"{profile.device} {profile.dtype}, quantization {profile.quantization}, "
            f"micro-batch {profile.micro_batch_size} x {profile.gradient_accumulation}")


def sharing(profile: Any) -> str:
    """The processes and, on CPU, the threads each trains on (the count is in the keys there)."""
    threads = f", {profile.threads} CPU thread{'s' if profile.threads != 1 else ''}" if profile.device == "cpu" else ""
    if profile.processes == 1:
        return threads
    return f" x {profile.processes} processes ({SHARING.get(profile.distributed, profile.distributed)}){threads}"


SHARING = {"ddp": "DDP", "fsdp": "FSDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}  # as their own docs write them


def plan_lines(profile: Any, steps: Sequence[str]) -> list[str]:
    """What `runner plan` prints: the profile and why, then a line per stage and the estimates."""
    return [f"profile: {profile_line(profile)}{sharing(profile)}", *(f"  - {reason}" for reason in profile.reasons),
            *steps]


def consistency_lines(bench: str, g: dict[str, Any]) -> list[str]:
    """The sampled mode's figures: the vote of k, one sample, pass@k, failed extractions (fine-tuned).
    Read from the generative entry as written: eval's sampled mode came after runner.core.outputs."""
    c = g.get("consistency", {}).get("tuned")
    if not c or c.get("samples", 1) < 2:
        return []
    k = str(c["samples"])
    return [f"  {bench} (vote of {k}): fine-tuned vote {100 * c['vote']['acc']:.1f}%, one sample "
            f"{100 * c['single']['acc']:.1f}%, pass@{k} {100 * c['pass_at_k'][k]['mean']:.1f}%, "
            f"agreement {c['agreement']['mean']:.2f}, failed extractions {c['failed_samples']} of "
            f"{c['vote']['n'] * c['samples']} samples"]
