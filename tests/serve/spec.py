"""The serve tests' tiny spec: one training run whose eval answers a query, so a served answer can be
compared with the one eval wrote."""

from __future__ import annotations

from tests.integration.conftest import TINY

QUERY = "Which agent is preferred as initial pharmacotherapy for chronic myeloid leukemia?"


def tiny_spec(name: str = "serve-tiny", max_steps: int | None = None) -> str:
    """The integration tests' tiny spec, three epochs, four benchmark questions and one query."""
    steps = f", max_steps: {max_steps}" if max_steps else ""
    queries = f'  queries: ["{QUERY}"]\n  generation: {{max_new_tokens: 16}}\n'
    return (TINY.replace("name: tiny-test", f"name: {name}").replace("epochs: 2", "epochs: 3")
            .replace("save_steps: 10}", f"save_steps: 10{steps}}}").replace("export: {merged: true}\n", "")
            .replace("limit: 24}]\n", "limit: 4}]\n" + queries))
