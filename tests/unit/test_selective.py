"""Risk-coverage, AURC, per-signal calibration and the abstention rule against values worked by hand."""

from __future__ import annotations

import math

import pytest

from runner.scoring.selective import (
    abstain,
    aurc,
    brier_binary,
    cumulative_errors,
    curve,
    optimal_aurc,
    pairs_of,
    selective_accuracy,
    signal_figures,
    uncertainty,
)

CONF = [0.9, 0.8, 0.7, 0.6]


def test_aurc_of_a_perfect_and_a_worst_ranking() -> None:
    # Right answers first: risks at k = 1..4 are 0, 0, 1/3, 1/2 -> AURC = (1/3 + 1/2) / 4 = 5/24.
    assert aurc(CONF, [True, True, False, False]) == pytest.approx(5 / 24)
    assert optimal_aurc([True, True, False, False]) == pytest.approx(5 / 24)
    # Wrong answers first: risks 1, 1, 2/3, 1/2 -> 19/24.
    assert aurc(CONF, [False, False, True, True]) == pytest.approx(19 / 24)
    # The optimum depends on the accuracy only, not on the order of the flags.
    assert optimal_aurc([False, True, False, True]) == pytest.approx(5 / 24)
    figures = signal_figures(CONF, [True, True, False, False])
    assert figures["eaurc"] == 0.0
    assert signal_figures(CONF, [False, False, True, True])["eaurc"] == pytest.approx(round(14 / 24, 4))


def test_all_right_or_all_wrong_leave_nothing_to_rank() -> None:
    assert aurc(CONF, [True] * 4) == 0.0 and optimal_aurc([True] * 4) == 0.0
    assert aurc(CONF, [False] * 4) == 1.0 and optimal_aurc([False] * 4) == 1.0


def test_ties_count_their_mean_error_not_the_questions_order() -> None:
    # All four tied, half right: whatever the order, the expected risk is 1/2 at every coverage.
    assert cumulative_errors([0.5] * 4, [True, False, True, False]) == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])
    assert aurc([0.5] * 4, [True, False, True, False]) == pytest.approx(0.5)
    assert aurc([0.5] * 4, [False, False, True, True]) == pytest.approx(0.5)  # the order does not matter
    # calibration.selective_accuracy keeps the order (0.0 here); a threshold cannot split ties: 1/2.
    assert selective_accuracy([0.5, 0.5], [False, True], 0.5) == pytest.approx(0.5)
    # A tie group after a lone top answer: 0.9 right, then {0.4 wrong, 0.4 right, 0.4 wrong}.
    errors = cumulative_errors([0.4, 0.9, 0.4, 0.4], [False, True, True, False])
    assert errors == pytest.approx([0, 0, 2 / 3, 4 / 3, 2])
    assert aurc([0.4, 0.9, 0.4, 0.4], [False, True, True, False]) == pytest.approx((0 + 1 / 3 + 4 / 9 + 1 / 2) / 4)


def test_selective_accuracy_and_curve() -> None:
    confidences = [0.6, 0.9, 0.5, 0.8, 0.7]  # most confident first: 0.9 T, 0.8 T, 0.7 F, 0.6 T, 0.5 F
    correct = [True, True, False, True, False]
    assert selective_accuracy(confidences, correct, 1.0) == pytest.approx(3 / 5)
    assert selective_accuracy(confidences, correct, 0.6) == pytest.approx(2 / 3)
    assert selective_accuracy(confidences, correct, 0.2) == 1.0
    assert math.isnan(selective_accuracy([], [], 0.5))
    assert curve(confidences, correct, points=5) == [[0.2, 0.0], [0.4, 0.0], [0.6, 0.3333], [0.8, 0.25], [1.0, 0.4]]
    assert curve(confidences, correct, points=20)[-1] == [1.0, 0.4]  # 20 points over 5 answers: 5 distinct
    assert len(curve(confidences, correct, points=20)) == 5


def test_brier_and_ece_of_a_signal() -> None:
    assert brier_binary([1.0, 0.0], [True, False]) == 0.0
    assert brier_binary([1.0, 0.0], [False, True]) == 1.0
    assert brier_binary([0.75] * 4, [True, True, True, False]) == pytest.approx((3 * 0.0625 + 0.5625) / 4)
    figures = signal_figures([0.75] * 4, [True, True, True, False])
    assert figures["ece"] == 0.0 and figures["acc"] == 0.75 and figures["confidence"] == 0.75


def test_abstention_at_a_threshold() -> None:
    out = abstain(CONF, [True, False, True, False], 0.7)  # answers 0.9, 0.8, 0.7 (>= is answered)
    assert out == {"threshold": 0.7, "n": 4, "answered": 3, "abstained": 0.25, "acc_answered": 0.6667,
                   "acc_all": 0.5}
    none = abstain(CONF, [True] * 4, 0.95)
    assert none["answered"] == 0 and none["abstained"] == 1.0 and none["acc_answered"] is None


def test_rows_with_signals_are_scored_per_model_and_signal() -> None:
    rows = [{"signals": {"base": {"loglik": {"confidence": c, "correct": y}},
                         "tuned": {"loglik": {"confidence": c, "correct": not y},
                                   "vote": {"confidence": 1.0, "correct": True}}}}
            for c, y in zip(CONF, [True, True, False, False])]
    rows.append({"benchmark": "x"})  # a row without signals counts for none
    assert pairs_of(rows)["tuned"]["vote"] == ([1.0] * 4, [True] * 4)
    out = uncertainty(rows, ("loglik", 0.75))
    assert out["base"]["loglik"]["aurc"] == round(5 / 24, 4)
    assert out["tuned"]["loglik"]["aurc"] == round(19 / 24, 4)
    assert set(out["tuned"]) == {"loglik", "vote"} and set(out["base"]) == {"loglik"}
    assert out["abstain"]["base"]["acc_answered"] == 1.0 and out["abstain"]["tuned"]["acc_answered"] == 0.0
    assert out["abstain"]["signal"] == "loglik" and "abstain" not in uncertainty(rows)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="3 confidences but 2"):
        cumulative_errors([0.1, 0.2, 0.3], [True, False])


def _metrics() -> dict[str, object]:
    rows = [{"signals": {label: {"loglik": {"confidence": c, "correct": y}} for label in ("base", "tuned")}}
            for c, y in zip(CONF, [True, False, True, False])]
    return {"benchmarks": {"medqa": {"uncertainty": uncertainty(rows, ("loglik", 0.7))}}}


def test_the_report_section_and_the_summary_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from runner.core.outputs import EvalMetrics
    from runner.core.recap import clinical_lines
    from runner.report.uncertainty import plot_risk_coverage, uncertainty_section

    metrics = _metrics()
    assert plot_risk_coverage(metrics["benchmarks"], tmp_path / "rc.png")  # type: ignore[arg-type]
    assert (tmp_path / "rc.png").stat().st_size > 5000
    typed = EvalMetrics.of(metrics)  # as the eval stage hands it to the report and the summary reads it
    section = uncertainty_section(SimpleNamespace(metrics=typed, pictures={"risk_coverage": "rc.png"}))
    header, rows = next(b[1:] for b in section.blocks if b[0] == "table")
    assert header[:6] == ["benchmark", "model", "signal", "n", "accuracy", "AURC"]
    # 0.9 T, 0.8 F, 0.7 T, 0.6 F: risks 0, 1/2, 1/3, 1/2 -> AURC 1/3
    assert rows[0][:6] == ["medqa", "base", "log-likelihood softmax", "4", "50.0%", "0.333"]
    rule = [b for b in section.blocks if b[0] == "table"][1][2]
    assert rule[1] == ["medqa", "fine-tuned", "loglik >= 0.7", "3 / 4", "25.0%", "66.7%", "50.0%"]
    assert ("img", "rc.png", "risk-coverage curves, base vs fine-tuned") in section.blocks
    (line,) = [x for x in clinical_lines(typed) if "abstaining" in x]
    assert line == "  medqa abstaining below loglik 0.7: accuracy answered base 66.7% -> fine-tuned 66.7%; " \
                   "abstained base 25.0% -> fine-tuned 25.0%"
    assert not plot_risk_coverage({"x": {}}, tmp_path / "none.png")


def test_abstain_is_checked_and_keyed_only_when_set(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from runner.core.errors import RunnerError
    from runner.spec.typed import parse_spec
    from runner.stages.eval import spec_slice

    (tmp_path / "t.jsonl").write_text('{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n')
    base = "model: {source: init}\ndata: {train: {path: t.jsonl}}\neval:\n  benchmarks: [{name: b, path: t.jsonl}]\n"
    plain = parse_spec(base, base_dir=tmp_path)
    assert "abstain" not in spec_slice(plain)["eval"]
    ruled = parse_spec(base + "  abstain: {signal: loglik, threshold: 0.6}\n", base_dir=tmp_path)
    assert spec_slice(ruled)["eval"]["abstain"] == {"signal": "loglik", "threshold": 0.6}
    with pytest.raises(RunnerError, match=r"eval.abstain.signal.*generative.enabled: true"):
        parse_spec(base + "  abstain: {signal: token_prob, threshold: 0.6}\n", base_dir=tmp_path)
    with pytest.raises(RunnerError, match="threshold"):
        parse_spec(base + "  abstain: {signal: loglik, threshold: 1.5}\n", base_dir=tmp_path)
