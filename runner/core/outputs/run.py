"""The run record (STORE/runs/<id>.json), as runner.core.records writes it and compare, plan and the
side effects read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.outputs.jsonio import (
    JsonFile,
    OutputError,
    cut,
    dumps,
    integer,
    load_json,
    mapping,
    number,
    plain_name,
    text,
    write_atomic,
)


@dataclass(frozen=True)
class RunRecord(JsonFile):
    """A run record, checked: the spec it ran, each stage's key, its status and device."""

    path: Path
    name: str  # the spec's name, cut to MAX_NAME characters
    spec: dict[str, Any]
    spec_path: str | None
    status: str | None
    started: float
    device: str | None
    batch_size: int | None
    stages: tuple[tuple[str, str], ...]  # (stage, key) of each stage that has a key
    VERSION = 1

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        return cls.parse_at(load_json(path), path)

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> RunRecord:
        return cls.parse_at(data, Path(where))

    @classmethod
    def parse_at(cls, data: Any, path: Path) -> RunRecord:
        where = str(path)
        problem = ("" if isinstance(data, dict) else f"a JSON {type(data).__name__}, not a run record (an object)") \
            or ("" if isinstance(data.get("spec"), dict) else "no spec in it")
        stages = data.get("stages", []) if not problem else []
        if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("stage"), str) for s in stages):
            problem = "its stages are not a list of {stage, key}"
        if problem:
            raise OutputError(f"{path}: not a run record: {problem}; give a file from STORE/runs/ or a spec file")
        spec = data["spec"]
        keyed = tuple((plain_name(s.get("stage"), where, f"stages[{i}].stage"), plain_name(s["key"], where, f"stages[{i}].key"))
                      for i, s in enumerate(stages) if s.get("key") is not None)
        name = text(spec, "name", f"{where}: spec") or path.stem
        train = mapping(spec, "train", f"{where}: spec")
        batch = integer(train, "batch_size", f"{where}: spec.train")
        return cls(path, cut(name), spec, text(data, "spec_path", where), text(data, "status", where),
                   number(data, "started", where, finite=False) or 0.0,
                   text(mapping(data, "profile", where), "device", f"{where}: profile"),
                   batch if batch and batch > 0 else None, keyed, raw=data)

    def side_effect(self, name: str) -> dict[str, Any] | None:
        """What the run did outside the store under `name` (a push), as recorded."""
        done = self.raw.get("side_effects")
        found = done.get(name) if isinstance(done, dict) else None
        return found if isinstance(found, dict) else None

    def write(self, path: Path) -> None:
        """Write-then-rename, so a reader (or a kill) never meets half a record."""
        write_atomic(path, dumps(self.raw))
