"""The model side as a local-training user meets it, against the real server: every name a job
returned keeps answering, a loaded adapter is prompted as it was trained, a listed checkpoint loads,
/v1/models/{id} retrieves and deletes, what was loaded or deleted at run time outlives a restart, and
every error (an unknown route, a wrong method, a chunked over-cap body, a body that is not JSON) comes
in OpenAI's shape, which the official client shows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY, ROOT, Server, _wait, ended, free_port, until
from spec import QUERY, tiny_spec

AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS = [{"messages": [{"role": "system", "content": "You answer in one word."},
                      {"role": "user", "content": f"Name the color number {i}."},
                      {"role": "assistant", "content": ["Red", "Blue", "Green", "White"][i % 4]}]} for i in range(16)]
CHAT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
SHAPE = {"message", "type", "param", "code"}


@contextmanager
def serving(store: Path, log: Path) -> Iterator[openai.OpenAI]:
    """A second `runner serve` on `store` (killed at the end: exactly the process started here)."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(store), "--port", str(port),
                                    "--api-key", KEY], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}", process, log)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def finished(client: openai.OpenAI, job_id: str) -> Any:
    state = until(lambda: ended(client, job_id), f"job {job_id}", 600)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)]
    assert getattr(state, "status", None) == "succeeded", events[-20:]
    return state


def chat(client: openai.OpenAI, model: str) -> tuple[int, str]:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name the color number 3."}],
                                       max_tokens=8, temperature=0)
    assert r.usage is not None
    return r.usage.prompt_tokens, r.choices[0].message.content or ""


@pytest.fixture(scope="module")
def chat_job(server: Server) -> str:
    """An adapter trained from OpenAI's fields (chat rows, the chat template), on the fixture's plain-template
    adapter: the base's spec (the oldest record) prompts another way than this adapter's."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    uploaded = client.files.create(file=("colors.jsonl", CHAT), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id, suffix="first",
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
    name: str = finished(client, job.id).fine_tuned_model
    return name


def test_every_name_a_job_returned_keeps_answering(server: Server, client: openai.OpenAI, chat_job: str) -> None:
    uploaded = client.files.create(file=("colors.jsonl", CHAT), purpose="fine-tune")
    again = client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id, suffix="second",
                                           hyperparameters={"n_epochs": 1, "batch_size": 4})
    second = finished(client, again.id).fine_tuned_model  # the same inputs: every stage cached, one export
    assert (chat_job, second) == ("serve-tiny-first", "serve-tiny-second")
    listed = {m.id for m in client.models.list()}
    assert {chat_job, second} <= listed
    assert chat(client, chat_job) == chat(client, second)  # was a 404 for the first name
    assert client.models.retrieve(chat_job).id == chat_job


def _export_of(server: Server, name: str) -> Path:
    (card,) = [m for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"] if m["id"] == name]
    return Path(card["root"])


def test_a_loaded_adapter_is_prompted_as_it_was_trained(server: Server, client: openai.OpenAI, chat_job: str) -> None:
    loaded = httpx.post(f"{server.url}/v1/load_lora_adapter", headers=AUTH, timeout=60,
                        json={"lora_name": "colors-copy", "lora_path": str(_export_of(server, chat_job))})
    assert loaded.status_code == 200, loaded.text
    try:
        assert chat(client, "colors-copy") == chat(client, chat_job)  # were 16 and 39 prompt tokens
        plain = client.chat.completions.create(model="serve-tiny", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Name the color number 3."}])
        assert plain.usage is not None and plain.usage.prompt_tokens != chat(client, chat_job)[0]  # the test can fail
    finally:
        httpx.post(f"{server.url}/v1/unload_lora_adapter", headers=AUTH, json={"lora_name": "colors-copy"})


def test_a_listed_checkpoint_loads_and_answers(server: Server, client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file="unused",
                                         extra_body={"spec": tiny_spec("serve-checkpointed", max_steps=400)})
    until(lambda: list(client.fine_tuning.jobs.checkpoints.list(job.id)), "a checkpoint while training")
    client.fine_tuning.jobs.cancel(job.id)
    assert getattr(until(lambda: ended(client, job.id), "the cancel"), "status", None) == "cancelled"
    newest = next(iter(client.fine_tuning.jobs.checkpoints.list(job.id)))
    body = {"lora_name": "checkpointed", "lora_path": newest.fine_tuned_model_checkpoint}  # relative to the store
    loaded = httpx.post(f"{server.url}/v1/load_lora_adapter", headers=AUTH, json=body, timeout=60)
    assert loaded.status_code == 200, loaded.text  # was 400: "trained on '/…/model/<key>/…', not on base-…"
    try:
        parents = [client.models.retrieve(name).model_extra["parent"] for name in ("checkpointed", "serve-tiny")]  # type: ignore[index]
        assert parents[0] == parents[1]
        assert client.chat.completions.create(model="checkpointed", messages=[{"role": "user", "content": QUERY}],
                                              max_tokens=4, temperature=0).choices[0].message.content is not None
    finally:
        httpx.post(f"{server.url}/v1/unload_lora_adapter", headers=AUTH, json={"lora_name": "checkpointed"})


def test_models_retrieve_and_refuse_to_delete_a_base_or_an_unknown_id(client: openai.OpenAI) -> None:
    card = client.models.retrieve("serve-tiny")
    assert card.id == "serve-tiny" and card.object == "model"
    base = card.model_extra["parent"]  # type: ignore[index]
    assert client.models.retrieve(base).id == base
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.models.delete("no-such-model")
    with pytest.raises(openai.BadRequestError, match="base model"):
        client.models.delete(base)


def test_health_is_open_and_says_what_is_served(server: Server) -> None:
    health = httpx.get(f"{server.url}/health")  # no key
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["bases"] >= 1 and health.json()["adapters"] >= 1
    assert httpx.get(f"{server.url}/v1/models").status_code == 401  # the rest still wants the key


def test_unknown_routes_and_wrong_methods_answer_in_openais_shape(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.get("/nope", cast_to=httpx.Response)
    assert isinstance(missing.value.body, dict) and set(missing.value.body) == SHAPE  # was {"detail": "Not Found"}
    assert "/v1/nope" in missing.value.body["message"]
    wrong = httpx.delete(f"{server.url}/v1/chat/completions", headers=AUTH)
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == SHAPE, wrong.text
    assert "POST" in wrong.json()["error"]["message"] and wrong.headers["allow"] == "POST"


def _chunked(head: bytes, size: int, tail: bytes = b"") -> Iterator[bytes]:
    yield head
    block = b"x" * (1 << 20)
    for _ in range(size >> 20):
        yield block
    yield tail


def test_a_chunked_body_over_the_cap_is_413(server: Server) -> None:
    """No Content-Length: the cap is found as the bytes arrive; was a 400 {"detail": ...} for the upload."""
    boundary = "capcapcap"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    upload = httpx.post(f"{server.url}/v1/files", content=_chunked(head, 65 << 20, f"\r\n--{boundary}--\r\n".encode()),
                        headers=AUTH | {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
    assert upload.status_code == 413 and set(upload.json()["error"]) == SHAPE, upload.text[:300]
    body = httpx.post(f"{server.url}/v1/chat/completions", content=_chunked(b'{"model": "', 2 << 20, b'"}'),
                      headers=AUTH | {"Content-Type": "application/json"}, timeout=120)
    assert body.status_code == 413 and set(body.json()["error"]) == SHAPE, body.text[:300]


def test_a_json_route_without_a_json_content_type_says_so(server: Server) -> None:
    payload = json.dumps({"model": "serve-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    for headers in ({"Content-Type": "text/plain"}, {}):
        r = httpx.post(f"{server.url}/v1/chat/completions", content=payload.encode(), headers=AUTH | headers)
        assert r.status_code in (400, 415) and "application/json" in r.json()["error"]["message"], r.text


def _copy(store: Path, to: Path) -> Path:
    """The session's store without its jobs (a second server would take them for its own orphans)."""
    to.mkdir()
    for part in ("model", "data", "train", "export", "eval", "runs"):
        if (store / part).is_dir():
            shutil.copytree(store / part, to / part, ignore=shutil.ignore_patterns(".work", "*.lock"))
    return to


def test_loaded_and_deleted_adapters_outlive_a_restart(server: Server, tmp_path: Path) -> None:
    store, log = _copy(server.store, tmp_path / "store"), tmp_path / "serve.log"
    export = min((p for p in (store / "export").iterdir() if (p / "manifest.json").is_file()),
                 key=lambda p: (p / "manifest.json").stat().st_mtime)  # the fixture's own adapter
    with serving(store, log) as client:
        base = client.models.retrieve("serve-tiny").model_extra["parent"]  # type: ignore[index]
        loaded = httpx.post(f"{client.base_url}load_lora_adapter", headers=AUTH, timeout=60,
                            json={"lora_name": "kept", "lora_path": str(export / "adapter")})
        assert loaded.status_code == 200, loaded.text
        answer = client.chat.completions.create(model="kept", messages=[{"role": "user", "content": QUERY}],
                                                max_tokens=8, temperature=0).choices[0].message.content
        deleted = client.models.delete("serve-tiny")
        assert deleted.deleted and deleted.id == "serve-tiny"
        assert "serve-tiny" not in {m.id for m in client.models.list()}
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("serve-tiny")
    assert (export / "adapter" / "adapter_config.json").is_file()  # the artifacts stay until `runner gc`
    time.sleep(0.5)
    with serving(store, log) as client:
        listed = {m.id: getattr(m, "parent", None) for m in client.models.list()}
        assert listed.get("kept") == base and "serve-tiny" not in listed, listed
        again = client.chat.completions.create(model="kept", messages=[{"role": "user", "content": QUERY}],
                                               max_tokens=8, temperature=0).choices[0].message.content
        assert again == answer
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": "x"}])
        # The worker's only adapter dropped (the base unwrapped), then one loaded again: no PEFT model in a PEFT model
        assert client.models.delete("kept").deleted
        assert client.chat.completions.create(model=base, messages=[{"role": "user", "content": QUERY}],
                                              max_tokens=2, temperature=0).choices[0].message.content is not None
        loaded = httpx.post(f"{client.base_url}load_lora_adapter", headers=AUTH, timeout=60,
                            json={"lora_name": "kept-again", "lora_path": str(export / "adapter")})
        assert loaded.status_code == 200, loaded.text
        assert client.chat.completions.create(model="kept-again", messages=[{"role": "user", "content": QUERY}],
                                              max_tokens=8, temperature=0).choices[0].message.content == answer
