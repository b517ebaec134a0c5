"""Self-consistency math against cases worked by hand."""

from __future__ import annotations

import math

import pytest

from runner.scoring.consistency import compare, consistency, ks_of, mean_interval, pass_at_k, per_question, vote


def test_vote_majority_ties_and_failures() -> None:
    assert vote(["B", "A", "B"]) == ("B", 2 / 3)
    assert vote(["A", "B", "B", "A"]) == ("A", 0.5)  # a tie: the first sampled of the tied wins
    assert vote(["B", "A", "A", "B"]) == ("B", 0.5)
    assert vote([None, None, None, "C"]) == ("C", 0.25)  # failures do not vote, but count in the agreement
    assert vote([None, None]) == (None, 0.0)
    assert vote([]) == (None, 0.0)


def test_pass_at_k_by_hand() -> None:
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is c/n
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # only one wrong sample: any two include a right one
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


def test_ks_and_mean_interval() -> None:
    assert ks_of(1) == [1]
    assert ks_of(5) == [1, 2, 4, 5]
    assert ks_of(8) == [1, 2, 4, 8]
    m = mean_interval([0.5, 0.25, 0.75, 0.5])
    assert m["mean"] == 0.5
    half = 1.959963984540054 * math.sqrt((2 * 0.0625 / 3) / 4)  # sample variance over n
    assert m["ci95"] == [round(0.5 - half, 4), round(0.5 + half, 4)]
    assert mean_interval([1.0, 0.0, 1.0, 0.0])["ci95"] == [0.0, 1.0]  # clipped to what a share can be
    assert mean_interval([])["mean"] is None


def test_consistency_summary_by_hand() -> None:
    samples = [["A", "A", "B"],    # vote A right, sample 1 right, 2 of 3 right
               ["B", "C", "C"],    # vote C right, sample 1 wrong
               [None, None, "D"],  # vote D wrong (key A), two failures
               [None, None, None]]  # no vote: wrong
    keys = ["A", "C", "A", "B"]
    s = consistency(samples, keys)
    assert s["samples"] == 3
    assert (s["vote"]["correct"], s["vote"]["n"]) == (2, 4)
    assert s["single"]["correct"] == 1
    assert s["single_mean"]["mean"] == round((2 / 3 + 2 / 3 + 0 + 0) / 4, 4)
    assert s["agreement"]["mean"] == round((2 / 3 + 2 / 3 + 1 / 3 + 0) / 4, 4)
    assert (s["failed_samples"], s["failed_votes"]) == (5, 1)
    assert set(s["pass_at_k"]) == {"1", "2", "3"}
    assert s["pass_at_k"]["3"]["mean"] == 0.5  # two questions have a right sample among three
    assert s["pass_at_k"]["1"]["mean"] == s["single_mean"]["mean"]  # pass@1 is the mean single-sample accuracy
    assert s["vote_vs_single"]["only_tuned_right"] == 1  # question 2: the vote fixed sample 1
    with pytest.raises(ValueError, match="same number"):
        consistency([["A"], ["A", "B"]], ["A", "A"])


def test_per_question_and_paired_compare() -> None:
    assert per_question(["B", None, "B"], "B") == {"answers": ["B", None, "B"], "vote": "B", "agreement": 0.6667,
                                                  "right": True}
    base = [["A", "B", "B"], ["C", "C", "C"]]
    tuned = [["A", "A", "B"], ["D", "C", "C"]]
    c = compare(base, tuned, ["A", "C"])
    assert c["vote"]["only_tuned_right"] == 1 and c["vote"]["only_base_right"] == 0
    assert c["single"]["only_base_right"] == 1  # question 2: base's first sample right, tuned's wrong


def test_report_and_summary_show_vote_single_pass_and_failures() -> None:
    from runner.core.recap import consistency_lines
    from runner.report.sections import consistency_blocks

    c = consistency([["A", "A", "B"], ["B", "C", "C"], [None, None, "D"], [None, None, None]], ["A", "C", "A", "B"])
    g = {"samples": 3, "decoding": "sampled", "temperature": 0.7, "max_new_tokens": 64, "thinking_budget": 32,
         "extract": "last-answer", "consistency": {"tuned": c}}
    (line,) = consistency_lines("medqa", g)
    assert line == ("  medqa (vote of 3): fine-tuned vote 50.0%, one sample 25.0%, pass@3 50.0%, agreement 0.42, "
                    "failed extractions 5 of 12 samples")
    heading, table, prose = consistency_blocks({"medqa": g})
    assert heading == ("h3", "Self-consistency") and table[2][0][:3] == ["medqa", "tuned", "3"]
    assert table[2][0][-1] == "5 / 12" and "up to 32 thinking tokens" in prose[1]
    assert consistency_lines("medqa", g | {"consistency": {"tuned": c | {"samples": 1}}}) == []
