"""Typed outputs: a frozen dataclass for each file a stage writes and another part of the runner reads,
each with `read(path)` (checked: one line naming the file and the field) and `write(path)` (the bytes
the stage always wrote). Light: no torch.

| file | class | written by | read by |
| --- | --- | --- | --- |
| data/stats.json | DataStats | the data stage | train, plan, recap, compare |
| train/summary.json | TrainSummary | the train stage | export, recap, compare, the report |
| train/metrics.jsonl | TrainRow | the train stage's logger | compare, recap, the report |
| eval/metrics.json | EvalMetrics | the eval stage | recap, compare, the report, export.push |
| eval/predictions.jsonl | Prediction | the eval stage | compare |
| export/adapter/metadata.json | ExportMetadata | the export stage | its model card, export.push |
| export/parity.json | ParityReport | the export stage | the eval report |
| runs/<id>.json | RunRecord | runner.core.records | plan, compare, side effects |
"""

from runner.core.outputs.data import DataStats, SourceStats, Tokens
from runner.core.outputs.eval import (
    Benchmark,
    Calibrated,
    EvalMetrics,
    FreeText,
    Generative,
    Paired,
    Perplexity,
    Prediction,
    Question,
    Score,
)
from runner.core.outputs.export import BaseModel, ExportMetadata, FormParity, ParityReport
from runner.core.outputs.jsonio import (
    DAMAGED,
    MAX_BENCHMARKS,
    MAX_NAME,
    JsonFile,
    OutputError,
    cut,
    load_json,
    load_object,
    optional_number,
    shown,
)
from runner.core.outputs.run import RunRecord
from runner.core.outputs.train import (
    BeforeAfter,
    EarlyStopping,
    Quarters,
    RewardStep,
    TrainRow,
    TrainSummary,
    quarter_means,
    reward_figure,
)

__all__ = ["DAMAGED", "MAX_BENCHMARKS", "MAX_NAME", "BaseModel", "BeforeAfter", "Benchmark", "Calibrated", "DataStats",
           "EarlyStopping", "EvalMetrics", "ExportMetadata", "FormParity", "FreeText", "Generative",
           "JsonFile", "OutputError", "Paired", "ParityReport", "Perplexity", "Prediction", "Quarters", "Question",
           "RewardStep", "RunRecord", "Score", "SourceStats", "Tokens", "TrainRow", "TrainSummary", "cut",
           "load_json", "load_object", "optional_number", "quarter_means", "reward_figure",
           "shown"]
