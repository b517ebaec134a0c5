"""The code's shape, checked: imports run one way, heavy libraries stay in the stages, pieces stay small.

Read from the source with `ast`, so a new module is checked the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "runner"
STAGES = PACKAGE / "stages"
# `runner serve` loads models and generates as the stages do: heavy, and only imported by `runner serve`.
SERVE = PACKAGE / "serve"
# The one module outside runner/stages that reaches the stages, through their registry.
REGISTRY_USERS = {"runner/execute.py"}
# The comparison report (`runner compare`) is written by the eval report's writer, with its plotting:
# one report look, one writer. These eval modules import no torch; the stage itself stays out of reach.
REPORT_USERS = {"runner/compare.py": {"runner.stages.eval.report", "runner.stages.eval.reportdoc",
                                      "runner.stages.eval.curves"}}
HEAVY = {"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "safetensors",
         "matplotlib", "tokenizers"}
MAX_FILE_LINES = 320
MAX_FUNCTION_LINES = 50


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_nothing_outside_the_stages_imports_them_but_the_executor() -> None:
    wrong = [f"{relative(path)}:{line} imports {name}" for path in modules() if STAGES not in path.parents
             and SERVE not in path.parents and relative(path) not in REGISTRY_USERS
             for name, line in imported(path) if (name == "runner.stages" or name.startswith("runner.stages."))
             and not _allowed_report_import(relative(path), name)]
    assert not wrong, "low-level modules must not reach into runner/stages/: " + "; ".join(wrong)


def _allowed_report_import(path: str, name: str) -> bool:
    """`from runner.stages.eval.report import to_html` is seen as the module and as module.name."""
    allowed = REPORT_USERS.get(path, set())
    return name in allowed or name.rsplit(".", 1)[0] in allowed


def test_heavy_libraries_are_imported_only_inside_the_stages() -> None:
    wrong = [f"{relative(path)}:{line} imports {name}" for path in modules()
             if STAGES not in path.parents and SERVE not in path.parents
             for name, line in imported(path) if name.split(".")[0] in HEAVY]
    assert not wrong, "; ".join(wrong)


def test_stages_holds_the_five_stages_and_nothing_else() -> None:
    entries = sorted(p.name for p in STAGES.iterdir() if p.name != "__pycache__")
    assert entries == ["__init__.py", "data", "eval", "export", "model", "train"]


@pytest.mark.parametrize("path", modules(), ids=relative)
def test_files_and_functions_stay_small(path: Path) -> None:
    """A function over the limit says why in a `# long:` comment on its first lines."""
    text = path.read_text("utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{relative(path)} has {len(lines)} lines; split it by what it owns"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            head = "\n".join(lines[node.lineno - 1 : node.lineno + 3])
            assert length <= MAX_FUNCTION_LINES or "# long:" in head, (
                f"{relative(path)}:{node.lineno} {node.name} is {length} lines; split it into named steps "
                f"or say why it must be long (`# long: ...`)")


def test_the_registry_holds_the_stages_in_the_order_the_cli_names_them() -> None:
    from runner.execute import registered_stages
    from runner.stage import STAGE_NAMES

    assert tuple(stage.name for stage in registered_stages()) == STAGE_NAMES


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages under tests/): two files of one name in
    different folders fail collection of the whole run, though each folder passes on its own."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
