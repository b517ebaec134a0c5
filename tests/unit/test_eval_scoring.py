"""The harness's tokenization rules (BOS, trailing spaces, the context/continuation cut, left
truncation) and the row plan, on a word-level tokenizer of the test's own: no torch here."""

from __future__ import annotations

import re
from typing import Any

from runner.scoring.benchmarks import Item
from runner.scoring.loglik import Request, encoder, max_length_of, plan_rows, predictions, requests_for


class WordTokenizer:
    """Words with their leading space (or newline) are tokens; `add_bos` mimics Llama 3's post-processor."""

    def __init__(self, add_bos: bool = True, merges: tuple[str, ...] = ()) -> None:
        self.vocab: dict[str, int] = {"<s>": 1, "</s>": 2}
        self.bos_token_id, self.eos_token_id, self.bos_token = 1, 2, "<s>"
        self.add_bos, self.merges = add_bos, merges
        self.model_max_length = 1000000000000000019884624838656

    def _ids(self, text: str) -> list[int]:
        pieces = re.findall(r"<s>|" + "|".join(map(re.escape, self.merges)) + r"|\s?\S+|\s+", text) if self.merges \
            else re.findall(r"<s>|\s?\S+|\s+", text)
        return [self.vocab.setdefault(p, len(self.vocab) + 1) for p in pieces]

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        return {"input_ids": [([1] if add_special_tokens and self.add_bos else []) + self._ids(t) for t in texts]}

    def decode(self, ids: list[int]) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


def harness_encode_pair(tok: WordTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM._encode_pair and tok_encode (add_bos_token unset), transcribed."""
    def tok_encode(s: str) -> list[int]:
        specials = not s.startswith(tok.decode([tok.bos_token_id]))
        return tok([s], add_special_tokens=specials)["input_ids"][0]

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc, context_enc = tok_encode(context + continuation), tok_encode(context)
    return context_enc, whole_enc[len(context_enc):]


ITEMS = [Item("Question: a b?\nA. x\nB. y\nAnswer:", ("A", "B"), 1, None, None),
         Item("Abstract: c d\nQuestion: e?\nAnswer: ", ("yes", "no", "maybe"), 2, None, None)]


def test_requests_follow_the_harness_split_with_and_without_bos() -> None:
    for add_bos in (True, False):
        tok = WordTokenizer(add_bos)
        requests = requests_for(ITEMS, tok, lambda p: p)
        want = [harness_encode_pair(tok, item.prompt, " " + choice) for item in ITEMS for choice in item.choices]
        assert [(list(r.context), list(r.continuation)) for r in requests] == want
        assert all((r.context[0] == 1) == add_bos for r in requests)
    # The trailing space of the second prompt moved into its continuations: "  yes", not " yes".
    assert tok.decode(list(requests[2].continuation)) == "  yes"


def test_a_chat_rendered_prompt_that_starts_with_bos_gets_no_second_bos() -> None:
    tok = WordTokenizer(add_bos=True)
    requests = requests_for(ITEMS[:1], tok, lambda p: "<s>" + p + "\n", delimiter="")
    assert requests[0].context.count(1) == 1 and requests[0].context[0] == 1
    assert tok.decode(list(requests[0].continuation)) == "\nA"  # the template's newline moved over


def test_the_continuation_is_cut_at_the_context_length_as_the_harness_cuts_it() -> None:
    """When the tokenizer merges across the boundary the harness keeps the context's own tokens and
    cuts the whole at their count (dropping what the merge swallowed); so do we."""
    tok = WordTokenizer(add_bos=False, merges=(" q r",))
    (r,) = requests_for([Item("p q", ("r s",), 0, None, None)], tok, lambda p: p)
    assert (list(r.context), list(r.continuation)) == harness_encode_pair(tok, "p q", " r s")
    assert tok.decode(list(r.context)) == "p q" and tok.decode(list(r.continuation)) == " s"


def test_one_token_choices_share_one_row_and_prefixes_merge() -> None:
    requests = [Request(0, c, (1, 5, 6), (t,)) for c, t in enumerate((7, 8, 9, 10))]
    requests += [Request(1, 0, (1, 5), (11,)), Request(1, 1, (1, 5), (12, 13)), Request(1, 2, (1, 5), (12, 13, 14))]
    rows = plan_rows(requests, max_length=100)
    assert [r.tokens for r in rows] == [(1, 5, 12, 13), (1, 5, 6)]
    assert sorted(rows[1].wanted) == [(0, 2), (1, 2), (2, 2), (3, 2)]  # every letter read at the last position
    assert sorted(rows[0].wanted) == [(4, 1), (5, 1), (6, 1)]  # " maybe" holds " yes" and " no"


def test_long_inputs_are_left_truncated_as_the_harness_does() -> None:
    context, cont = tuple(range(1, 21)), (30, 31)
    (row,) = plan_rows([Request(0, 0, context, cont)], max_length=8)
    assert row.tokens == (context + cont)[-9:][:-1] and len(row.tokens) == 8
    assert row.wanted == ((0, 6),)  # the continuation's two logits sit at positions 6 and 7


def test_predictions_take_the_first_of_equal_maxima() -> None:
    requests = [Request(i, c, (1,), (2,)) for i in range(2) for c in range(3)]
    assert predictions(2, requests, [-1.0, -0.5, -0.5, -3.0, -2.0, -1.0]) == [1, 2]


def test_max_length_comes_from_the_config_then_the_tokenizer() -> None:
    class Config:
        max_position_embeddings = 1024

    class Model:
        config = Config()

    class NoLength:
        config = object()

    tok: Any = WordTokenizer()
    assert max_length_of(Model(), tok) == 1024
    assert max_length_of(NoLength(), tok) == 2048  # tokenizer says "no limit": the harness's default
    tok.model_max_length = 4096
    assert max_length_of(NoLength(), tok) == 4096


def test_encoder_batches_like_single_calls() -> None:
    tok = WordTokenizer()
    texts = ["<s>x y", "x y", " z"]
    assert encoder(tok)(texts) == [tok([texts[0]], add_special_tokens=False)["input_ids"][0],
                                   tok([texts[1]])["input_ids"][0], tok([texts[2]])["input_ids"][0]]
