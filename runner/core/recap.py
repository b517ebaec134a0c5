"""The few lines printed at the end of `runner run` (what ran, what was reused, loss, accuracy, where)
and by `runner plan` (the profile, then each stage). The Python API's results show the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # light: `runner --help` and `plan` import this module
    from runner.core.execute import Outcome


def _read(path: Path | None, name: str) -> dict[str, Any] | None:
    if path is None or not (path / name).is_file():
        return None
    data: dict[str, Any] = json.loads((path / name).read_text("utf-8"))
    return data


def summary_lines(outcomes: Sequence[Outcome], record_path: Path, seconds: float) -> list[str]:
    ran = [o.stage for o in outcomes if o.action == "ran"]
    reused = [o.stage for o in outcomes if o.action == "reused"]
    lines = [f"summary ({seconds:.1f} s): ran {', '.join(ran) or 'nothing'}; reused {', '.join(reused) or 'nothing'}"]
    by_stage = {o.stage: o for o in outcomes}
    data = _read(by_stage["data"].path if "data" in by_stage else None, "stats.json")
    if data and "epochs" in data:  # a mixture: what each source gave
        lines.append(f"  mixture: {data['rows']['train']} rows over {len(data['epochs'])} epoch(s)")
        lines += [f"    {name}: {s['read']} read -> {s['kept']} kept, {s['dropped_total']} dropped, {s['tokens']} tokens, "
                  f"{100 * s['share']:.1f}% of an epoch" for name, s in data["sources"].items()]
    train = _read(by_stage["train"].path if "train" in by_stage else None, "summary.json")
    if train:
        lines.append(f"  loss: train {train['train_loss_first']:.3f} -> {train['train_loss_last']:.3f}"
                     + (f", validation {train['eval_loss_before']:.3f} -> {train['eval_loss_after']:.3f}"
                        if train.get("eval_loss_after") is not None else ""))
        lines += training_notes(train)
    metrics = _read(by_stage["eval"].path if "eval" in by_stage else None, "metrics.json")
    for bench, r in (metrics or {}).get("benchmarks", {}).items():
        if not r["tuned"]["n"]:
            lines.append(f"  {bench}: no usable questions (dropped: {r.get('dropped')})")
            continue
        base = f"base {100 * r['base']['acc']:.1f}% -> " if "base" in r else ""
        p = r.get("paired")
        change = ""
        if p and p.get("delta") is not None:
            pv = "p<0.001" if p["mcnemar_p"] < 0.001 else f"p={p['mcnemar_p']:.3f}"
            change = (f", change {100 * p['delta']:+.1f} pt [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}],"
                      f" McNemar {pv}")
        lines.append(f"  {bench}: {base}fine-tuned {100 * r['tuned']['acc']:.1f}% (n={r['tuned']['n']}{change})")
        if "generative" in r:
            g = r["generative"]
            gbase = f"base {100 * g['base']['acc']:.1f}% -> " if "base" in g else ""
            unreadable = ", ".join(f"{shown} {g[label]['unreadable']}"
                                   for label, shown in (("base", "base"), ("tuned", "fine-tuned")) if label in g)
            lines.append(f"  {bench} (generated answers): {gbase}fine-tuned {100 * g['tuned']['acc']:.1f}% "
                         f"(no answer letter: {unreadable} of {g['tuned']['n']})")
            lines += consistency_lines(bench, g)
    lines += clinical_lines(metrics or {})
    for o in outcomes:
        if o.path is not None:
            lines.append(f"  {o.stage:<7} {o.path}")
    report = by_stage["eval"].path / "report.html" if "eval" in by_stage and by_stage["eval"].path else None
    if report is not None and report.is_file():
        lines.append(f"  report  {report}")
    lines.append(f"  record  {record_path}")
    return lines


def clinical_lines(metrics: dict[str, Any]) -> list[str]:
    """Calibration, free-text scores and perplexity, base -> fine-tuned, one line each."""
    lines = []

    def pair(r: dict[str, Any], get: Any, fmt: str) -> str:
        values = [(shown, get(r[label])) for label, shown in (("base", "base "), ("tuned", "fine-tuned ")) if label in r]
        return " -> ".join(f"{shown}{'-' if v is None else format(v, fmt)}" for shown, v in values)

    for bench, r in metrics.get("benchmarks", {}).items():
        c = r.get("calibration")
        if c and r["tuned"]["n"]:
            lines.append(f"  {bench} calibration: ECE {pair(c, lambda m: m['ece'], '.3f')}; Brier "
                         f"{pair(c, lambda m: m['brier'], '.3f')}; acc at 20% coverage "
                         f"{pair(c, lambda m: m['selective_acc'].get('20'), '.1%')}")
        rule = (r.get("uncertainty") or {}).get("abstain")
        if rule:  # the spec's abstention rule: what answering only above the threshold buys
            lines.append(f"  {bench} abstaining below {rule['signal']} {rule['threshold']}: accuracy answered "
                         f"{pair(rule, lambda m: m['acc_answered'], '.1%')}; abstained "
                         f"{pair(rule, lambda m: m['abstained'], '.1%')}")
    for bench, r in metrics.get("free_text", {}).items():
        lines.append(f"  {bench} (free text, n={r['n']}): ROUGE-L {pair(r, lambda m: m['rougeL'], '.1f')}; "
                     f"BLEU {pair(r, lambda m: m['bleu'], '.1f')}")
    p = metrics.get("perplexity")
    if p:
        lines.append(f"  perplexity ({p['path']}, {p['tokens']:,} tokens): {pair(p, lambda m: m['ppl'], '.2f')}")
    return lines


def training_notes(train: dict[str, Any]) -> list[str]:
    """Validation loss per source (a mixture's) and what early stopping did, a line each."""
    lines = []
    by_source = train.get("eval_loss_by_source") or {}
    if by_source:
        lines.append("  validation by source: " + ", ".join(
            f"{name} {_loss(v['before'])} -> {_loss(v['after'])}" for name, v in by_source.items()))
    stopping = train.get("early_stopping")
    if stopping:
        best = f"best step {stopping['best_step']}, validation {_loss(stopping['best_eval_loss'])}"
        lines.append(f"  early stopping: {stopping['reason']}; the adapter is the {best}" if stopping["best_step"]
                     else f"  early stopping: {stopping['reason']}; no evaluation came before the end")
    return lines


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
    return f" x {profile.processes} processes ({profile.distributed.upper()}){threads}"


def plan_lines(profile: Any, steps: Sequence[str]) -> list[str]:
    """What `runner plan` prints: the profile and why, then a line per stage and the estimates."""
    return [f"profile: {profile_line(profile)}{sharing(profile)}", *(f"  - {reason}" for reason in profile.reasons),
            *steps]


def consistency_lines(bench: str, g: dict[str, Any]) -> list[str]:
    """The sampled mode's figures: the vote of k, one sample, pass@k, failed extractions (fine-tuned)."""
    c = g.get("consistency", {}).get("tuned")
    if not c or c.get("samples", 1) < 2:
        return []
    k = str(c["samples"])
    return [f"  {bench} (vote of {k}): fine-tuned vote {100 * c['vote']['acc']:.1f}%, one sample "
            f"{100 * c['single']['acc']:.1f}%, pass@{k} {100 * c['pass_at_k'][k]['mean']:.1f}%, "
            f"agreement {c['agreement']['mean']:.2f}, failed extractions {c['failed_samples']} of "
            f"{c['vote']['n'] * c['samples']} samples"]
