"""The server's own OpenAPI document, fuzzed with schemathesis against the real process: bodies that
fit the schema and bodies that do not, on every operation, and never a 5xx.

Hypothesis draws the cases; each answer is recorded rather than raised, so one bad operation does not
stop the others being tried, and the failure lists every (operation, status, body) found."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from conftest import KEY, Server

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = 20  # per operation and mode: ~30 s for the whole document on two CPU cores


def _fuzz(operation: Any, mode: Any, server: Server, found: list[str], seen: Counter[str]) -> None:
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if isinstance(case.body, dict) and "model" in case.body and len(str(case.body)) % 2:
            # half the generation requests name a served model, so they reach the worker (and few
            # tokens each, or a max_tokens of 1024 keeps the worker busy for the whole test)
            case.body["model"] = "serve-tiny"
            case.body["max_tokens"] = case.body["max_completion_tokens"] = 4
        response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        seen[f"{operation.method.upper()} {operation.path} {response.status_code}"] += 1
        if response.status_code >= 500:
            found.append(f"{case.method} {case.formatted_path} ({mode.value}) -> {response.status_code}: "
                         f"{response.text[:300]} <- body {str(case.body)[:200]}")

    try:
        run()
    except Unsatisfiable:
        pass  # no wrong input exists for it (GET /v1/models takes nothing): nothing to send


def test_fuzzing_the_openapi_document_finds_no_5xx(server: Server) -> None:
    doc = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]  # the models and the job API both
    found: list[str] = []
    seen: Counter[str] = Counter()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz(operation, mode, server, found, seen)
    print("\n".join(f"{n:4} {key}" for key, n in sorted(seen.items())))
    assert not found, "\n".join(found)
    assert sum(n for key, n in seen.items() if key.endswith((" 400", " 404", " 415", " 422"))) > 100  # it reached the routes
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
