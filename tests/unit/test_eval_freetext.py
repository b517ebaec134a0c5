"""Free-text scoring: the libraries' own ROUGE-L and BLEU, scaled and averaged as the report says."""

from __future__ import annotations

import pytest

from runner.core.errors import DataError
from runner.rows.formats import Dropped
from runner.scoring.texts import score_texts
from runner.spec.typed import Benchmark
from runner.stages.eval.freetext import free_text_examples


def test_identical_answers_score_100_and_disjoint_ones_0() -> None:
    refs = ["imatinib is preferred first line", "epinephrine given intramuscularly at once"]
    assert score_texts(refs, refs) == {"rougeL": 100.0, "bleu": 100.0}
    assert score_texts(["nothing alike here", "no overlap whatsoever"], refs) == {"rougeL": 0.0, "bleu": 0.0}


def test_rouge_l_is_the_mean_f1_of_the_longest_common_subsequence() -> None:
    # "imatinib" against "D. imatinib": LCS 1 word; precision 1/2 ("d" and "imatinib"), recall 1 -> F1 2/3.
    # The second answer is exact (F1 1): the mean is 5/6.
    scores = score_texts(["D. imatinib", "metformin"], ["imatinib", "metformin"])
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6, abs=0.01)
    assert scores["bleu"] == 0.0  # no 4-gram in either answer: unsmoothed corpus BLEU is 0, as sacrebleu says


def test_rows_become_prompt_and_reference_and_none_usable_is_one_line() -> None:
    bench = Benchmark(name="q", format="alpaca")
    rows = [{"instruction": "Name the drug.", "input": "CML", "output": "imatinib"}, Dropped("not valid JSON")]
    examples, dropped = free_text_examples(bench, rows)
    assert examples[0].messages == (("user", "Name the drug.\n\nCML"), ("assistant", "imatinib"))
    assert dropped == {"not valid JSON": 1}
    with pytest.raises(DataError, match=r"^eval.benchmarks.q: no usable alpaca rows \(not valid JSON: 1\)$"):
        free_text_examples(bench, [Dropped("not valid JSON")])
