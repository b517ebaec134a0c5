"""`runner serve` as a user meets it: a real process, the official `openai` client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import KEY, ROOT, Server
from spec import QUERY, tiny_spec


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str, text: str = QUERY, tokens: int = 16) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                       max_tokens=tokens, temperature=0)
    assert r.model == model and r.usage is not None and r.usage.completion_tokens > 0
    return r.choices[0].message.content or ""


def ids(client: openai.OpenAI) -> dict[str, str | None]:
    return {m.id: getattr(m, "parent", None) for m in client.models.list()}


def base_of(client: openai.OpenAI) -> str:
    (base,) = [i for i, parent in ids(client).items() if parent is None]
    return base


def test_models_lists_the_base_and_the_adapter_with_its_parent(client: openai.OpenAI) -> None:
    found = ids(client)
    base = base_of(client)
    assert base.startswith("base-")
    assert found["serve-tiny"] == base


def test_greedy_answers_equal_the_eval_stage_answers(server: Server, client: openai.OpenAI) -> None:
    (row,) = server.generations
    tuned = ask(client, "serve-tiny")
    base = ask(client, base_of(client))
    assert tuned == row["answers"]["tuned"]  # type: ignore[index]
    assert base == row["answers"]["base"]  # type: ignore[index]
    assert tuned != base


def test_stream_chunks_join_into_the_answer_and_count_usage(client: openai.OpenAI) -> None:
    whole = ask(client, "serve-tiny", "What treats gout?", 24)
    stream = client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": "What treats gout?"}],
                                            max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
    completion = client.completions.create(model="serve-tiny", prompt="Question: What treats gout?\nAnswer:",
                                           max_tokens=24, temperature=0)
    assert completion.choices[0].text == whole  # the plain template, written by hand


def test_many_threads_over_base_and_adapter_each_get_their_own_answer(client: openai.OpenAI) -> None:
    base = base_of(client)
    questions = ["What treats gout?", QUERY, "Which drug lowers blood pressure?", "What causes anemia?"]
    jobs = [(model, q) for model in (base, "serve-tiny") for q in questions] * 2  # 16 requests at once
    alone = {job: ask(client, *job) for job in set(jobs)}
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: ask(client, *job), jobs))
    assert together == [alone[job] for job in jobs]
    assert alone[(base, QUERY)] != alone[("serve-tiny", QUERY)]


def test_sampling_with_a_seed_repeats(client: openai.OpenAI) -> None:
    def draw() -> str:
        r = client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": QUERY}],
                                           max_tokens=12, temperature=1.0, top_p=0.9, seed=3)
        return r.choices[0].message.content or ""

    assert draw() == draw()


def test_without_the_key_every_route_is_401(server: Server) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/fine_tuning/jobs"),
                         ("GET", "/openapi.json")):
        assert httpx.request(method, server.url + path, json={}).status_code == 401
        wrong = httpx.request(method, server.url + path, json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_bad_requests_are_clean_json_errors(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-model")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = server.url + "/v1/chat/completions"
    cases = [(b"{not json", 400), (json.dumps({"model": "serve-tiny"}).encode(), 422),
             (json.dumps({"model": "serve-tiny", "messages": [{"role": "user", "content": "x"}],
                          "max_tokens": 10**6}).encode(), 422),
             (json.dumps({"model": "serve-tiny", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(),
              413)]
    for body, status in cases:
        r = httpx.post(url, content=body, headers=auth)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"] and "Traceback" not in r.text


def _adapter_call(server: Server, route: str, body: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def test_load_lora_adapter_checks_path_and_base(server: Server, client: openai.OpenAI, tmp_path) -> None:
    missing = _adapter_call(server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(server.store / "nope")})
    assert missing.status_code == 404
    outside = _adapter_call(server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)})
    assert outside.status_code == 400
    # The fixture's own adapter: the oldest export (jobs in other tests add theirs to the same store).
    export = min((p for p in (server.store / "export").iterdir() if (p / "manifest.json").is_file()),
                 key=lambda p: (p / "manifest.json").stat().st_mtime)
    other = server.store / "foreign"
    other.mkdir(exist_ok=True)
    config = json.loads((export / "adapter" / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "meta-llama/Other"}))
    mismatched = _adapter_call(server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(other)})
    assert mismatched.status_code == 400 and "trained on" in mismatched.json()["error"]["message"]
    loaded = _adapter_call(server, "load_lora_adapter", {"lora_name": "again", "lora_path": str(export / "adapter")})
    assert loaded.status_code == 200, loaded.text
    assert ids(client)["again"] == base_of(client)
    assert ask(client, "again") == ask(client, "serve-tiny")
    assert _adapter_call(server, "unload_lora_adapter", {"lora_name": "again"}).status_code == 200
    assert _adapter_call(server, "unload_lora_adapter", {"lora_name": "again"}).status_code == 404


def test_a_job_trains_and_its_adapter_answers(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not valid"):
        client.fine_tuning.jobs.create(model="x", training_file="file-x", extra_body={"spec": "name: 1\nmodel: {}"})
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file="unused",
                                         extra_body={"spec": tiny_spec("serve-job", max_steps=3)})
    deadline = time.time() + 600
    while (state := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "the job did not finish"
        time.sleep(1)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert state.status == "succeeded", events[-20:]
    assert state.fine_tuned_model == "serve-job"
    assert ids(client)["serve-job"] == base_of(client)  # no restart
    assert ask(client, "serve-job")
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]


def test_upload_is_stored_by_content_with_a_cap(server: Server, client: openai.OpenAI) -> None:
    data = b'{"question": "q", "answer": "a"}\n'
    stored = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert stored.bytes == len(data) and list((server.store / "files").glob("*.jsonl"))
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("bad.jsonl", b"not json\n"), purpose="fine-tune")


def test_a_non_loopback_host_refuses_to_start_without_a_key() -> None:
    done = subprocess.run([sys.executable, "-m", "runner", "serve", "--host", "0.0.0.0", "--port", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--api-key" in done.stderr


def test_what_fuzzing_found_is_a_4xx_or_an_answer(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="empty"):  # was a 500, and failed its whole batch
        client.completions.create(model="serve-tiny", prompt="", max_tokens=4, temperature=0)
    tiny = client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": QUERY}],
                                          max_tokens=16, temperature=1e-300)  # was inf logits: a 500
    assert tiny.choices[0].message.content == ask(client, "serve-tiny")
    with pytest.raises(openai.UnprocessableEntityError, match="seed"):  # torch's seed is an int64: was a 500
        client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": "x"}], seed=2**64)
    nul = _adapter_call(server, "load_lora_adapter", {"lora_name": "n", "lora_path": "a\x00b"})
    assert nul.status_code == 400, nul.text  # was a 500 from Path.resolve
