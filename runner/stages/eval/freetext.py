"""Free-text benchmarks (`format: qa`, `alpaca` or `chat`): each row's prompt rendered as training renders it
(a chat row: the conversation up to its last assistant turn, which is the reference),
answered by both models with greedy decoding, the answers scored against the references with
ROUGE-L (rouge-score) and BLEU (sacrebleu), the libraries people report these with.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from runner.core.errors import DataError
from runner.rows.formats import Example, convert_rows, count_reasons, prompt_text, scored_turns, to_example
from runner.scoring.texts import score_texts
from runner.spec.typed import Benchmark, Spec


def free_text_examples(bench: Benchmark, rows: Any) -> tuple[list[Example], dict[str, int]]:
    """The benchmark's rows as examples ending with their reference turn, and the rows dropped by reason."""
    examples, dropped = convert_rows(rows, lambda row: scored_turns(to_example(row, bench.format, bench.fields)),
                                     bench.limit)
    if not examples:
        raise DataError(f"eval.benchmarks.{bench.name}: no usable {bench.format} rows "
                        f"({', '.join(f'{k}: {v}' for k, v in count_reasons(dropped).items()) or 'the file is empty'})")
    return examples, count_reasons(dropped)


def prompt_ids(example: Example, tok: Any, spec: Spec) -> list[int]:
    """The prompt's tokens exactly as the data stage tokenized it in training, up to where the answer starts."""
    turns = example.messages[:-1]  # the last turn is the reference
    if spec.data.template == "plain":
        # Training's plain form is single-turn; a longer chat prompt is its turns' texts, a blank line apart.
        ids: list[int] = tok("\n\n".join(text for _, text in turns)).input_ids
        return ids
    messages = [{"role": "system", "content": spec.data.system_prompt}] if spec.data.system_prompt else []
    messages += [{"role": role, "content": text} for role, text in turns]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    return ids


def score_free_text(ctx: Any, model: Any, tok: Any, bench: Benchmark, loaded: tuple[list[Example], dict[str, int]],
                    labels: tuple[str, ...], rows_file: TextIO) -> dict[str, Any]:
    """Both models' greedy answers to one free-text benchmark, their scores, and a row per question."""
    from runner.models.adapter import adapter_off
    from runner.models.loading import require_chat_template
    from runner.scoring.loglik import max_length_of
    from runner.stages.eval.generation import generate_batch

    if ctx.spec.data.template == "chat":
        require_chat_template(tok, "eval")
    examples, dropped = loaded
    tokens = ctx.spec.eval.generation.max_new_tokens
    room = max(1, max_length_of(model, tok) - tokens)
    prompts = [prompt_ids(e, tok, ctx.spec)[-room:] for e in examples]  # left-truncated, as scoring does
    references = [e.messages[-1][1] for e in examples]
    out: dict[str, Any] = {"format": bench.format, "n": len(examples), "max_new_tokens": tokens, "decoding": "greedy",
                           "dropped": dropped}
    written = {}
    for label in labels:
        ctx.log(f"eval: {bench.name}, {label} model, {len(examples)} free-text answers, {tokens} tokens each")
        with adapter_off(model, label == "base"):
            written[label] = [t.strip() for t in generate_batch(model, tok, prompts, tokens, ctx.spec.eval.batch_size)]
        out[label] = score_texts(written[label], references)
    for i, (example, reference) in enumerate(zip(examples, references)):
        row = {"benchmark": bench.name, "index": i, "prompt": prompt_text(example), "reference": reference}
        rows_file.write(json.dumps(row | {label: texts[i] for label, texts in written.items()}, ensure_ascii=False) + "\n")
    return out
