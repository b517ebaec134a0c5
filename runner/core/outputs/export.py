"""The export stage's outputs: adapter/metadata.json (what the adapter is, for its card and the Hub)
and parity.json (each exported form scored against the adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.core.outputs.jsonio import JsonFile, integer, mapping, plain_name, real, text


@dataclass(frozen=True)
class BaseModel:
    """The model stage's model.json, as the export records it."""

    source: str | None  # hub | local | init
    id: str | None
    commit: str | None
    path: str | None
    random_init: bool

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> BaseModel:
        return cls(text(part, "source", where), text(part, "id", where), text(part, "commit", where),
                   text(part, "path", where), part.get("random_init") is True)


@dataclass(frozen=True)
class ExportMetadata(JsonFile):
    """adapter/metadata.json: the base model, the spec slice, the stage keys, training's figures."""

    base_model: BaseModel
    quantization: str | None  # the profile's
    steps: int | None
    trainable_parameters: int | None
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    stage_keys: dict[str, str]  # the keys of the model and train stages it was exported from
    VERSION = 2  # the export stage's version 2: every train field in `spec`
    STAGE = "export"
    DEPTH = 1  # adapter/metadata.json
    REQUIRED = ("base_model", "metrics")

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> ExportMetadata:
        m, here = mapping(data, "metrics", where), f"{where}: metrics"
        keys = mapping(data, "stage_keys", where)
        return cls(BaseModel.parse(mapping(data, "base_model", where), f"{where}: base_model"),
                   text(mapping(data, "profile", where), "quantization", f"{where}: profile"),
                   integer(m, "steps", here), integer(m, "trainable_parameters", here),
                   real(m, "train_loss_first", here), real(m, "train_loss_last", here),
                   real(m, "eval_loss_before", here), real(m, "eval_loss_after", here),
                   {stage: plain_name(key, f"{where}: stage_keys", stage) for stage, key in keys.items()}, raw=data)


@dataclass(frozen=True)
class FormParity:
    """One exported form against the adapter on the same questions."""

    agreement: float | None
    max_logprob_diff: float | None
    accuracy: float | None
    tokens_identical: float | None  # llama.cpp forms only


@dataclass(frozen=True)
class ParityReport(JsonFile):
    """parity.json: forms in the order scored (the reference, merged, then each GGUF), so written unsorted."""

    questions: int | None
    reference: str | None
    forms: dict[str, FormParity]
    VERSION = 2  # the export stage's version
    STAGE = "export"
    REQUIRED = ("forms",)
    SORT_KEYS = False

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> ParityReport:
        forms = mapping(data, "forms", where)
        parts = {name: (mapping(forms, name, where), f"{where}: forms.{name}") for name in forms}
        return cls(integer(data, "questions", where), text(data, "reference", where),
                   {name: FormParity(real(p, "agreement", w), real(p, "max_logprob_diff", w), real(p, "accuracy", w),
                                     real(p, "tokens_identical", w)) for name, (p, w) in parts.items()}, raw=data)
