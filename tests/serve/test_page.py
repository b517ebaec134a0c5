"""The page at `/`, in a real browser: headless Chromium (Debian's, driven by Playwright) against the
real `runner serve` of conftest.py. The chat's streamed answer equals the API's; a typo in the spec
shows `runner validate`'s line with its line number; a launched job's curve grows and it succeeds;
without the key the page asks for it. Each view is written as a PNG to docs/screens/ (the README
shows them), at a laptop's 1366 x 768 and a phone's 375 px."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import KEY, ROOT, Server
from spec import QUERY, tiny_spec

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("the page's browser tests need Debian's chromium at /usr/bin/chromium (apt install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

SCREENS = ROOT / "docs" / "screens"
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 740}
STEPS = 120  # the launched job's: a few seconds of training on two shared cores, one metrics row a step
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


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
        context.add_init_script(f"localStorage.setItem('runner-key', {key!r});")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/#{view}")
    page.errors = errors  # checked by the tests: a script error is a broken page
    return page


def shot(page: object, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=False)  # type: ignore[attr-defined]


def api_answer(server: Server, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": QUERY}], "max_tokens": 16, "temperature": 0,
            "top_p": 1, "seed": 7}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=120).json()
    return str(answer["choices"][0]["message"]["content"])


def test_without_the_key_the_page_asks_for_it_and_goes_on_once_given(browser: object, server: Server) -> None:
    page = opened(browser, server, "chat", key=None)
    page.wait_for_selector("#keybar:not([hidden])")
    assert "needs an API key" in page.inner_text("#key-message")
    shot(page, "key-desktop")
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#chat-model option[value='serve-tiny']", state="attached")
    assert page.is_hidden("#keybar") and not page.errors
    page.context.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_spec_query_streams_the_api_answer_beside_the_base(browser: object, server: Server, size: str) -> None:
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
    assert not page.errors
    shot(page, f"chat-{size}")
    page.context.close()


def test_adapters_lists_the_eval_figures_opens_the_report_loads_and_unloads(browser: object, server: Server) -> None:
    page = opened(browser, server, "adapters", PHONE)
    page.wait_for_selector("[data-adapter='serve-tiny']")
    shot(page, "adapters-phone")
    page.context.close()
    page = opened(browser, server, "adapters")
    card = page.wait_for_selector("[data-adapter='serve-tiny']")
    text = card.inner_text()
    assert "demo" in text and "base-" in text
    assert re.search(r"\d+\.\d%\s*\[\d+\.\d, \d+\.\d\]", text), text  # accuracy with its interval
    shot(page, "adapters-desktop")
    with page.expect_popup() as popup:
        card.query_selector("button:has-text('Report')").click()
    report = popup.value
    report.wait_for_load_state()
    assert "Answers to the spec's queries" in report.inner_text("body")  # the eval report itself, fetched with the key
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


def test_a_typo_in_the_spec_shows_runner_validates_line(browser: object, server: Server, tmp_path: Path) -> None:
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
    shot(page, "train-error-desktop")
    changed = text.replace("learning_rate: 0.003", "learning_rate: 0.002")
    assert changed != text
    page.fill("#spec-editor", changed)
    page.wait_for_function("document.querySelector('#plan').innerText.includes('stale')")
    plan = page.inner_text("#plan")
    assert "train.learning_rate 0.003 → 0.002" in plan and "cached" in plan and "will run" in plan
    assert page.is_enabled("#launch") and not page.errors
    page.evaluate(f"goToLine({changed.splitlines().index('  learning_rate: 0.002') + 1})")
    shot(page, "train-desktop")
    page.context.close()


def test_a_launched_job_draws_its_curve_live_and_succeeds(browser: object, server: Server) -> None:
    page = opened(browser, server, "train")
    page.wait_for_function("document.querySelector('#spec-editor').value.length > 0")
    page.fill("#spec-editor", tiny_spec("serve-page", max_steps=STEPS))
    page.wait_for_function("document.querySelector('#plan').innerText.includes('will run')")
    page.wait_for_selector("#launch:enabled")
    page.click("#launch")
    page.wait_for_selector("#view-jobs:not([hidden]) #loss-chart")
    seen: list[int] = []
    deadline = time.time() + 300
    while page.inner_text("[data-testid=job-status]") != "succeeded":
        assert time.time() < deadline and page.inner_text("[data-testid=job-status]") in ("queued", "running")
        points = int(page.get_attribute("#loss-chart", "data-points") or 0)
        if points and (not seen or points != seen[-1]):
            seen.append(points)
        if len(seen) == 2:
            shot(page, "jobs-running-desktop")
        time.sleep(0.25)
    final = int(page.get_attribute("#loss-chart", "data-points") or 0)
    assert final == STEPS and int(page.get_attribute("#lr-chart", "data-points") or 0) == STEPS
    assert len(seen) >= 2 and seen == sorted(seen) and seen[0] < final, seen  # it grew while the job ran
    stages = page.inner_text("#job-detail .stages")
    assert all(f"{s}: done" in stages for s in ("train", "export", "eval")), stages
    page.wait_for_selector("#job-detail button:has-text('Chat with serve-page')")
    assert page.query_selector("#job-detail button:has-text('Report')") is not None and not page.errors
    shot(page, "jobs-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(1200)  # a poll redraws the charts at the new width
    shot(page, "jobs-phone")
    page.context.close()
    page = opened(browser, server, "train", PHONE)
    page.wait_for_selector("#plan .plan-table")
    shot(page, "train-phone")
    page.context.close()
