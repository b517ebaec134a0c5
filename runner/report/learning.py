"""The report's "Learning signals" section, for a method other than SFT: what it optimised, step by step,
read from the train stage's metrics.jsonl (TrainRow). GRPO: each reward's mean with answer_correct's
shares, the weighted reward, KL to the reference and the completions' length; DPO, ORPO, KTO: the reward
margin and the preference accuracy on the training pairs and on the held-out ones, and the chosen and
rejected rewards. A picture (matplotlib, no torch) and a table, first -> last quarter of the steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runner.core.outputs import TrainRow, TrainSummary, quarter_means, reward_figure
from runner.report.sections import Doc, Section, _num, pct

TITLE = "Learning signals"
AFTER = "Training"  # the section this one follows, when the report has it
PICTURE = "learning.png"
Figure = Callable[[TrainRow], float | None]


def _steps(rows: Sequence[TrainRow]) -> list[TrainRow]:
    return [r for r in rows if r.loss is not None]  # validations are rows too


def _evals(rows: Sequence[TrainRow]) -> list[TrainRow]:
    return [r for r in rows if r.loss is None and r.eval_loss is not None]


def _names(rows: Sequence[TrainRow]) -> list[str]:
    return list(dict.fromkeys(name for r in rows for name in r.rewards))


def _has(rows: Sequence[TrainRow], figure: Figure) -> bool:
    return any(figure(r) is not None for r in rows)


SMOOTH_FROM = 40  # points: beyond this a step's figure is noise around the trend; draw its running mean over it


def _line(ax: Any, rows: Sequence[TrainRow], figure: Figure, scale: float = 1.0, **style: Any) -> None:
    """The figure per step (steps without it skipped): dots too when there are few to see them; past
    SMOOTH_FROM points faint, under its running mean."""
    _draw(ax, [(r.step, scale * v) for r in rows if (v := figure(r)) is not None and r.step is not None], **style)


def _draw(ax: Any, points: Sequence[tuple[int, float]], **style: Any) -> None:
    if not points:
        return
    xs, ys = zip(*points)
    if len(points) <= SMOOTH_FROM:
        ax.plot(xs, ys, **({"marker": "o", "markersize": 3, "linewidth": 1.4} | style))
        return
    window = max(2, len(points) // 20)
    means = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
    faint = {k: v for k, v in style.items() if k not in ("label", "marker", "markersize")}
    ax.plot(xs, ys, **({"linewidth": 0.8, "alpha": 0.3} | faint))
    ax.plot(xs, means, **({"linewidth": 1.6} | style))


def grpo_panels(rows: Sequence[TrainRow]) -> list[tuple[str, str, Callable[[Any], None]]]:
    """(title, y label, draw) per panel: the rewards, the shares, KL, the completion length."""
    steps, names = _steps(rows), _names(rows)

    def rewards(ax: Any) -> None:
        for k, name in enumerate(names):
            _line(ax, steps, reward_figure(name, "mean"), color=f"C{k % 10}", label=name)
        _line(ax, steps, lambda r: r.reward, color="black", linestyle="--", label="weighted reward")

    def shares(ax: Any) -> None:
        for k, name in enumerate(names):
            _line(ax, steps, reward_figure(name, "share_correct"), 100, color=f"C{k % 10}", label=f"{name}: correct")
            _line(ax, steps, reward_figure(name, "share_unreadable"), 100, color=f"C{k % 10}", linestyle=":",
                  label=f"{name}: no answer read")
        _line(ax, steps, lambda r: r.clipped_ratio, 100, color="grey", linestyle="--", label="cut at the length limit")
        ax.set_ylim(-3, 103)

    def kl(ax: Any) -> None:
        _line(ax, steps, lambda r: r.kl, color="C3")

    def entropy(ax: Any) -> None:
        _line(ax, steps, lambda r: r.entropy, color="C5")

    def length(ax: Any) -> None:
        _line(ax, steps, lambda r: r.completion_length, color="C4")

    # without a reference (grpo.beta 0) there is no KL: the sampled tokens' entropy says as much of how far
    # the policy moved (falling to 0: it answers one way whatever the prompt)
    third = (("KL to the reference", "KL", kl) if _has(steps, lambda r: r.kl) else
             ("entropy (no KL: grpo.beta is 0)", "entropy of the sampled tokens", entropy))
    return [("rewards, mean per step", "reward", rewards), ("shares of the completions", "% of completions", shares),
            third, ("completion length, mean", "tokens", length)]


def preference_panels(rows: Sequence[TrainRow], unit: str = "pairs") -> list[tuple[str, str, Callable[[Any], None]]]:
    """(title, y label, draw) per panel: margin and accuracy (training pairs per step, held-out pairs at
    each validation), chosen and rejected rewards; a panel the method does not log is left out."""
    steps, evals = _steps(rows), _evals(rows)

    def pair(train: Figure, held_out: Figure, scale: float = 1.0) -> Callable[[Any], None]:
        def draw(ax: Any) -> None:
            _line(ax, steps, train, scale, color="C0", label=f"training {unit}")
            # two validations (before and after, no eval_steps) are two points, not a measured path between
            apart = {"linestyle": "none"} if sum(held_out(r) is not None for r in evals) <= 2 else {"linestyle": ":"}
            _line(ax, evals, held_out, scale, color="C1", marker="s", markersize=6, label=f"held-out {unit}", **apart)
        return draw

    def rewards(ax: Any) -> None:
        _line(ax, steps, lambda r: r.reward_chosen, color="C2", label="chosen")
        _line(ax, steps, lambda r: r.reward_rejected, color="C3", label="rejected")

    panels = [("reward margin (chosen - rejected)", "reward margin",
               pair(lambda r: r.reward_margin, lambda r: r.eval_reward_margin), _has(rows, lambda r: r.reward_margin)
               or _has(rows, lambda r: r.eval_reward_margin)),
              ("preference accuracy", "% of pairs", pair(lambda r: r.preference_accuracy,
                                                         lambda r: r.eval_preference_accuracy, 100),
               _has(rows, lambda r: r.preference_accuracy) or _has(rows, lambda r: r.eval_preference_accuracy)),
              (f"rewards, training {unit}", "reward", rewards, _has(steps, lambda r: r.reward_chosen)),
              ("log odds ratio (ORPO)", "log odds ratio", pair(lambda r: r.log_odds_ratio, lambda r: r.eval_log_odds_ratio),
               _has(rows, lambda r: r.log_odds_ratio))]
    return [(title, label, draw) for title, label, draw, shown in panels if shown]


def plot_learning(method: str, rows: Sequence[TrainRow], path: Path) -> bool:
    """The method's panels side by side (two rows of two for GRPO); False when there is nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as Canvas
    from matplotlib.ticker import MaxNLocator

    if method == "sft" or not _steps(rows):
        return False
    panels = grpo_panels(rows) if method == "grpo" else preference_panels(rows, unit_of(method))
    if (method == "grpo" and not _names(rows)) or not panels:
        return False
    columns = 2 if len(panels) == 4 else len(panels)
    width = 5.2 if columns < 3 else 3.8  # the page is about 1,000 pixels wide: wider only shrinks the text
    fig = Canvas(figsize=(width * columns, 4.3 * ((len(panels) + columns - 1) // columns)))
    FigureCanvasAgg(fig)
    axes = fig.subplots((len(panels) + columns - 1) // columns, columns, squeeze=False).flatten()
    for ax, (title, label, draw) in zip(axes, panels):
        draw(ax)
        ax.set(title=title, xlabel="optimizer step", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the plot: the lines fill it, a legend inside hides some
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    smoothed = " (faint: each step; bold: the running mean over a 20th of the steps)" \
        if len(_steps(rows)) > SMOOTH_FROM else ""
    fig.suptitle(f"{method}: learning signals{smoothed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_compared(shown: str, series: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One method's headline figure per step, one colour per run (`runner compare`)."""
    from runner.report.curves import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for k, (run, points) in enumerate(series.items()):
        _draw(ax, points, color=f"C{k % 10}", label=run)
    ax.set(title=shown, xlabel="optimizer step", ylabel=shown.split(",")[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _quarters(rows: Sequence[TrainRow], figure: Figure, fmt: Callable[[float | None], str] = _num) -> str:
    q = quarter_means(rows, figure)
    return "-" if q is None else f"{fmt(q[0])} -> {fmt(q[1])}"


def grpo_rows(rows: Sequence[TrainRow]) -> list[list[str]]:
    table = []
    for name in _names(rows):
        table.append([f"reward `{name}`, mean", _quarters(rows, reward_figure(name, "mean"))])
        if _has(rows, reward_figure(name, "share_correct")):
            table.append([f"`{name}`: completions correct", _quarters(rows, reward_figure(name, "share_correct"), pct)])
        if _has(rows, reward_figure(name, "share_unreadable")):
            table.append([f"`{name}`: no answer read", _quarters(rows, reward_figure(name, "share_unreadable"), pct)])
    kl = _quarters(rows, lambda r: r.kl) if _has(rows, lambda r: r.kl) else "not measured (grpo.beta 0)"
    return table + [["weighted reward", _quarters(rows, lambda r: r.reward)], ["KL to the reference", kl],
                    ["completion length (tokens)", _quarters(rows, lambda r: r.completion_length, lambda x: _num(x, 1))],
                    ["completions cut at the length limit", _quarters(rows, lambda r: r.clipped_ratio, pct)],
                    ["entropy of the sampled tokens", _quarters(rows, lambda r: r.entropy)]]


PREFERENCE_TABLE: tuple[tuple[str, str, Figure, Callable[[float | None], str]], ...] = (
    ("preference accuracy", "preference_accuracy", lambda r: r.preference_accuracy, pct),
    ("reward margin", "reward_margin", lambda r: r.reward_margin, _num),
    ("log odds ratio", "log_odds_ratio", lambda r: r.log_odds_ratio, _num),
    ("KL estimate", "kl", lambda r: r.kl, _num))


def preference_rows(summary: TrainSummary | None, rows: Sequence[TrainRow]) -> list[list[str]]:
    """Each figure on the training pairs (first -> last quarter) and on the held-out ones (before ->
    after, from summary.json), where the method has it."""
    held_out = summary.held_out if summary is not None else {}
    table = []
    for shown, name, figure, fmt in PREFERENCE_TABLE:
        ours = held_out.get(name)
        if _has(rows, figure) or ours is not None:
            table.append([shown, _quarters(rows, figure, fmt) if _has(rows, figure) else "-",
                          f"{fmt(ours.before)} -> {fmt(ours.after)}" if ours is not None else "-"])
    return table


GRPO_NOTE = ("Each step samples `grpo.num_generations` completions per prompt and scores each with every reward; "
             "a reward's mean is over the step's completions, and the weighted reward (the rewards times their "
             "weights, summed) is what GRPO raises: each completion is pushed by how far it is above its group's "
             "mean. KL is to the reference (the starting adapter, or the base) and is only measured with "
             "`grpo.beta` > 0. A rising reward with the completions stuck at the length limit, or a length "
             "falling to nothing, is a reward being gamed: look at the answers below.")
PREFERENCE_NOTE = ("A pair's reward is beta x (the answer's log-likelihood under the trained adapter minus under "
                   "the reference; ORPO: beta x its mean log-likelihood, no reference). The margin is the chosen "
                   "answer's reward minus the rejected one's; the accuracy the share of pairs whose chosen answer "
                   "has the higher reward (a tie, as before training, is not won). Training pairs: each logged "
                   "step's batch; held-out pairs: the validation pairs, before training, at the end, and at "
                   "every validation between. Both chosen and rejected rewards falling is DPO's known drift "
                   "(the margin grows while the chosen answer gets less likely).")


KTO_NOTE = (" KTO's rows are single answers, each marked desirable (its reward is the chosen one's) or not "
            "(the rejected one's): the margin is between the two groups' mean rewards, and there is no accuracy.")


def unit_of(method: str) -> str:
    return "examples" if method == "kto" else "pairs"  # KTO's rows are answers marked good or bad, not pairs


def learning_section(method: str, summary: TrainSummary | None, rows: Sequence[TrainRow],
                     picture: str | None) -> Section:
    """The section (empty, so left out, for SFT or when metrics.jsonl has none of the method's figures)."""
    s = Section(f"{TITLE} ({method})")
    steps = len(_steps(rows))
    if method == "sft" or not steps:
        return s
    if method == "grpo":
        table = grpo_rows(rows) if _names(rows) else []
        header = ["", f"first -> last quarter of {steps} steps"]
    else:
        table = preference_rows(summary, rows)
        unit = unit_of(method)
        header = ["", f"training {unit}, first -> last quarter of {steps} steps", f"held-out {unit}, before -> after"]
    if not table:
        return s
    if picture is not None:
        s.blocks.append(("img", picture, f"{method} learning signals per step"))
    s.blocks.append(("table", header, table))
    s.blocks.append(("p", GRPO_NOTE if method == "grpo" else PREFERENCE_NOTE + (KTO_NOTE if method == "kto" else "")))
    return s


def with_learning(doc: Doc, inputs: Any) -> Doc:
    """The document with this section after the Training one (or after the results)."""
    summary: TrainSummary | None = inputs.train_summary
    section = learning_section(summary.method if summary is not None else "sft", summary,
                               inputs.train_rows, inputs.pictures.get("learning"))
    if not section.blocks:
        return doc
    titles = [s.title for s in doc.sections]
    at = titles.index(AFTER) + 1 if AFTER in titles else min(1, len(titles))
    return Doc(doc.title, doc.sections[:at] + [section] + doc.sections[at:])
