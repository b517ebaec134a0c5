"""The spec's record fields and its export, eval and logging sections (runner.spec re-exports them).

Split from runner.spec by size only: the same rules hold (defaults repeat the schema's, a unit test
keeps them equal, stage code sees only these frozen dataclasses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Fields:
    question: str = "question"
    options: str | tuple[str, ...] = "options"
    answer_key: str = "answer_idx"
    answer_key_type: Literal["letter", "index0", "index1"] = "letter"
    context: str | None = None
    answer: str = "answer"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    messages: str = "messages"
    text: str = "text"


Format = Literal["multiple_choice", "qa", "alpaca", "chat", "text"]
FREE_TEXT = ("qa", "alpaca", "chat")  # benchmark formats answered in free text, scored by ROUGE-L and BLEU


@dataclass(frozen=True)
class Gguf:
    types: tuple[Literal["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"], ...] = ("f16",)


@dataclass(frozen=True)
class UnquantizedTolerance:  # a class per tier: each tier's defaults are plain values in the schema
    min_agreement: float = 1.0
    max_logprob_diff: float = 0.1


@dataclass(frozen=True)
class Q8Tolerance:
    min_agreement: float = 0.9
    max_logprob_diff: float = 0.5


@dataclass(frozen=True)
class Q4Tolerance:
    min_agreement: float = 0.6
    max_logprob_diff: float = 2.0


@dataclass(frozen=True)
class Parity:
    samples: int = 32
    on_fail: Literal["error", "warn"] = "error"
    unquantized: UnquantizedTolerance = field(default_factory=UnquantizedTolerance)  # merged, GGUF f16/bf16, LoRA
    q8: Q8Tolerance = field(default_factory=Q8Tolerance)  # q8_0, q6_k
    q4: Q4Tolerance = field(default_factory=Q4Tolerance)  # q5_k_m, q4_k_m


@dataclass(frozen=True)
class Push:
    repo_id: str | None = None  # required: a cross-field rule says so in one line, beside any other problem
    private: bool = True
    revision: str = "main"


@dataclass(frozen=True)
class Export:
    merged: bool = False
    merged_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gguf: Gguf | None = None
    parity: Parity = field(default_factory=Parity)
    push: Push | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    format: Literal["medqa", "medmcqa", "pubmedqa", "multiple_choice", "qa", "alpaca", "chat"] = "multiple_choice"
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "test"
    revision: str | None = None
    fields: Fields = field(default_factory=Fields)
    limit: int | None = None
    ids: str | None = None  # a file of ids, one a line: score only those rows (an official test fold)


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class SafetyRule:
    name: str
    pattern: str
    unless: str | None = None


@dataclass(frozen=True)
class Safety:
    builtin: bool = True
    rules: tuple[SafetyRule, ...] = ()


@dataclass(frozen=True)
class Contamination:
    check: bool = True
    similarity: float = 0.6
    action: Literal["report", "stop"] = "report"  # what overlaps found before training do


@dataclass(frozen=True)
class Generative:
    enabled: bool = False
    max_new_tokens: int = 8


@dataclass(frozen=True)
class Perplexity:
    path: str
    field: str = "text"
    max_texts: int | None = None


@dataclass(frozen=True)
class Eval:
    benchmarks: tuple[Benchmark, ...] = ()
    compare_base: bool = True
    batch_size: int = 8
    chat_template: bool = False
    queries: tuple[str, ...] = ()
    generation: Generation = field(default_factory=Generation)
    safety: Safety = field(default_factory=Safety)
    contamination: Contamination = field(default_factory=Contamination)
    generative: Generative = field(default_factory=Generative)
    perplexity: Perplexity | None = None


@dataclass(frozen=True)
class Logging:
    report_to: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = ()
    dir: str | None = None
