"""The page at `/`, in a real browser: headless Chromium (Debian's, driven by Playwright) against the
real `runner serve` of conftest.py. The chat's streamed answer equals the API's; a typo in the spec
shows `runner validate`'s line with its line number; a launched job's curve grows and it succeeds;
without the key the page asks for it. Each view is written as a PNG at a laptop's 1366 x 768 and a
phone's 375 px: into a temporary folder, or where RUNNER_SCREENSHOTS says (`RUNNER_SCREENSHOTS=docs/screens`
writes the README's, relative to the checkout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import KEY, ROOT, Server
from spec import QUERY, demo_data, tiny_spec

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("the page's browser tests need Debian's chromium at /usr/bin/chromium (apt install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 740}
STEPS = 200  # the launched job's: a few seconds of training on two shared cores, one metrics row a step
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: a temporary folder, so a test run leaves the checkout as it was."""
    wanted = os.environ.get("RUNNER_SCREENSHOTS")
    folder = ROOT / wanted if wanted else tmp_path_factory.mktemp("screens")  # ROOT / an absolute path is that path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


def opened(browser: object, server: Server, view: str, size: dict[str, int] = DESKTOP, key: str | None = KEY) -> object:
    """A fresh page on `view`, the key already saved in the browser (as the key form saves it) when given."""
    context = browser.new_context(viewport=size)  # type: ignore[attr-defined]
    if key is not None:
        # in the page itself: the report's sandboxed frame has no localStorage to reach (that is its point)
        context.add_init_script(f"if (window === window.top) localStorage.setItem('runner-key', {key!r});")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/#{view}")
    page.errors = errors  # checked by the tests: a script error is a broken page
    return page


def shot(screens: Path, page: object, name: str) -> None:
    page.screenshot(path=str(screens / f"{name}.png"), full_page=False)  # type: ignore[attr-defined]


def api_answer(server: Server, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": QUERY}], "max_tokens": 16, "temperature": 0,
            "top_p": 1, "seed": 7}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=120).json()
    return str(answer["choices"][0]["message"]["content"])


def test_without_the_key_the_page_asks_for_it_and_goes_on_once_given(browser: object, server: Server,
                                                                     screens: Path) -> None:
    page = opened(browser, server, "chat", key=None)
    page.wait_for_selector("#keybar:not([hidden])")
    assert "needs an API key" in page.inner_text("#key-message")
    shot(screens, page, "key-desktop")
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#chat-model option[value='serve-tiny']", state="attached")
    assert page.is_hidden("#keybar") and not page.errors
    page.context.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_spec_query_streams_the_api_answer_beside_the_base(browser: object, server: Server, screens: Path,
                                                            size: str) -> None:
    page = opened(browser, server, "chat", DESKTOP if size == "desktop" else PHONE)
    page.wait_for_selector("#chat-model option[value='serve-tiny']", state="attached")
    page.select_option("#chat-model", "serve-tiny")
    assert page.input_value("#p-max") == "16" and page.input_value("#p-temp") == "0"  # the spec's generation
    page.click(f"#chat-queries button.chip:has-text('{QUERY[:30]}')")
    page.wait_for_selector("#pane-adapter[data-state=done]", timeout=120_000)
    page.wait_for_selector("#pane-base[data-state=done]", timeout=120_000)
    shown = page.inner_text("[data-testid=answer-adapter]")
    assert shown.strip() == api_answer(server, "serve-tiny").strip() and shown.strip()
    base = page.inner_text("#pane-base .model-id")
    assert base.startswith("base-") and page.inner_text("[data-testid=answer-base]").strip() == \
        api_answer(server, base).strip()
    assert "max_tokens 16, temperature 0" in page.inner_text("#pane-adapter .meta")
    assert page.locator("#pane-adapter .flags").inner_text().strip()  # flags, or that there are none
    card = httpx.get(f"{server.url}/v1/adapters", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
    (demo,) = next(a for a in card["data"] if a["id"] == "serve-tiny")["benchmarks"]
    figures = page.inner_text("[data-testid=chat-figures]")  # the adapter's eval beside its answers
    assert "eval of serve-tiny" in figures and f"{100 * demo['tuned']:.1f}%" in figures, figures
    assert f"{demo['base_ece']:.3f} → {demo['tuned_ece']:.3f}" in figures, figures
    assert not page.errors
    shot(screens, page, f"chat-{size}")
    page.context.close()


def test_adapters_lists_the_eval_figures_opens_the_report_loads_and_unloads(browser: object, server: Server,
                                                                            screens: Path) -> None:
    page = opened(browser, server, "adapters", PHONE)
    page.wait_for_selector("[data-adapter='serve-tiny']")
    shot(screens, page, "adapters-phone")
    page.context.close()
    page = opened(browser, server, "adapters")
    card = page.wait_for_selector("[data-adapter='serve-tiny']")
    text = card.inner_text()
    assert "demo" in text and "base-" in text
    assert re.search(r"\d+\.\d%\s*\[\d+\.\d, \d+\.\d\]", text), text  # accuracy with its interval
    shot(screens, page, "adapters-desktop")
    card.query_selector("button:has-text('Report')").click()
    page.wait_for_selector("#report-box[open] #report-frame[srcdoc]")
    assert page.get_attribute("#report-frame", "sandbox") == ""  # no script, an opaque origin:
    assert page.evaluate("document.querySelector('#report-frame').contentDocument") is None  # not the page's
    report = page.frame_locator("#report-frame").locator("body")
    assert "Answers to the spec's queries" in report.inner_text()  # the eval report itself, fetched with the key
    page.click("#report-close")
    # the figures the metrics hold beyond accuracy, drawn as any card draws them
    drawn = page.evaluate("""R.figures({benchmarks: [], free_text: [{name: 'qa', n: 12, base_rougeL: 10.5,
        tuned_rougeL: 31.25, base_bleu: 1.2, tuned_bleu: 8}], perplexity: {base: 40.1, tuned: 12.3, tokens: 900}}).innerText""")
    assert "10.5 → 31.3" in drawn and "1.2 → 8.0" in drawn and "perplexity 40.10 → 12.30" in drawn, drawn
    (export,) = [p for p in (server.store / "export").iterdir() if (p / "manifest.json").is_file()
                 and p.name.startswith(str(page.evaluate("R.card('serve-tiny').export_key"))[:12])]
    page.click("#load-box summary")
    page.fill("#load-name", "page-loaded")
    page.fill("#load-path", f"export/{export.name}/adapter")
    page.click("#load-form button")
    loaded = page.wait_for_selector("[data-adapter='page-loaded']")
    assert "loaded at run time" in loaded.inner_text()
    loaded.query_selector("button:has-text('Unload')").click()
    page.wait_for_selector("[data-adapter='page-loaded']", state="detached")
    assert not page.errors
    page.context.close()


def _validate_cli(text: str, folder: Path) -> str:
    path = folder / "spec"  # the name the server cites: "(spec:LINE:COL)"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "runner", "validate", "spec"], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    return done.stderr.strip()


def test_a_typo_in_the_spec_shows_runner_validates_line(browser: object, server: Server, screens: Path,
                                                       tmp_path: Path) -> None:
    page = opened(browser, server, "train")
    page.wait_for_selector("#spec-start option:has-text('serve-tiny (run')", state="attached")
    page.select_option("#spec-start", label=page.inner_text("#spec-start option:has-text('serve-tiny (run')"))
    page.click("#spec-use")  # the fixture's spec from the store (other tests' jobs may be newer)
    page.wait_for_function("document.querySelector('#spec-editor').value.startsWith('name: serve-tiny')")
    text = page.input_value("#spec-editor")
    typo = text.replace("  epochs:", "  epocs:", 1)
    assert typo != text
    line = typo.splitlines().index(next(x for x in typo.splitlines() if "epocs:" in x)) + 1
    page.fill("#spec-editor", typo)
    problem = page.wait_for_selector(f"#spec-problems li[data-line='{line}']")
    assert f"line {line}:" in problem.inner_text()
    assert page.inner_text("#spec-status") == "1 problem(s)" and page.is_disabled("#launch")
    cli = _validate_cli(typo, tmp_path)
    assert cli == "error: " + page.inner_text("#spec-problems .message")  # the line `runner validate` prints
    assert page.inner_text("#spec-problems code") == typo.splitlines()[line - 1]  # the line it points at
    problem.click()  # selects that line in the editor
    assert page.evaluate("(e => e.value.slice(e.selectionStart, e.selectionEnd))(document.querySelector('#spec-editor'))") \
        == typo.splitlines()[line - 1]
    shot(screens, page, "train-error-desktop")
    changed = text.replace("learning_rate: 0.003", "learning_rate: 0.002")
    assert changed != text
    page.fill("#spec-editor", changed)
    page.wait_for_function("document.querySelector('#plan').innerText.includes('stale')")
    plan = page.inner_text("#plan")
    assert "train.learning_rate 0.003 → 0.002" in plan and "cached" in plan and "will run" in plan
    assert page.is_enabled("#launch") and not page.errors
    page.evaluate(f"goToLine({changed.splitlines().index('  learning_rate: 0.002') + 1})")
    shot(screens, page, "train-desktop")
    page.context.close()


def test_a_launched_job_draws_its_curve_live_and_succeeds(browser: object, server: Server,
                                                          screens: Path) -> None:
    page = opened(browser, server, "train")
    page.wait_for_function("document.querySelector('#spec-editor').value.length > 0")
    page.fill("#spec-editor", tiny_spec("serve-page", max_steps=STEPS, data=demo_data(server.folder / "data" / "page")))
    page.wait_for_function("document.querySelector('#plan').innerText.includes('will run')")
    page.wait_for_selector("#launch:enabled")
    page.click("#launch")
    page.wait_for_selector("#view-jobs:not([hidden]) #loss-chart")
    job = page.evaluate("R.selectedJob")
    rows: list[int] = []  # the API's metrics rows, read every 0.1 s
    drawn: list[int] = []  # the page's curve, redrawn at the same pace
    deadline = time.time() + 300
    while True:
        progress = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job}/progress", timeout=60,
                             headers={"Authorization": f"Bearer {KEY}"}).json()
        rows.append(len(progress["points"]))
        page.evaluate("refresh()")  # the Jobs view's own once-a-second poll, called at the test's pace
        drawn.append(int(page.get_attribute("#loss-chart", "data-points") or 0))
        if STEPS // 2 <= drawn[-1] < STEPS and not any(STEPS // 2 <= d < STEPS for d in drawn[:-1]):
            shot(screens, page, "jobs-running-desktop")  # half the curve drawn
        if progress["status"] not in ("queued", "running"):
            break
        assert time.time() < deadline, progress
        time.sleep(0.1)
    assert progress["status"] == "succeeded", progress["error"]
    assert len({r for r in rows if 0 < r < STEPS}) >= 2 and rows == sorted(rows), rows  # the rows grew as it ran
    assert any(0 < d < STEPS for d in drawn), drawn  # and the page drew a part of the curve before the end
    page.wait_for_function("document.querySelector('[data-testid=job-status]').innerText === 'succeeded'")
    assert int(page.get_attribute("#loss-chart", "data-points") or 0) == STEPS == rows[-1]
    assert int(page.get_attribute("#lr-chart", "data-points") or 0) == STEPS
    stages = page.inner_text("#job-detail .stages")
    assert all(f"{s}: done" in stages for s in ("train", "export", "eval")), stages
    page.wait_for_selector("#job-detail button:has-text('Chat with serve-page')")
    assert page.query_selector("#job-detail button:has-text('Report')") is not None and not page.errors
    shot(screens, page, "jobs-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(1200)  # a poll redraws the charts at the new width
    shot(screens, page, "jobs-phone")
    page.set_viewport_size(DESKTOP)
    page.click("#job-detail button:has-text('Chat with serve-page')")  # one load of Chat, with that model chosen
    page.wait_for_function("document.querySelector('#chat-figures').innerText.includes('eval of serve-page')")
    assert page.input_value("#chat-model") == "serve-page" and page.inner_text("#pane-adapter .model-id") == "serve-page"
    page.wait_for_timeout(500)  # a second load, had there been one, would have chosen again by now
    assert page.input_value("#chat-model") == "serve-page" and not page.errors
    page.context.close()
    page = opened(browser, server, "train", PHONE)
    page.wait_for_selector("#plan .plan-table")
    shot(screens, page, "train-phone")
    page.context.close()


def test_each_pause_in_typing_is_validated_and_the_plan_waits_for_a_rest(browser: object, server: Server) -> None:
    page = opened(browser, server, "train")
    page.wait_for_selector("#plan .plan-table")  # the newest spec of the store, planned once
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url.rsplit("/", 1)[-1]) if "/v1/specs/" in r.url else None)
    text = page.input_value("#spec-editor")
    for rate in ("0.001", "0.002", "0.004", "0.005"):  # four edits, each after a pause the validation waits for
        page.fill("#spec-editor", re.sub(r"learning_rate: \S+", f"learning_rate: {rate}", text, count=1))
        page.wait_for_timeout(600)
    page.wait_for_function("document.querySelector('#plan').innerText.includes('0.005')")
    assert asked.count("validate") == 4 and asked.count("plan") == 1, asked  # the plan once, on the last text
    assert page.is_enabled("#launch") and not page.errors
    page.context.close()
