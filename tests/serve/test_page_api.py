"""The routes the page uses, through plain HTTP as any client calls them: a spec validated and planned
as `runner validate` / `runner plan` say it, the store's specs and adapters with their eval figures,
report files read-only, safety flags, and the page's own files open while every API route wants the key."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from conftest import KEY, Server
from spec import demo_data, tiny_spec

AUTH = {"Authorization": f"Bearer {KEY}"}


def post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=120)


def get(server: Server, path: str, auth: bool = True) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=AUTH if auth else {}, timeout=60)


def raw_get(server: Server, path: str) -> int:
    """The status of GET `path` sent byte for byte (httpx would resolve `..` and re-quote before sending)."""
    where = urlsplit(server.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        connection.request("GET", path, headers=AUTH)
        return connection.getresponse().status
    finally:
        connection.close()


def test_only_the_pages_own_files_are_open_without_the_key(server: Server) -> None:
    from runner.serve.routes.page import FOLDER, TYPES

    page = get(server, "/", auth=False)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    assert sorted(TYPES) == sorted(p.name for p in FOLDER.iterdir() if p.name != "index.html")  # each file served
    for name in ("", *(f"static/{n}" for n in TYPES)):
        served = get(server, f"/{name}", auth=False)
        assert served.status_code == 200, name
        # nothing from elsewhere (works offline): no URL of another host in any file the page loads
        assert not re.search(r"(https?:)?//[\w-]+\.[\w.-]+", served.text), name
        assert httpx.head(f"{server.url}/{name}", timeout=60).status_code == 200, name  # HEAD as the Guard lets it
    for path in ("/static/secret.js", "/v1/adapters", "/v1/specs", "/openapi.json"):
        assert get(server, path, auth=False).status_code == 401, path
    assert get(server, "/static/secret.js").status_code == 404


def test_validate_says_what_runner_validate_says(server: Server, tmp_path: Path) -> None:
    good = tiny_spec()
    answer = post(server, "/v1/specs/validate", {"spec": good}).json()
    assert answer == {"valid": True, "problems": [],
                      "text": "spec: valid (serve-tiny: init model, multiple_choice data, 1 benchmark(s))"}
    bad = good.replace("lora: {r: 8", "lora: {r: -8").replace("template: plain", "template: plian")
    answer = post(server, "/v1/specs/validate", {"spec": bad}).json()
    (tmp_path / "spec").write_text(bad)
    cli = subprocess.run([sys.executable, "-m", "runner", "validate", "spec"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert not answer["valid"] and answer["text"] == cli.stderr.strip() and cli.returncode == 2
    lines = bad.splitlines()
    where = {(p["line"], p["column"]) for p in answer["problems"]}
    assert len(answer["problems"]) == 2 and all("plian" in lines[n - 1] or "-8" in lines[n - 1] for n, _ in where)
    assert post(server, "/v1/specs/validate", {"spec": "a: [1"}).json()["problems"][0]["line"] is not None
    assert post(server, "/v1/specs/validate", {"nope": 1}).status_code == 422


def test_plan_shows_cached_stages_and_why_the_others_run(server: Server) -> None:
    same = post(server, "/v1/specs/plan", {"spec": tiny_spec()}).json()
    assert same["valid"] and [s["status"] for s in same["steps"]] == ["cached"] * 5
    assert same["profile"].startswith("cpu ") and same["memory"][0].startswith("memory: ")
    changed = post(server, "/v1/specs/plan", {"spec": tiny_spec().replace("learning_rate: 3e-3", "learning_rate: 1e-3")})
    steps = {s["stage"]: s for s in changed.json()["steps"]}
    assert steps["data"]["status"] == "cached" and steps["train"]["status"] == "stale"
    assert any("train.learning_rate" in r for r in steps["train"]["reasons"]) and steps["eval"]["status"] == "run"
    assert steps["train"]["line"].startswith("train   ") and "stale, train.learning_rate" in steps["train"]["line"]
    typo = post(server, "/v1/specs/plan", {"spec": tiny_spec().replace("epochs:", "epoch:")}).json()
    assert not typo["valid"] and typo["steps"] == [] and "did you mean epochs" in typo["text"]


def test_plan_says_what_runner_plan_says_when_the_machine_cannot(server: Server, tmp_path: Path) -> None:
    text = tiny_spec() + "hardware: {device: cuda, on_unsupported: error}\n"
    answer = post(server, "/v1/specs/plan", {"spec": text}).json()
    (tmp_path / "spec").write_text(text)
    cli = subprocess.run([sys.executable, "-m", "runner", "plan", "spec", "--store", str(server.store)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 3 and not answer["valid"] and answer["text"] == cli.stderr.strip(), cli.stderr
    assert "hardware.device cuda" in answer["problems"][0]["message"]


def test_the_plan_hashes_a_data_file_once_until_it_changes(server: Server, tmp_path: Path) -> None:
    from runner.core.execute import registered_stages
    from runner.core.keys import file_digest
    from runner.core.plan import plan
    from runner.core.store import Store
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.serve.routes.specs import DigestCache
    from runner.spec.typed import parse_spec

    hashed: list[str] = []
    cache = DigestCache(lambda path: hashed.append(path.name) or file_digest(path))
    data = demo_data(tmp_path / "data")  # the fixture's files' copies: the same digests, so every stage is cached
    spec = parse_spec(tiny_spec(data=data), source="spec", base_dir=tmp_path)
    profile, store = resolve_profile(spec, probe_machine()), Store(server.store)
    first = plan(registered_stages(), spec, profile, store, None, digest=cache)
    assert [s.status for s in first] == ["cached"] * 5
    assert sorted(hashed) == ["medmc_test.jsonl", "medmc_train.jsonl"]  # data's and eval's files, each once
    again = plan(registered_stages(), spec, profile, store, None, digest=cache)
    assert len(hashed) == 2 and [s.key for s in again] == [s.key for s in first]  # the second plan hashed nothing
    assert [s.key for s in plan(registered_stages(), spec, profile, store, None)] == [s.key for s in first]  # the CLI's
    with open(data / "medmc_train.jsonl", "a") as handle:
        handle.write("\n")  # a changed file (its size and mtime) is hashed again
    assert cache(data / "medmc_train.jsonl") == file_digest(data / "medmc_train.jsonl") and len(hashed) == 3


def test_specs_lists_the_template_and_the_stores_specs_which_validate(server: Server) -> None:
    cards = {c["name"]: c for c in get(server, "/v1/specs").json()["data"]}
    assert cards["template"]["origin"] == "template"
    assert "/path/to/train.jsonl" in post(server, "/v1/specs/validate", {"spec": cards["template"]["text"]}).text
    mine = cards["serve-tiny"]
    assert mine["text"].startswith("name: serve-tiny\n")
    assert post(server, "/v1/specs/validate", {"spec": mine["text"]}).json()["valid"]
    steps = post(server, "/v1/specs/plan", {"spec": mine["text"]}).json()["steps"]
    assert [s["status"] for s in steps] == ["cached"] * 5  # the resolved spec is the same run: every key equal


def test_adapters_carry_the_eval_figures_and_their_report(server: Server) -> None:
    listed = get(server, "/v1/adapters").json()
    card = next(a for a in listed["data"] if a["id"] == "serve-tiny")
    metrics = json.loads((server.store / "eval" / card["eval_key"] / "metrics.json").read_text())["benchmarks"]["demo"]
    (demo,) = card["benchmarks"]
    assert (demo["base"], demo["tuned"], demo["n"]) == (metrics["base"]["acc"], metrics["tuned"]["acc"], 4)
    assert demo["tuned_ci95"] == metrics["tuned"]["ci95"] and demo["delta_ci95"] == metrics["paired"]["ci95"]
    assert (demo["base_ece"], demo["tuned_ece"]) == (metrics["calibration"]["base"]["ece"],
                                                     metrics["calibration"]["tuned"]["ece"])
    assert card["base"] == listed["bases"][0]["id"] and card["queries"] and card["generation"]["max_tokens"] == 16
    report = get(server, card["report"])
    assert report.status_code == 200 and "text/html" in report.headers["content-type"] and "<html" in report.text
    assert report.headers["content-security-policy"] == "sandbox" and report.headers["x-content-type-options"] == "nosniff"
    assert get(server, f"/v1/reports/{card['eval_key']}/metrics.json").json()["benchmarks"]["demo"] == metrics
    folder = server.store / "eval" / card["eval_key"]
    for name in (".notes", "notes\n"):  # files that exist, that only the name check keeps out
        (folder / name).write_text("not for the page")
    try:
        for path in (f"/v1/reports/{card['eval_key']}/..%2Fmanifest.json", f"/v1/reports/{card['eval_key']}/.notes",
                     f"/v1/reports/{card['eval_key']}/notes%0A", f"/v1/reports/{card['eval_key']}/..",
                     f"/v1/reports/{card['eval_key']}%0A/report.html", "/v1/reports/abc/report.html",
                     f"/v1/reports/{'0' * 64}/report.html"):
            assert raw_get(server, path) == 404, path
    finally:
        for name in (".notes", "notes\n"):
            (folder / name).unlink()


def test_the_adapter_card_carries_free_text_perplexity_and_calibration() -> None:
    from runner.serve.registry import _figures, _perplexity, _text_figures

    metrics = {  # the keys docs/evaluation.md "Metrics a clinical study reports" documents
        "benchmarks": {"mc": {"base": {"acc": 0.5, "ci95": [0.3, 0.7], "n": 20}, "tuned": {"acc": 0.7, "n": 20},
                              "calibration": {"base": {"ece": 0.21, "brier": 0.6}, "tuned": {"ece": 0.08}}}},
        "free_text": {"qa": {"n": 12, "format": "qa", "base": {"rougeL": 10.5, "bleu": 1.2},
                             "tuned": {"rougeL": 31.25, "bleu": 8.0}}, "broken": "x"},
        "perplexity": {"base": {"ppl": 40.1, "nll": 3.69, "tokens": 900}, "tuned": {"ppl": 12.3, "tokens": 900},
                       "texts": 9}}
    (mc,) = _figures(metrics)
    assert (mc.base, mc.tuned, mc.base_ece, mc.tuned_ece) == (0.5, 0.7, 0.21, 0.08)
    (qa,) = _text_figures(metrics)
    assert (qa.n, qa.base_rougeL, qa.tuned_rougeL, qa.base_bleu, qa.tuned_bleu) == (12, 10.5, 31.25, 1.2, 8.0)
    ppl = _perplexity(metrics)
    assert ppl is not None and (ppl.base, ppl.tuned, ppl.tokens) == (40.1, 12.3, 900)
    assert _text_figures({}) == [] and _perplexity({"perplexity": "x"}) is None and _figures({"benchmarks": None}) == []


def test_safety_flags_follow_the_models_spec_rules(server: Server) -> None:
    flagged = post(server, "/v1/safety/flags", {"model": "serve-tiny", "text": "Take 500 mg twice a day."}).json()
    assert flagged["data"] == [{"rule": "definite dose", "match": "500 mg"}]
    cleared = post(server, "/v1/safety/flags", {"model": "serve-tiny", "text": "Take 500 mg; ask your doctor."})
    assert cleared.json()["data"] == []
    assert post(server, "/v1/safety/flags", {"model": "nope", "text": "x"}).status_code == 404


def test_progress_of_a_job_that_does_not_exist_is_404(server: Server) -> None:
    assert get(server, "/v1/fine_tuning/jobs/ftjob-nosuchjob/progress").status_code == 404
    for job in ("..", ".", "ftjob-x%2F..", "%2E%2E"):  # sent as written: the route's id check, not the router
        assert raw_get(server, f"/v1/fine_tuning/jobs/{job}/progress") == 404, job


LOG = (  # the shape of a real job log (`runner run` output, the trainer's bar redrawn with \r)
    "[runner] profile: cpu fp32, quantization nf4\n[runner] model: cached 8f7b8b70a91f, nothing to do\n"
    "[runner] data: running be71050ecc5b (no earlier run of this spec)\n[runner] data: done in 0.4 s\n"
    "[runner] train: running b13dc601ee1a (no earlier run of this spec)\n"
    "\r  0%|          | 0/2 [00:00<?, ?it/s]\r100%|##| 2/2 [00:00<00:00, 382.80it/s]\n"
    "\r  0%|          | 0/33 [00:00<?, ?it/s]\r 12%|#  | 4/33 [00:01<00:07, 3.6it/s, loss=6.8754]"
    "\r 27%|##  | 9/33 [00:02<01:06, 3.9it/s, loss=6.6876]")


def test_progress_reads_the_stages_the_step_and_the_time_left_from_the_log(tmp_path: Path) -> None:
    from runner.serve.jobs.progress import progress

    (tmp_path / "train" / ".work" / "b13dc601ee1a0000").mkdir(parents=True)
    rows = [{"step": 1, "loss": 6.9, "learning_rate": 0.0, "seconds": 0.4},
            {"step": 2, "loss": float("nan"), "learning_rate": 0.003, "seconds": 0.5}]
    (tmp_path / "train" / ".work" / "b13dc601ee1a0000" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')  # the last line half written
    (tmp_path / "job.log").write_text(LOG)
    found = progress(tmp_path, {"id": "ftjob-x", "status": "running"}, tmp_path / "job.log")
    assert [(s["stage"], s["status"], s["key"]) for s in found["stages"]] == [
        ("model", "cached", "8f7b8b70a91f"), ("data", "done", "be71050ecc5b"), ("train", "running", "b13dc601ee1a"),
        ("export", "pending", None), ("eval", "pending", None)]
    assert (found["step"], found["total_steps"], found["time_left_s"]) == (9, 33, 66.0)
    assert [p["loss"] for p in found["points"]] == [6.9, None]  # NaN is no JSON number: a gap in the curve
    cancelled = progress(tmp_path, {"id": "ftjob-x", "status": "cancelled"}, tmp_path / "job.log")
    assert cancelled["stages"][2]["status"] == "cancelled"
    queued = progress(tmp_path, {"id": "ftjob-x", "status": "queued"}, tmp_path / "missing.log")
    assert {s["status"] for s in queued["stages"]} == {"pending"} and queued["points"] == []
