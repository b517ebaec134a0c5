"""The README and docs/ stay true: links resolve, named specs exist, every `runner` command shown parses
(and validate/plan of the specs shown run), the README's own-data walkthrough validates and plans as
written, and the spec reference is what the schema generates. No torch: commands run in subprocesses
that stay on the light path."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from runner.cli import _parser

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


docblocks = _tool("docblocks")
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for page in PAGES for block in docblocks.blocks(page)]
SHELL = [b for b in BLOCKS if b.lang in ("sh", "bash", "") and b.mark is None]
LINK = re.compile(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"")


def _light_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/ (goal: under ~200)"
    text = "\n".join(lines[:40])
    assert "make run" in text and "make test" in text, "make run and make test belong near the top"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_every_spec_named_exists() -> None:
    named = {m for page in PAGES for m in re.findall(r"\bspecs/[\w.-]+\.(?:yaml|txt)", page.read_text(encoding="utf-8"))}
    assert named, "the docs name no spec at all?"
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"the docs name specs that do not exist: {missing}"


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where())
def test_runner_commands_parse(block) -> None:  # type: ignore[no-untyped-def]
    for line in docblocks.shell_lines(block.text):
        argv = docblocks.runner_argv(line)
        if argv is None:
            continue
        try:
            _parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{block.where()}: `{line}` does not parse (exit {exc.code}); fix the docs or the CLI")


def test_make_targets_shown_exist() -> None:
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M))
    shown = {(b.where(), words[1]) for b in SHELL for line in docblocks.shell_lines(b.text)
             if (words := line.split())[0] == "make" and len(words) > 1}
    assert shown, "no make command in the docs' shell blocks?"
    missing = sorted(f"{where}: make {target}" for where, target in shown if target not in targets)
    assert not missing, f"make targets shown but not in the Makefile: {missing}"


def _without_store(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if a != "--store" and (i == 0 or argv[i - 1] != "--store")]


def _cheap(argv: list[str]) -> bool:
    """What runs in seconds without torch: validate and plan of a spec in this checkout, a sweep's plan,
    a dry-run gc (the last three against an empty store of the test's own)."""
    spec_here = len(argv) > 1 and (ROOT / argv[1]).is_file()
    return ((argv[0] in ("validate", "plan") and spec_here) or (argv[0] == "sweep" and spec_here and "--plan" in argv)
            or (argv[0] == "gc" and "--dry-run" in argv))


def _cheap_commands() -> list[tuple[str, list[str]]]:
    """The cheap commands the docs show, each once, with where it is shown first."""
    found: dict[tuple[str, ...], str] = {}
    for block in SHELL:
        for line in docblocks.shell_lines(block.text):
            argv = docblocks.runner_argv(line)
            if argv and _cheap(argv):
                found.setdefault(tuple(_without_store(argv)), block.where())
    return [(where, list(argv)) for argv, where in sorted(found.items())]


@pytest.mark.parametrize(("where", "argv"), _cheap_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_cheap_commands_shown_run(where: str, argv: list[str], tmp_path: Path) -> None:
    store = [] if argv[0] == "validate" else ["--store", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "runner", *argv, *store], cwd=ROOT, capture_output=True,
                          text=True, env=_light_env(), timeout=120)
    assert done.returncode == 0, f"{where}: runner {' '.join(argv)}: {done.stderr[-2000:]}"


def test_structured_blocks_parse() -> None:
    for block in BLOCKS:
        if block.lang == "yaml":
            yaml.safe_load(block.text)
        elif block.lang == "json":
            for line in block.text.splitlines():
                json.loads(line)
        elif block.lang == "python":
            compile(block.text, block.where(), "exec")


def _readme_block(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(after)
    return next(b.text for b in docblocks.blocks(ROOT / "README.md")
                if b.lang == lang and text.index(b.text) > start)


def test_own_data_walkthrough_validates_and_plans(tmp_path: Path) -> None:
    """The README's rows, written to the files its spec names, then its validate and plan, as shown."""
    rows = [json.loads(line) for line in _readme_block("json", "## Your own data").splitlines()]
    chats = [row for row in rows if "messages" in row]
    questions = [row for row in rows if "answer" in row]
    (tmp_path / "my_chats.jsonl").write_text("\n".join(json.dumps(r) for r in chats * 20) + "\n")
    (tmp_path / "my_test.jsonl").write_text("\n".join(json.dumps(r) for r in questions * 5) + "\n")
    (tmp_path / "my-spec.yaml").write_text(_readme_block("yaml", "## Your own data"))
    assert len((tmp_path / "my-spec.yaml").read_text().splitlines()) <= 25, "the walkthrough spec should stay short"
    commands = [docblocks.runner_argv(line) for line in docblocks.shell_lines(_readme_block("sh", "## Your own data"))]
    assert [argv[:2] for argv in commands if argv] == [["validate", "my-spec.yaml"], ["plan", "my-spec.yaml"],
                                                      ["run", "my-spec.yaml"]]
    for argv in commands[:2]:
        assert argv is not None
        done = subprocess.run([sys.executable, "-m", "runner", *argv], cwd=tmp_path, capture_output=True, text=True,
                              env=_light_env(), timeout=120)
        assert done.returncode == 0, f"runner {' '.join(argv)}: {done.stdout[-1000:]}{done.stderr[-2000:]}"


def test_spec_reference_is_current() -> None:
    specref = _tool("specref")
    page = specref.render(json.loads(specref.SCHEMA.read_text(encoding="utf-8")))
    committed = specref.PAGE.read_text(encoding="utf-8") if specref.PAGE.is_file() else ""
    assert committed == page, f"docs/spec-reference.md is stale: run `{specref.COMMAND}` and commit it"


def test_spec_reference_names_every_field() -> None:
    specref = _tool("specref")
    schema = json.loads(specref.SCHEMA.read_text(encoding="utf-8"))
    page = specref.PAGE.read_text(encoding="utf-8")
    shown = [path for section, node in schema["properties"].items() for path, _, _ in specref.rows(section, node)]
    assert {"model.source", "data.train[].weight", "eval.benchmarks[].format", "export.parity.q4.min_agreement"} <= set(shown)
    assert all(f"| `{path}`" in page for path in shown)
    # A field left out of the page is under an object whose row names the object with the same fields.
    every = [path for path, node in specref.fields(schema, "") if "." in path or "properties" not in node]
    hidden = [path for path in every if path not in shown]
    assert all(any(path.startswith((row + ".", row + "[")) for row in shown) for path in hidden), hidden
