"""What a method other than SFT learned, as the run summary prints it and the report shows it: GRPO's
rewards, shares, KL and completion length, a preference method's margin and accuracy on training and
held-out pairs, from metrics.jsonl's rows (TrainRow) and summary.json (TrainSummary). No torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.core.outputs import OutputError, RewardStep, TrainRow, TrainSummary, quarter_means
from runner.core.recap import method_lines, result_lines, training_notes
from runner.report.learning import learning_section, plot_learning, with_learning
from runner.report.render import to_html, to_markdown
from runner.report.sections import Doc, Section


def grpo_step(step: int, correct: float, kl: float | None = None) -> TrainRow:
    """A GRPO row as GrpoMetricsLog writes it: answer_correct with its shares, a length penalty."""
    row: dict[str, Any] = {"step": step, "epoch": step / 8, "loss": 0.1, "learning_rate": 1e-3,
                           "completions/mean_length": 12.0 - step, "completions/clipped_ratio": 1.0 - step / 8,
                           "rewards/answer_correct/mean": correct, "rewards/answer_correct/std": 0.3,
                           "rewards/length_penalty/mean": -0.8 + step / 20, "rewards/length_penalty/std": 0.2,
                           "reward": correct - 0.1 + step / 50, "reward_std": 0.3,
                           "rewards/answer_correct/share_correct": correct,
                           "rewards/answer_correct/share_unreadable": 1.0 - 2 * correct, "entropy": 6.9}
    return TrainRow.of(row | ({"kl": kl} if kl is not None else {}))


# 8 steps: each quarter is 2 steps; answer_correct 0.0, 0.1 at first, 0.4, 0.5 at last
GRPO = [grpo_step(s, [0.0, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.5][s - 1]) for s in range(1, 9)]


def dpo_rows() -> list[TrainRow]:
    """Validation rows (no loss) before and after, training rows between, as MetricsLog writes them."""
    rows = [TrainRow.of({"step": 0, "epoch": 0.0, "eval_loss": 0.693, "eval_rewards/accuracies": 0.0,
                         "eval_rewards/margins": 0.0})]
    for s in range(1, 9):
        rows.append(TrainRow.of({"step": s, "epoch": s / 4, "loss": 0.7 - s / 16, "rewards/accuracies": s / 8,
                                 "rewards/margins": s / 2, "rewards/chosen": s / 10, "rewards/rejected": -s / 5}))
    return rows + [TrainRow.of({"step": 8, "epoch": 2.0, "eval_loss": 0.02, "eval_rewards/accuracies": 0.875,
                                "eval_rewards/margins": 3.5})]


DPO_SUMMARY = TrainSummary.of({"steps": 8, "method": "dpo", "held_out": {
    "preference_accuracy": {"before": 0.0, "after": 0.875}, "reward_margin": {"before": 0.0, "after": 3.5}}})


def test_rows_read_each_methods_figures_and_refuse_a_non_number() -> None:
    row = GRPO[0]
    assert row.rewards == {"answer_correct": RewardStep(0.0, 0.3, 0.0, 1.0), "length_penalty": RewardStep(-0.75, 0.2)}
    assert (row.completion_length, row.clipped_ratio, row.entropy, row.kl) == (11.0, 0.875, 6.9, None)
    held = dpo_rows()[-1]
    assert (held.loss, held.eval_preference_accuracy, held.eval_reward_margin, held.reward_margin) == (None, 0.875, 3.5, None)
    with pytest.raises(OutputError, match="rewards/answer_correct/mean is 'high', not a number"):
        TrainRow.of({"step": 1, "rewards/answer_correct/mean": "high"}, "metrics.jsonl line 1")
    assert TrainRow.of({"step": 1, "rewards/margins": 1.0}).rewards == {}  # DPO's rewards/<figure> is no GRPO reward


def test_quarter_means_are_over_the_training_steps_only() -> None:
    assert quarter_means(dpo_rows(), lambda r: r.reward_margin) == (0.75, 3.75)  # steps 1-2 and 7-8, not the validations
    assert quarter_means(GRPO, lambda r: r.kl) is None
    assert quarter_means(GRPO[:3], lambda r: r.rewards["answer_correct"].mean) == (0.0, 0.2)  # a quarter is one step at least


def test_grpo_summary_has_a_line_per_reward_shares_kl_and_length() -> None:
    summary = TrainSummary.of({"steps": 8, "method": "grpo"})
    assert method_lines(summary, GRPO) == [
        "  grpo, first -> last quarter of 8 steps:",
        "    reward answer_correct: 0.050 -> 0.450; correct 5.0% -> 45.0%, no answer read 90.0% -> 10.0%",
        "    reward length_penalty: -0.725 -> -0.425",
        "    weighted reward: -0.020 -> 0.500",
        "    KL to the reference: not measured (grpo.beta 0)",
        "    completion length: 10.5 -> 4.5 tokens, cut at the limit 81.2% -> 6.2%"]
    with_kl = [grpo_step(s, 0.1, kl=s / 100) for s in range(1, 9)]
    assert "    KL to the reference: 0.015 -> 0.075" in method_lines(summary, with_kl)


def test_preference_summary_adds_the_training_pairs_to_the_held_out_line() -> None:
    assert training_notes(DPO_SUMMARY) == ["  dpo held-out pairs: preference accuracy 0.000 -> 0.875, "
                                           "reward margin 0.000 -> 3.500"]
    assert method_lines(DPO_SUMMARY, dpo_rows()) == [
        "  dpo training pairs, first -> last quarter of 8 steps: preference accuracy 0.188 -> 0.938, "
        "reward margin 0.750 -> 3.750"]
    assert method_lines(DPO_SUMMARY, []) == []  # a train stage of an older runner logged none


def _artifact(folder: Path, summary: dict[str, Any], rows: str) -> dict[str, Path | None]:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text(rows)
    return {"train": folder}


def test_the_run_summary_reads_the_rows_for_grpo_and_leaves_sft_as_it_was(tmp_path: Path) -> None:
    sft = {"steps": 8, "train_loss_first": 2.0, "train_loss_last": 1.0}
    # SFT's metrics.jsonl is not read at all: even a damaged one changes nothing in its lines
    assert result_lines(_artifact(tmp_path / "sft", sft, "not json\n")) == ["  loss: train 2.000 -> 1.000"]
    rows = "".join(json.dumps(r.raw) + "\n" for r in GRPO)
    lines = result_lines(_artifact(tmp_path / "grpo", sft | {"method": "grpo"}, rows))
    assert lines[:3] == ["  loss: train 2.000 -> 1.000", "  grpo, first -> last quarter of 8 steps:",
                         "    reward answer_correct: 0.050 -> 0.450; correct 5.0% -> 45.0%, no answer read 90.0% -> 10.0%"]


def test_grpo_section_tables_each_reward_and_shows_the_picture() -> None:
    s = learning_section("grpo", TrainSummary.of({"steps": 8, "method": "grpo"}), GRPO, "learning.png")
    assert s.title == "Learning signals (grpo)"
    assert s.blocks[0] == ("img", "learning.png", "grpo learning signals per step")
    kind, header, table = s.blocks[1]
    assert kind == "table" and header == ["", "first -> last quarter of 8 steps"]
    assert table[:3] == [["reward `answer_correct`, mean", "0.050 -> 0.450"],
                         ["`answer_correct`: completions correct", "5.0% -> 45.0%"],
                         ["`answer_correct`: no answer read", "90.0% -> 10.0%"]]
    shown = dict(map(tuple, table))
    assert shown["reward `length_penalty`, mean"] == "-0.725 -> -0.425"
    assert shown["KL to the reference"] == "not measured (grpo.beta 0)"
    assert shown["completion length (tokens)"] == "10.5 -> 4.5"
    assert "`length_penalty`: completions correct" not in shown  # a reward without shares has no share rows


def test_preference_section_sets_training_pairs_beside_held_out_ones() -> None:
    s = learning_section("dpo", DPO_SUMMARY, dpo_rows(), None)
    assert s.blocks[0][0] == "table"  # no picture given: none shown
    assert s.blocks[0][1][1:] == ["training pairs, first -> last quarter of 8 steps", "held-out pairs, before -> after"]
    assert s.blocks[0][2] == [["preference accuracy", "18.8% -> 93.8%", "0.0% -> 87.5%"],
                              ["reward margin", "0.750 -> 3.750", "0.000 -> 3.500"]]
    kto_rows = [TrainRow.of({"step": 1, "loss": 0.5, "rewards/margins": 0.5, "kl": 0.0}),
                TrainRow.of({"step": 2, "loss": 0.4, "rewards/margins": 1.5, "kl": 0.0})]
    kto = learning_section("kto", TrainSummary.of({"steps": 2, "method": "kto", "held_out": {
        "kl": {"before": 0.0, "after": 0.0}, "reward_margin": {"before": 0.0, "after": 1.2}}}), kto_rows, None)
    assert kto.blocks[0][1][1:] == ["training examples, first -> last quarter of 2 steps",  # unpaired: no accuracy
                                    "held-out examples, before -> after"]
    assert kto.blocks[0][2] == [["reward margin", "0.500 -> 1.500", "0.000 -> 1.200"],
                                ["KL estimate", "0.000 -> 0.000", "0.000 -> 0.000"]]
    assert not learning_section("sft", None, dpo_rows(), "learning.png").blocks  # SFT: no section
    assert not learning_section("dpo", DPO_SUMMARY, [], None).blocks  # no steps logged: no section


class Given:
    def __init__(self, summary: TrainSummary, rows: list[TrainRow], pictures: dict[str, str]) -> None:
        self.train_summary, self.train_rows, self.pictures = summary, rows, pictures


def test_the_section_follows_training_and_its_picture_is_drawn(tmp_path: Path) -> None:
    doc = Doc("r", [Section("Results", [("p", "x")]), Section("Training", [("p", "y")]), Section("Profile", [("p", "z")])])
    assert plot_learning("dpo", dpo_rows(), tmp_path / "learning.png")
    assert (tmp_path / "learning.png").stat().st_size > 10_000  # three panels drawn, not an empty canvas
    placed = with_learning(doc, Given(DPO_SUMMARY, dpo_rows(), {"learning": "learning.png"}))
    assert [s.title for s in placed.sections] == ["Results", "Training", "Learning signals (dpo)", "Profile"]
    assert "![dpo learning signals per step](learning.png)" in to_markdown(placed)
    assert to_html(placed, tmp_path).count('src="data:image/png;base64,') == 1
    assert with_learning(doc, Given(TrainSummary.of({"steps": 8}), dpo_rows(), {})) == doc  # SFT: unchanged
    assert plot_learning("grpo", GRPO, tmp_path / "grpo.png") and not plot_learning("sft", GRPO, tmp_path / "sft.png")
    assert not (tmp_path / "sft.png").exists()


def test_compare_sets_each_methods_runs_side_by_side_and_leaves_sft_to_the_loss(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from runner.experiments.learned import learning_sections

    def trained(label: str, summary: dict[str, Any], rows: list[TrainRow]) -> Any:
        folder = tmp_path / label / "train"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary))
        TrainRow.write(folder / "metrics.jsonl", rows)
        return SimpleNamespace(label=label, artifacts={"train": folder})

    halved = [TrainRow.of(r.raw | {"rewards/margins": r.raw["rewards/margins"] / 2}) if r.loss is not None else r
              for r in dpo_rows()]
    runs = [trained("sft", {"steps": 8}, []), trained("dpo-1", DPO_SUMMARY.raw, dpo_rows()),
            trained("grpo", {"steps": 8, "method": "grpo"}, GRPO), trained("dpo-2", DPO_SUMMARY.raw, halved),
            SimpleNamespace(label="trained elsewhere", artifacts={})]
    found = dict(learning_sections(runs, tmp_path))
    assert list(found) == ["Learning signals (dpo)", "Learning signals (grpo)"]  # no SFT section, methods as met
    dpo = {block[0]: block[1:] for block in found["Learning signals (dpo)"]}
    header, table = dpo["table"]
    assert header == ["", "dpo-1", "dpo-2"]
    rows = {row[0]: row[1:] for row in table}
    assert rows["steps"] == ["8", "8"]
    # steps 1-2 and 7-8: margins s/2 -> 0.75 and 3.75; the second run's halved
    assert rows["reward margin, training pairs (first -> last quarter)"] == ["0.750 -> 3.750", "0.375 -> 1.875"]
    assert rows["preference accuracy, held-out pairs (before -> after)"] == ["0.0% -> 87.5%"] * 2
    assert dpo["img"][0] == "learning-dpo.png" and (tmp_path / "learning-dpo.png").stat().st_size > 10_000
    grpo_blocks = {block[0]: block[1:] for block in found["Learning signals (grpo)"]}
    grpo = {row[0]: row[1:] for row in grpo_blocks["table"][1]}
    assert grpo["`answer_correct`: completions correct"] == ["5.0% -> 45.0%"]
