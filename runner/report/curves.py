"""Pictures of the comparison report over several runs (`runner compare`): accuracy per run and
benchmark with its interval, and every run's loss curves in one figure. matplotlib, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run_accuracy(table: dict[str, dict[str, dict[str, Any] | None]], path: Path) -> None:
    """table[run][benchmark] = the eval stage's accuracy entry ({acc, ci95}) or None: horizontal bars
    grouped by benchmark, one colour per run, 95% intervals as error bars."""
    plt = _pyplot()
    runs = list(table)
    benches = list(dict.fromkeys(b for by_bench in table.values() for b in by_bench))
    height = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.3 * len(runs) * len(benches) + 0.4 * len(benches)))
    for k, run in enumerate(runs):
        ys: list[float] = []
        accs: list[float] = []
        errs: list[list[float]] = [[], []]
        for i, bench in enumerate(benches):
            r = table[run].get(bench)
            if r is None:
                continue
            ys.append(i - 0.4 + height * (k + 0.5))
            accs.append(100 * r["acc"])
            errs[0].append(100 * (r["acc"] - r["ci95"][0]))
            errs[1].append(100 * (r["ci95"][1] - r["acc"]))
        ax.barh(ys, accs, height=height * 0.9, xerr=errs, capsize=3, label=run, color=f"C{k % 10}")
    ax.set(yticks=range(len(benches)), yticklabels=benches, xlim=(0, 100), xlabel="accuracy (%), 95% interval")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(runs)), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_loss_curves(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> None:
    """curves[run] = {"train": [(step, loss)], "validation": [(step, loss)]}: training loss on the left,
    validation loss on the right, one colour per run in both."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (run, c) in enumerate(curves.items()):
        if c["train"]:
            left.plot(*zip(*c["train"]), color=f"C{k % 10}", linewidth=1.2, label=run)
        if c["validation"]:
            right.plot(*zip(*c["validation"]), color=f"C{k % 10}", marker="o", linewidth=1.5, label=run)
    left.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    right.set(title="validation loss", xlabel="optimizer step", ylabel="loss (answer tokens)")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
