"""The spec: YAML -> JSON Schema -> cross-field rules -> frozen dataclasses.

Stage code only ever sees these dataclasses. Defaults live in the schema; the dataclass defaults
repeat them so the types read on their own, and a unit test keeps the two equal. The record fields
and the export, eval and logging sections come first, the spec that holds them after.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.core.errors import SpecError
from runner.spec.preview import row_problems
from runner.spec.rules import cross_field_problems
from runner.spec.schema import schema_errors, with_defaults
from runner.spec.yamlpos import Positions, decode_spec, format_path, read_spec


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
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    completion: str = "completion"
    label: str = "label"
    trace: str = "reasoning"


Format = Literal["multiple_choice", "qa", "alpaca", "chat", "text", "preference", "kto",
                 "reasoning"]
PAIRED = ("preference", "kto")  # formats of the preference methods: rows the SFT path cannot train on
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
class FilterStep:
    """One step of an lm-evaluation-harness filter pipeline (runner/scoring/extract.py runs it)."""

    function: Literal["regex", "multi_choice_regex", "remove_whitespace", "lowercase", "uppercase", "after_thinking",
                      "take_first"]
    regex_pattern: str | None = None
    group_select: int = 0
    fallback: str = "[invalid]"
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generative:
    enabled: bool = False
    max_new_tokens: int = 8
    samples: int = 1
    temperature: float = 0
    top_p: float = 1.0
    thinking_budget: int | None = None
    think_end: str = "</think>"
    stop: tuple[str, ...] = ()
    extract: Literal["first-line", "last-answer", "answer-is", "flexible"] = "first-line"
    filters: tuple[FilterStep, ...] = ()

    @property
    def reasoning(self) -> bool:
        """Anything beyond greedy decoding read off the first line is asked for: the sampled, checkpointed path."""
        return (self.samples, self.temperature, self.top_p, self.thinking_budget, self.think_end, self.stop,
                self.extract, self.filters) != (1, 0, 1.0, None, "</think>", (), "first-line", ())


@dataclass(frozen=True)
class Perplexity:
    path: str
    field: str = "text"
    max_texts: int | None = None


@dataclass(frozen=True)
class Abstain:
    signal: Literal["loglik", "token_prob", "vote"]
    threshold: float


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
    abstain: Abstain | None = None  # answer only above a confidence: scored, never changes an answer


@dataclass(frozen=True)
class Logging:
    report_to: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = ()
    dir: str | None = None


@dataclass(frozen=True)
class Hardware:
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    on_unsupported: Literal["error", "fallback"] = "fallback"
    processes: int | Literal["auto"] = "auto"
    distributed: Literal["auto", "ddp", "fsdp", "zero2", "zero3"] = "auto"


@dataclass(frozen=True)
class ModelInit:
    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    initializer_range: float = 0.1


@dataclass(frozen=True)
class Model:
    source: Literal["hub", "local", "init"]
    id: str | None = None
    revision: str = "main"
    path: str | None = None
    init: ModelInit = field(default_factory=ModelInit)
    quantization: Literal["nf4", "fp4", "none"] = "nf4"
    double_quant: bool = True
    trust_remote_code: bool = False
    chat_template: str | None = None


@dataclass(frozen=True)
class Source:
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    # Only in a mixture (`data.train` as a list); null means the `data` value or a derived name.
    name: str | None = None
    format: Format | None = None
    fields: Fields | None = None
    weight: float | None = None
    rows: int | None = None


MIXTURE_ONLY = ("name", "format", "fields", "weight", "rows")  # Source fields a one-source `data.train` cannot have


@dataclass(frozen=True)
class Reasoning:
    """How the `reasoning` format writes a trace, and what it does with a trace too long for max_length."""

    think_start: str = "<think>"
    think_end: str = "</think>"
    too_long: Literal["drop", "truncate"] = "drop"


@dataclass(frozen=True)
class Data:
    train: Source | tuple[Source, ...]  # one source (the original form) or a mixture
    validation: Source | tuple[Source, ...] | None = None
    validation_fraction: float = 0.1
    format: Format = "multiple_choice"
    fields: Fields = field(default_factory=Fields)
    template: Literal["chat", "plain"] = "chat"
    chat_template: Literal["llama3", "chatml", "qwen", "mistral", "gemma", "phi"] | None = None
    system_prompt: str | None = None
    max_length: int = 1024
    max_rows: int | None = None
    replacement: bool = False
    reasoning: Reasoning = field(default_factory=Reasoning)


@dataclass(frozen=True)
class Lora:
    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: tuple[str, ...] = ()
    init: Literal["default", "gaussian", "orthogonal", "pissa", "olora"] = "default"


@dataclass(frozen=True)
class EarlyStopping:
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class InitAdapter:
    spec: str | None = None  # a spec whose train stage gives the adapter (runner.core.chain)
    path: str | None = None  # or a PEFT adapter folder


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float = 1.0
    path: str | None = None  # a local file defining `name`: user code, only with trust_reward_code


@dataclass(frozen=True)
class Grpo:
    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.0
    vllm: bool = False
    trust_reward_code: bool = False
    rewards: tuple[Reward, ...] = (Reward("answer_correct", 1.0),)


@dataclass(frozen=True)
class Dpo:
    beta: float = 0.1
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero",
                       "apo_down", "exo_pair", "discopop", "sft"] = "sigmoid"
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class Orpo:
    beta: float = 0.1


@dataclass(frozen=True)
class Kto:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


Method = Literal["sft", "dpo", "orpo", "kto", "grpo"]


@dataclass(frozen=True)
class Train:
    epochs: float = 3
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 16
    micro_batch_size: int | Literal["auto"] = "auto"
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    save_steps: int = 50
    logging_steps: int = 1
    packing: bool = False
    eval_steps: int = 50
    early_stopping: EarlyStopping | None = None
    method: Method = "sft"
    init_adapter: InitAdapter | None = None
    grpo: Grpo = field(default_factory=Grpo)
    dpo: Dpo = field(default_factory=Dpo)
    orpo: Orpo = field(default_factory=Orpo)
    kto: Kto = field(default_factory=Kto)


@dataclass(frozen=True)
class Spec:
    model: Model
    data: Data
    name: str = "run"
    description: str = ""
    seed: int = 42
    hardware: Hardware = field(default_factory=Hardware)
    lora: Lora = field(default_factory=Lora)
    train: Train = field(default_factory=Train)
    export: Export = field(default_factory=Export)
    eval: Eval = field(default_factory=Eval)
    logging: Logging = field(default_factory=Logging)
    # Not from the YAML: where the spec file is, so relative paths resolve against it.
    base_dir: str = field(default=".", metadata={"schema": False})

    def resolve(self, path: str) -> Path:
        """A path from the spec, relative to the spec file's directory."""
        return (Path(self.base_dir) / path).resolve()

    def as_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (for run records and keys), without `base_dir`."""
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        for role in ("train", "validation"):  # the one-source form has no mixture keys: it validates again
            source = data["data"][role]
            if isinstance(source, dict):
                data["data"][role] = {k: v for k, v in source.items() if k not in MIXTURE_ONLY or v is not None}
        return data


MAX_SPEC_BYTES = 2**20  # PyYAML reads ~1 MiB/s of plain text: a larger spec is data, and slow to refuse


def load_spec(path: str | Path) -> Spec:
    """Read, validate and type a spec file. Raises SpecError listing every problem at once."""
    path = Path(path)
    return parse_spec(read_spec_file(path), source=str(path), base_dir=path.resolve().parent)


def read_spec_file(path: Path) -> str:
    """The spec file's text: there, not too big, UTF-8; else one line saying which."""
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        size = path.stat().st_size
        _check_size(size, str(path))
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the spec: {exc.strerror or exc}"]) from None
    return decode_spec(raw, str(path))


def _check_size(size: int, source: str) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: the spec is {size / 2**20:.1f} MiB, over the {MAX_SPEC_BYTES // 2**20} MiB "
                         "limit; a spec holds settings, data goes in files"])


def parse_spec(text: str, source: str = "<spec>", base_dir: Path | str = ".", rows: bool = True) -> Spec:
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    doc, positions = read_spec(text, source)
    return spec_of_doc(doc, positions, source, base_dir, rows)


def spec_of_doc(doc: Any, positions: Positions, source: str, base_dir: Path | str, rows: bool = True) -> Spec:
    """The typed spec of a document read by `read_spec` (and perhaps changed since: `--set`), every
    problem at once, each at its position in `source`. `rows`: also read the first rows of each local
    data file for the fields the spec expects (off where the caller checks the rows in its own terms)."""
    if not isinstance(doc, dict) and not positions.problems:
        raise SpecError([f"{source}: a spec is a YAML mapping with at least `model` and `data`"])
    found = [(p, ln, col, "duplicate key, the later one would win") for p, ln, col in positions.duplicates]
    if positions.problems:  # the data was not built: report what the walk found, nothing more
        found = sorted(found + positions.problems, key=_order)
    problems = [f"{format_path(p)}: {msg} ({source}:{ln}:{col})" for p, ln, col, msg in found]
    if not positions.problems:
        problems += schema_errors(doc, positions, source)
    if problems:
        raise SpecError(problems)
    full = with_defaults(doc)
    found2 = cross_field_problems(full, Path(base_dir))
    if rows:
        found2 += row_problems(full, Path(base_dir), positions.marks.__contains__)
    found2 = sorted(found2, key=lambda p: (positions.locate(p[0]), p[1]))
    problems = [f"{format_path(p)}: {msg} ({source}:{positions.where(p)})" for p, msg in found2]
    if problems:
        raise SpecError(problems)
    spec: Spec = typed(Spec, {**full, "base_dir": str(base_dir)})
    return spec


def _order(problem: tuple[Any, int, int, str]) -> tuple[int, int, str]:
    return problem[1], problem[2], problem[3]


def typed(cls: Any, value: Any) -> Any:
    """Build dataclass `cls` from plain data already checked by the schema (lists become tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            kwargs[f.name] = _convert(hints[f.name], value[f.name])
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return typed(option, value)
        if typing.get_origin(option) is tuple and isinstance(value, list):
            item = typing.get_args(option)[0]
            return tuple(_convert(item, v) for v in value)
    return value
