"""The training sources' prompts, read as the data stage reads them: what the contamination check
compares a benchmark with, before training (the train stage's gate) and in eval's report."""

from __future__ import annotations

from runner.core.errors import DataError
from runner.rows.contamination import training_texts
from runner.rows.mixture import is_mixture, local_paths, resolved
from runner.rows.reading import read_source
from runner.spec.typed import Spec


def training_texts_of(spec: Spec, roles: tuple[str, ...]) -> tuple[list[str], list[tuple[str, int]]]:
    """The prompts of every source of `roles` (train, validation), and for each (its source, its
    index among that source's converted rows)."""
    texts: list[str] = []
    origins: list[tuple[str, int]] = []
    mixture = is_mixture(spec)
    for src in [s for role in roles for s in resolved(spec, role)]:
        try:
            paths = local_paths(spec, src)
            limit = spec.data.max_rows if src.role == "train" else None
            found = training_texts(read_source(src.source, paths, src.format, limit), src.format, src.fields)
        except DataError:
            raise
        except Exception as exc:  # the Hub unreachable for a Hub training source
            raise DataError(f"contamination check: cannot read training source {src.name} ({type(exc).__name__}: "
                            f"{exc}); fix data.{src.role} or set eval.contamination.check: false") from exc
        texts += found
        # A mixture's sources by name; the one-source form by its file or dataset, as the user wrote it.
        name = src.name if mixture else str(src.source.path or src.source.hub)
        origins += [(name, row) for row in range(len(found))]
    return texts, origins
