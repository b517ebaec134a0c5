"""The routes the page uses, through plain HTTP as any client calls them: a spec validated and planned
as `runner validate` / `runner plan` say it, the store's specs and adapters with their eval figures,
report files read-only, safety flags, and the page's own files open while every API route wants the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import KEY, Server
from spec import tiny_spec

AUTH = {"Authorization": f"Bearer {KEY}"}


def post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=120)


def get(server: Server, path: str, auth: bool = True) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=AUTH if auth else {}, timeout=60)


def test_only_the_pages_own_files_are_open_without_the_key(server: Server) -> None:
    page = get(server, "/", auth=False)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    for name in ("app.js", "chat.js", "train.js", "jobs.js", "style.css"):
        assert get(server, f"/static/{name}", auth=False).status_code == 200, name
    assert "cdn" not in page.text.lower() and "https://" not in page.text  # nothing from elsewhere: works offline
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
    assert card["base"] == listed["bases"][0]["id"] and card["queries"] and card["generation"]["max_tokens"] == 16
    report = get(server, card["report"])
    assert report.status_code == 200 and "text/html" in report.headers["content-type"] and "<html" in report.text
    assert get(server, f"/v1/reports/{card['eval_key']}/metrics.json").json()["benchmarks"]["demo"] == metrics
    for path in (f"/v1/reports/{card['eval_key']}/..%2Fmanifest.json", f"/v1/reports/{card['eval_key']}/.hidden",
                 "/v1/reports/abc/report.html", f"/v1/reports/{'0' * 64}/report.html"):
        assert get(server, path).status_code == 404, path


def test_safety_flags_follow_the_models_spec_rules(server: Server) -> None:
    flagged = post(server, "/v1/safety/flags", {"model": "serve-tiny", "text": "Take 500 mg twice a day."}).json()
    assert flagged["data"] == [{"rule": "definite dose", "match": "500 mg"}]
    cleared = post(server, "/v1/safety/flags", {"model": "serve-tiny", "text": "Take 500 mg; ask your doctor."})
    assert cleared.json()["data"] == []
    assert post(server, "/v1/safety/flags", {"model": "nope", "text": "x"}).status_code == 404


def test_progress_of_a_job_that_does_not_exist_is_404(server: Server) -> None:
    assert get(server, "/v1/fine_tuning/jobs/ftjob-nosuchjob/progress").status_code == 404
    assert get(server, "/v1/fine_tuning/jobs/../progress").status_code == 404


LOG = (  # the shape of a real job log (`runner run` output, the trainer's bar redrawn with \r)
    "[runner] profile: cpu fp32, quantization nf4\n[runner] model: cached 8f7b8b70a91f, nothing to do\n"
    "[runner] data: running be71050ecc5b (no earlier run of this spec)\n[runner] data: done in 0.4 s\n"
    "[runner] train: running b13dc601ee1a (no earlier run of this spec)\n"
    "\r  0%|          | 0/2 [00:00<?, ?it/s]\r100%|##| 2/2 [00:00<00:00, 382.80it/s]\n"
    "\r  0%|          | 0/33 [00:00<?, ?it/s]\r 12%|#  | 4/33 [00:01<00:07, 3.6it/s, loss=6.8754]"
    "\r 27%|##  | 9/33 [00:02<01:06, 3.9it/s, loss=6.6876]")


def test_progress_reads_the_stages_the_step_and_the_time_left_from_the_log(tmp_path: Path) -> None:
    from runner.serve.progress import progress

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
