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
# Rooms that may import heavy libraries at module level: the stages, the server, base-model loading and
# the report writer (all imported only by the commands that need them). rows/ and scoring/ are light on
# import: their heavy work imports torch or datasets inside the function that needs it.
HEAVY_ROOMS = [PACKAGE / name for name in ("stages", "serve", "models", "report")]
LAZY_HEAVY_ROOMS = [PACKAGE / name for name in ("rows", "scoring")]
# The one module outside runner/stages that reaches the stages, through their registry.
REGISTRY_USERS = {"runner/core/execute.py"}
HEAVY = {"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "safetensors",
         "matplotlib", "tokenizers"}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 50


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path, lazy: bool = True) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (lazy imports count), or with
    `lazy=False` only those at module level (run on import)."""
    found = []
    tree = ast.parse(path.read_text("utf-8"))
    for node in (ast.walk(tree) if lazy else _module_level(tree)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """Statements run on import: the module's body, into if/try blocks, not into functions or classes."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            todo += [*node.body, *node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return out


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_nothing_outside_the_stages_imports_them_but_the_executor() -> None:
    wrong = [f"{relative(path)}:{line} imports {name}" for path in modules() if STAGES not in path.parents and relative(path) not in REGISTRY_USERS
             for name, line in imported(path) if (name == "runner.stages" or name.startswith("runner.stages."))]
    assert not wrong, "low-level modules must not reach into runner/stages/: " + "; ".join(wrong)


def test_heavy_libraries_are_imported_only_in_the_heavy_rooms() -> None:
    wrong = [f"{relative(path)}:{line} imports {name}" for path in modules()
             if not any(room in path.parents for room in HEAVY_ROOMS)
             for name, line in imported(path, lazy=not any(room in path.parents for room in LAZY_HEAVY_ROOMS))
             if name.split(".")[0] in HEAVY]
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
    from runner.core.execute import registered_stages
    from runner.core.stage import STAGE_NAMES

    assert tuple(stage.name for stage in registered_stages()) == STAGE_NAMES


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages under tests/): two files of one name in
    different folders fail collection of the whole run, though each folder passes on its own."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
