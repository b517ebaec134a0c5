"""The serve tests' tiny spec: one training run whose eval answers a query, so a served answer can be
compared with the one eval wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import DEMO, TINY

QUERY = "Which agent is preferred as initial pharmacotherapy for chronic myeloid leukemia?"


def demo_data(folder: Path) -> Path:
    """The demo's two data files copied into `folder`: a spec shown in a screenshot names a temporary
    path, not the checkout's (the data paths are in no key: the files' digests are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("medmc_train.jsonl", "medmc_test.jsonl"):
        shutil.copyfile(DEMO / name, folder / name)
    return folder


def tiny_spec(name: str = "serve-tiny", max_steps: int | None = None, data: Path | None = None) -> str:
    """The integration tests' tiny spec, three epochs, four benchmark questions and one query; its data
    read from `data` (a `demo_data` folder) when given."""
    steps = f", max_steps: {max_steps}" if max_steps else ""
    queries = f'  queries: ["{QUERY}"]\n  generation: {{max_new_tokens: 16}}\n'
    return (TINY.replace("name: tiny-test", f"name: {name}").replace("epochs: 2", "epochs: 3")
            .replace("save_steps: 10}", f"save_steps: 10{steps}}}").replace("export: {merged: true}\n", "")
            .replace("limit: 24}]\n", "limit: 4}]\n" + queries).replace(str(DEMO), str(data or DEMO)))
