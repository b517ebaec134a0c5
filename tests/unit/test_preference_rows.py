"""The preference methods' record formats (runner.rows.pairs), the method switch's rules and keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.core.errors import SpecError
from runner.rows.formats import Dropped, convert_rows
from runner.rows.pairs import Labelled, Pair, example_of, to_labelled, to_pair
from runner.spec.typed import Fields, Spec, parse_spec
from runner.stages import all_stages

F = Fields()
USER = {"role": "user", "content": "Which drug for CML?"}


def test_text_pair_renders_as_one_user_turn_and_two_answers() -> None:
    pair = to_pair({"prompt": "Which drug for CML?", "chosen": "imatinib", "rejected": "aspirin"}, F)
    assert pair == Pair((("user", "Which drug for CML?"),), "imatinib", "aspirin")
    assert example_of({"prompt": "q?", "chosen": "a", "rejected": "b"}, "preference", F).messages == (
        ("user", "q?"), ("assistant", "a"))


def test_ultrafeedback_layout_reads_like_the_explicit_one() -> None:
    ultra = {"prompt": "Which drug for CML?",
             "chosen": [USER, {"role": "assistant", "content": "imatinib"}],
             "rejected": [USER, {"role": "assistant", "content": "aspirin"}]}
    explicit = {"prompt": [USER], "chosen": [{"role": "assistant", "content": "imatinib"}],
                "rejected": [{"role": "assistant", "content": "aspirin"}]}
    implicit = {"chosen": ultra["chosen"], "rejected": ultra["rejected"]}  # no prompt column: what both share
    assert to_pair(ultra, F) == to_pair(explicit, F) == to_pair(implicit, F) == Pair(
        (("user", "Which drug for CML?"),), "imatinib", "aspirin")


def test_multi_turn_prompt_keeps_earlier_turns_as_context() -> None:
    turns = [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "A TKI."},
             {"role": "user", "content": "Which one?"}]
    pair = to_pair({"prompt": turns, "chosen": "imatinib", "rejected": "aspirin"}, F)
    assert pair.prompt[0] == ("system", "Be brief.") and pair.prompt[-1] == ("user", "Which one?")
    assert len(pair.prompt) == 4


def test_columns_are_named_in_fields() -> None:
    fields = Fields(prompt="question", chosen="good", rejected="bad")
    assert to_pair({"question": "q?", "good": "a", "bad": "b"}, fields).chosen == "a"


@pytest.mark.parametrize(("row", "reason"), [
    ({"chosen": "a", "rejected": "b"}, "no user message before the answers (prompt)"),
    ({"prompt": "q?", "rejected": "b"}, "missing chosen (chosen)"),
    ({"prompt": "q?", "chosen": "a", "rejected": "  "}, "empty rejected (rejected)"),
    ({"prompt": "q?", "chosen": "a", "rejected": "a"}, "chosen and rejected are the same"),
    ({"prompt": "q?", "chosen": 3, "rejected": "b"}, "chosen is neither a text nor a list of messages (chosen)"),
    ({"prompt": "q?", "chosen": [USER], "rejected": "b"}, "chosen does not end with an assistant message (chosen)"),
    ({"chosen": [USER, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other?"}, {"role": "assistant", "content": "b"}]},
     "chosen and rejected answer different conversations"),
    ({"prompt": "q?", "chosen": [{"role": "tool", "content": "x"}], "rejected": "b"},
     "a tool turn: tool calls are not trained"),
])
def test_broken_pairs_are_refused_with_one_line(row: dict, reason: str) -> None:
    with pytest.raises(Dropped) as caught:
        to_pair(row, F)
    assert str(caught.value) == reason and "\n" not in reason


def test_kto_rows_read_their_label() -> None:
    assert to_labelled({"prompt": "q?", "completion": "a", "label": True}, F) == Labelled((("user", "q?"),), "a", True)
    for value, want in (("false", False), (0, False), (1.0, True), ("True", True)):
        assert to_labelled({"prompt": "q?", "completion": "a", "label": value}, F).desirable is want
    bad: tuple[object, ...] = (None, "maybe", 2, [True])
    for wrong in bad:
        with pytest.raises(Dropped, match=r"^label is not true or false \(label\)$"):
            to_labelled({"prompt": "q?", "completion": "a", "label": wrong}, F)


def test_dropped_rows_are_counted_by_reason() -> None:
    rows = [{"prompt": "q?", "chosen": "a", "rejected": "b"}, {"prompt": "q?", "chosen": "a", "rejected": "a"}]
    kept, dropped = convert_rows(rows, lambda row: to_pair(row, F))
    assert len(kept) == 1 and dropped == ["chosen and rejected are the same"]


def _spec(tmp_path: Path, body: str) -> Spec:
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "q?", "chosen": "a", "rejected": "b"}) + "\n")
    return parse_spec("model: {source: init}\ndata: {train: {path: pairs.jsonl}, format: " + body + "}\n",
                      base_dir=tmp_path)


def test_method_and_format_must_agree(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="train.method sft reads one of multiple_choice.*got preference; set "
                                        "train.method dpo or orpo"):
        _spec(tmp_path, "preference")
    with pytest.raises(SpecError, match="train.method dpo reads preference rows, got kto"):
        _spec(tmp_path, "kto}\ntrain: {method: dpo")
    with pytest.raises(SpecError, match="train.method kto reads kto rows, got multiple_choice"):
        _spec(tmp_path, "multiple_choice}\ntrain: {method: kto")
    assert _spec(tmp_path, "preference}\ntrain: {method: dpo").train.method == "dpo"


def test_lora_variants_refused_where_they_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="lora.init.*pissa takes an SVD of the full-precision weights"):
        _spec(tmp_path, "preference}\ntrain: {method: dpo}\nlora: {init: pissa")
    with pytest.raises(SpecError, match="lora.init.*olora moves the base's principal directions"):
        _spec(tmp_path, "preference}\ntrain: {method: dpo}\nlora: {init: olora")
    with pytest.raises(SpecError, match="lora.modules_to_save.*remove lm_head"):
        _spec(tmp_path, "preference}\ntrain: {method: dpo}\nlora: {modules_to_save: [lm_head]")


def _train_slice(spec: Spec) -> dict[str, Any]:
    stage = next(s for s in all_stages() if s.name == "train")
    return stage.spec_slice(spec)


def test_sft_slice_has_no_method_keys_and_variants_enter_only_when_set(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n')
    base = "model: {source: init}\ndata: {train: {path: q.jsonl}}\n"
    sft = _train_slice(parse_spec(base, base_dir=tmp_path))
    said = _train_slice(parse_spec(base + "train: {method: sft, dpo: {beta: 0.5}}\n"
                                   "lora: {use_dora: false, init: default}\n", base_dir=tmp_path))
    assert sft == said and "method" not in sft["train"] and "use_dora" not in sft["lora"]
    dora = _train_slice(parse_spec(base + "lora: {use_dora: true, use_rslora: true, init: gaussian}\n",
                                   base_dir=tmp_path))
    assert dora["lora"] == sft["lora"] | {"use_dora": True, "use_rslora": True, "init": "gaussian"}
    dpo = _train_slice(_spec(tmp_path, "preference}\ntrain: {method: dpo, dpo: {beta: 0.2}"))
    assert dpo["train"]["method"] == "dpo" and dpo["train"]["dpo"] == {"beta": 0.2, "loss_type": "sigmoid",
                                                                       "label_smoothing": 0.0}


def test_held_out_figures_reach_the_summary_and_its_printed_line() -> None:
    from runner.core.outputs import TrainSummary
    from runner.core.recap import training_notes
    from runner.stages.train.preference import measured, preference_summary

    before = measured({"eval_loss": 0.693, "eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0})
    after = measured({"eval_loss": 0.02, "eval_rewards/accuracies": 1.0, "eval_rewards/margins": 4.0,
                      "eval_rewards/chosen": 2.0})
    summary = preference_summary("dpo", before, after)
    assert summary == {"method": "dpo", "held_out": {"preference_accuracy": {"before": 0.0, "after": 1.0},
                                                     "reward_margin": {"before": 0.0, "after": 4.0}}}
    assert preference_summary("sft", before, after) == {}  # an SFT summary is what it was
    typed = TrainSummary.of({"steps": 28} | summary)  # as the train stage writes it, as recap reads it
    assert training_notes(typed) == ["  dpo held-out pairs: preference accuracy 0.000 -> 1.000, "
                                     "reward margin 0.000 -> 4.000"]
