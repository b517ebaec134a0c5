"""Free text against references: mean ROUGE-L F1 and corpus BLEU, as rouge-score and sacrebleu compute them."""

from __future__ import annotations


def score_texts(answers: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 (stemmed, as the rouge-score default for English) and corpus BLEU, both 0-100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references)]
    bleu = sacrebleu.corpus_bleu(answers, [references]).score
    return {"rougeL": round(100 * sum(rouge) / len(rouge), 2) if rouge else 0.0, "bleu": round(bleu, 2)}
