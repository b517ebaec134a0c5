"""Request and response bodies as pydantic models mirroring OpenAI's (and vLLM's for adapters), so
FastAPI validates them and documents them in the OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_CAP = 1024  # one request cannot hold the worker for long


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, user, ...)

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as vLLM: torch's seed range
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 64

    def logprob_count(self) -> int | None:
        """None: no logprobs; k: each answer token's log-probability and the k likeliest tokens'."""
        return None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False  # each answer token's log-probability (the model's log-softmax), docs/uncertainty.md
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # and the k likeliest tokens at each step

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Sampling):
    prompt: str
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's legacy shape: the k likeliest per token

    def logprob_count(self) -> int | None:
        return self.logprobs


class LoadAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    lora_path: str = Field(min_length=1)
    base_model_name: str | None = None  # which base; the only one when omitted


class UnloadAdapter(BaseModel):
    lora_name: str = Field(min_length=1)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None  # n_epochs, batch_size, learning_rate_multiplier
    method: dict[str, Any] | None = None  # {"type": "supervised", "supervised": {"hyperparameters": ...}}
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    spec: str | dict[str, Any] | None = None  # our own field (the client's extra_body): YAML text or JSON
    evaluation: dict[str, Any] | None = None  # our own field: `eval` keys over the model's run's (jobs/openai_fields)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "runner"
    root: str  # the base's weights (model folder) or the adapter folder
    parent: str | None = None



class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class Health(BaseModel):
    status: Literal["ok"]
    bases: int  # base models served (as of the last look at the store)
    adapters: int  # adapters served
    jobs: bool  # whether the fine-tuning job API is on

# The page's routes (runner/serve/routes/specs.py, page.py, jobs.py): our own names, as OpenAI has none.
MAX_SPEC_CHARS = 1 << 20  # as runner.spec.typed.MAX_SPEC_BYTES


class SpecText(BaseModel):
    spec: str = Field(max_length=MAX_SPEC_CHARS)  # YAML text, as in a spec file


class Problem(BaseModel):
    message: str  # exactly the line `runner validate` prints
    line: int | None = None
    column: int | None = None


class Validated(BaseModel):
    valid: bool
    text: str  # what `runner validate` prints for the same spec
    problems: list[Problem]


class PlanStep(BaseModel):
    stage: str
    status: Literal["cached", "run", "stale"]
    key: str | None  # None while an upstream stage has still to run
    reasons: list[str]
    line: str  # as `runner plan` prints it


class Planned(Validated):
    profile: str = ""
    profile_reasons: list[str] = []
    steps: list[PlanStep] = []
    memory: list[str] = []


class SpecCard(BaseModel):
    name: str
    origin: str  # "template" or the run record's spec file
    created: int
    text: str


class SpecList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SpecCard]  # the template, then the newest spec of each name in the store


class FlagRequest(BaseModel):
    model: str = Field(min_length=1)  # whose spec's `eval.safety` rules apply
    text: str = Field(max_length=MAX_SPEC_CHARS)


class Figure(BaseModel):
    """One benchmark's accuracy, base -> tuned, each with its 95% interval, and the paired change."""

    name: str
    n: int | None = None
    base: float | None = None
    base_ci95: list[float] | None = None
    tuned: float | None = None
    tuned_ci95: list[float] | None = None
    delta: float | None = None
    delta_ci95: list[float] | None = None
    mcnemar_p: float | None = None
    base_ece: float | None = None  # expected calibration error (metrics.json: calibration.{base,tuned}.ece)
    tuned_ece: float | None = None


class TextFigure(BaseModel):
    """A free-text benchmark's ROUGE-L F1 and corpus BLEU (x 100), base -> tuned."""

    name: str
    n: int | None = None
    base_rougeL: float | None = None
    tuned_rougeL: float | None = None
    base_bleu: float | None = None
    tuned_bleu: float | None = None


class Perplexity(BaseModel):
    """`eval.perplexity`'s held-out corpus: perplexity base -> tuned."""

    base: float | None = None
    tuned: float | None = None
    tokens: int | None = None


class Flag(BaseModel):
    rule: str
    match: str


class FlagList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Flag]


class AdapterCard(BaseModel):
    id: str
    name: str  # the spec's name
    base: str | None  # the base's id (None for a base itself)
    model_key: str
    export_key: str | None
    eval_key: str | None
    created: int
    loaded: bool  # added with /v1/load_lora_adapter: /v1/unload_lora_adapter can remove it
    benchmarks: list[Figure]
    free_text: list[TextFigure] = []
    perplexity: Perplexity | None = None
    flags: int | None  # safety flags the eval's answers raised
    report: str | None  # the route of its report.html
    queries: list[str]  # the spec's eval.queries
    generation: dict[str, float | int | None]  # the spec's eval.generation, in the chat's names


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCard]
    bases: list[AdapterCard]


class MetricPoint(BaseModel):
    step: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    seconds: float | None = None


class StageState(BaseModel):
    stage: str
    status: Literal["pending", "running", "done", "cached", "failed", "cancelled"]
    key: str | None  # the first 12 hex digits, as the log names it


class JobProgress(BaseModel):
    object: Literal["fine_tuning.job.progress"] = "fine_tuning.job.progress"
    id: str
    status: str
    stages: list[StageState]
    points: list[MetricPoint]  # the train stage's metrics.jsonl rows (thinned to 2000 at most)
    step: int | None
    total_steps: int | None
    time_left_s: float | None
    fine_tuned_model: str | None
    error: dict[str, Any] | None
    report: str | None


# The files routes (runner/serve/routes/files.py), as OpenAI's file objects.


class FileObject(BaseModel):
    id: str  # "file-" and 24 hex digits, matched exactly
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str  # "fine-tune" (uploads) or "fine-tune-results" (a job's step_metrics.csv)
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
