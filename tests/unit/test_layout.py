"""The code's shape, checked: imports run one way (down the layers, never between stages, never in a
circle), heavy libraries stay in the heavy rooms, pieces stay small and simple, the map in the docs
matches the tree.

Read from the source with `ast` (and radon), so a new module is checked the day it is added.
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
REGISTRY = "runner/core/execute.py"
# The layers, lowest first: a module imports only from a lower layer, or from its own room (its folder
# under runner/) in its own layer. An entry is a room (a folder under runner/) or a module (a file); a
# module's layer is its own entry where it has one, else its room's. The spine (core/) is split: its
# ground (errors, bounded files, keys, the store, locks, records, names) is under everything, what a
# stage is and the plan sit over the spec, the machine and the rows they read, and the executor with
# its registry sits over the stages it runs.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__.py", "core"),  # the version; the spine's ground
    ("spec",),  # YAML -> JSON Schema -> rules -> frozen dataclasses
    ("machine",),  # the machine as data, the profile resolved from it, the memory estimate
    ("rows",),  # rows from files and the Hub, formats, templates, mixtures, contamination
    ("core/stage.py", "core/plan.py", "core/chain.py", "core/cleanup.py"),  # the Stage protocol, the plan, chains, gc
    ("models", "scoring"),  # base models loaded as the profile says; scoring answers
    ("report",),  # the run's report, its pictures, trackers
    ("stages",),  # the five stages: recipes over the rooms below
    ("core/execute.py", "core/recap.py", "core/follow.py"),  # the executor (the registry), what a run prints, a node joining node 0
    ("experiments", "containers"),  # sweeps and compare over runs; `run --image`
    ("serve",),  # the server over the store
    ("api.py",),  # the Python API
    ("cli.py",),  # the commands
    ("__main__.py",),  # `python -m runner`
)
# Functions radon grades D or worse (cyclomatic complexity over 20) that another change is rewriting
# (issue 22's typed outputs): exempt until it lands; a new one says why in a `# complex:` comment.
BEING_REWRITTEN: set[tuple[str, str]] = set()  # emptied: the typed outputs made the six dict walks short
MAP = ROOT / "docs" / "code-layout.md"
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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(path): path for path in modules()}


def import_graph() -> dict[str, dict[str, int]]:
    """Each module of runner/ -> {the runner module it imports: the line}, at any depth (function-local
    and TYPE_CHECKING imports count: they are dependencies too). `from a import b` is an edge to a.b where
    that is a module, else to a."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in NAMES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in NAMES else node.module
                           for a in node.names]
            else:
                continue
            edges |= {t: node.lineno for t in targets if t in NAMES and t != name and t not in edges}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set(stack[stack.index(v):])
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(_cycle_through(v, group, graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_through(start: str, group: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest path from `start` back to itself inside its group (breadth first)."""
    came: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w in group and w not in came:
                came[w] = v
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")


def layer_of(path: Path) -> tuple[int, str]:
    """(its layer in LAYERS, its room) for a module of runner/."""
    rel = path.relative_to(PACKAGE).as_posix()
    room = rel.split("/")[0]
    for entries in (rel, room):  # the module's own entry first, then its room's
        for layer, names in enumerate(LAYERS):
            if entries in names:
                return layer, room
    raise AssertionError(f"runner/{rel}: its room {room} is in no layer of LAYERS; add it where its imports put it")


def upward(graph: dict[str, dict[str, int]], place: dict[str, tuple[int, str]]) -> list[str]:
    """Imports that do not go down a layer, nor sideways within one room."""
    wrong = []
    for name, edges in graph.items():
        here, room = place[name]
        for target, line in edges.items():
            there, other = place[target]
            if there > here or (there == here and other != room):
                wrong.append(f"{name}:{line} imports {target} (layer {there} {other}, not below {here} {room})")
    return wrong


def test_imports_are_absolute() -> None:
    """The graph reads `runner.x.y` names: a relative import would be an edge it cannot see."""
    wrong = [f"{relative(path)}:{node.lineno}" for path in modules() for node in ast.walk(ast.parse(path.read_text("utf-8")))
             if isinstance(node, ast.ImportFrom) and node.level]
    assert not wrong, "write these imports as `from runner.<room>.<module> import ...`: " + ", ".join(wrong)


def test_only_the_registry_imports_the_stages() -> None:
    wrong = [f"{relative(path)}:{line} imports {name}" for path in modules()
             if STAGES not in path.parents and relative(path) != REGISTRY
             for name, line in imported(path) if name == "runner.stages" or name.startswith("runner.stages.")]
    assert not wrong, (f"only {REGISTRY} reaches runner/stages/ (through its registry); move what these need into "
                       "a room below the stages: " + "; ".join(wrong))


def test_no_stage_imports_another() -> None:
    wrong = []
    for path in modules():
        if STAGES not in path.parents or path.parent == STAGES:  # runner/stages/__init__.py is the registry
            continue
        own = path.relative_to(STAGES).parts[0]
        wrong += [f"{relative(path)}:{line} imports {name}" for name, line in imported(path)
                  if name.split(".")[:2] == ["runner", "stages"] and name.split(".")[2:3] != [own]]
    assert not wrong, ("a stage never imports another stage: move what two stages share into the room of its "
                       "subject below the stages (spec/slices.py, rows/, scoring/, models/): " + "; ".join(wrong))


def test_every_module_has_a_layer_and_imports_only_go_down() -> None:
    place = {name: layer_of(path) for name, path in NAMES.items()}
    wrong = upward(import_graph(), place)
    assert not wrong, ("move the imported piece down to a layer below its users, or, for a module of core/ (a room "
                       "split across layers), give it its own entry in LAYERS where its imports put it: "
                       + "; ".join(wrong))


def test_the_layer_check_sees_an_import_going_up() -> None:
    place = {"runner.rows.a": (3, "rows"), "runner.rows.b": (3, "rows"), "runner.spec.c": (1, "spec"),
             "runner.machine.d": (2, "machine")}
    graph = {"runner.rows.a": {"runner.rows.b": 1, "runner.spec.c": 2}, "runner.rows.b": {},
             "runner.spec.c": {"runner.machine.d": 3}, "runner.machine.d": {"runner.rows.a": 4}}
    assert upward(graph, place) == ["runner.spec.c:3 imports runner.machine.d (layer 2 machine, not below 1 spec)",
                                    "runner.machine.d:4 imports runner.rows.a (layer 3 rows, not below 2 machine)"]


def test_no_import_cycles() -> None:
    """Function-local imports included: a cycle hidden in a function still ties the modules together."""
    found = cycles(import_graph())
    assert not found, "import cycles (move the shared piece down): " + "; ".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"x": {"y": 1}, "y": {"x": 1, "z": 1}, "z": {"y": 1}}) == [["x", "y", "x"]]


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


def complex_functions(where: str, text: str) -> list[str]:
    """Functions (methods and closures too) radon grades D or worse (cyclomatic complexity over 20) in the
    source `text` of the file `where`, but those that say why in a `# complex:` comment on their first
    lines, or that are being rewritten."""
    from radon.complexity import cc_rank, cc_visit

    lines = text.splitlines()
    todo, wrong, seen = list(cc_visit(text)), [], set()
    while todo:
        block = todo.pop()
        todo += [*getattr(block, "methods", []), *getattr(block, "closures", []), *getattr(block, "inner_classes", [])]
        if (block.lineno, block.name) in seen:  # radon lists a method both alone and in its class
            continue
        seen.add((block.lineno, block.name))
        if hasattr(block, "methods") or block.complexity <= 20 or (where, block.name) in BEING_REWRITTEN:
            continue  # a class is graded by its methods
        if "# complex:" not in "\n".join(lines[block.lineno - 1 : block.lineno + 3]):
            wrong.append(f"{where}:{block.lineno} {block.name} grades {cc_rank(block.complexity)} "
                         f"({block.complexity} paths)")
    return wrong


def test_no_function_is_too_complex() -> None:
    """Radon's D (21-30 independent paths) or worse: split it into named steps, or say why in `# complex: ...`."""
    pytest.importorskip("radon", reason="radon comes with the lint extra (make test installs it)")
    wrong = [line for path in modules() for line in complex_functions(relative(path), path.read_text("utf-8"))]
    assert not wrong, "split these into named steps, or say why they must branch so (`# complex: ...`): " + "; ".join(wrong)


def test_the_complexity_check_sees_a_complex_function() -> None:
    pytest.importorskip("radon", reason="radon comes with the lint extra (make test installs it)")
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(21))
    plain = f"def f(x):\n{branches}    return -1\n"
    assert complex_functions("runner/probe.py", plain) == ["runner/probe.py:1 f grades D (22 paths)"]
    assert complex_functions("runner/probe.py", plain.replace("(x):", "(x):  # complex: a table, read as one")) == []
    method = "class C:\n" + "".join(f"    {line}\n" for line in plain.splitlines())
    assert complex_functions("runner/probe.py", method) == ["runner/probe.py:2 f grades D (22 paths)"]


def mapped(text: str) -> tuple[dict[str, str], set[str]]:
    """What the map in docs/code-layout.md lists: {module path: its line's description} and the folders,
    as paths from the repository root. The map is the first ``` block; two spaces of indent per level."""
    block = text.split("```")[1].strip("\n").splitlines()
    assert block and block[0] == "runner/", "the map starts with `runner/`"
    files: dict[str, str] = {}
    folders: set[str] = set()
    stack: list[str] = []
    for line in block:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        entry, _, about = line.strip().partition(" ")
        path = "/".join([*stack[:depth], entry.rstrip("/")])
        if entry.endswith("/"):
            stack[depth:] = [entry.rstrip("/")]
            folders.add(path)
        else:
            files[path] = about.strip()
    return files, folders


def map_line(path: Path) -> str:
    """A draft of the map's line for a module or folder: indented to its depth, described by the first
    sentence of its docstring (a folder's: its __init__.py's), the description at column 23 as above."""
    rel = path.relative_to(PACKAGE)
    source = path / "__init__.py" if path.is_dir() else path
    doc = (ast.get_docstring(ast.parse(source.read_text("utf-8"))) or "") if source.exists() else ""
    about = " ".join(doc.split("\n\n")[0].split(". ")[0].split()).rstrip(".")
    if len(about) > 100:  # a draft: the map's lines say it in a few words
        about = about[:100].rsplit(" ", 1)[0] + " ..."
    if not any(c.isupper() for c in about.split(" ")[0][1:]):  # "The ..." but not "OpenAI's ..."
        about = about[:1].lower() + about[1:]
    entry = "  " * len(rel.parts) + path.name + ("/" if path.is_dir() else "")
    return f"{entry.ljust(21)}  {about}   <- {relative(path)}"


def on_the_map(path: Path) -> bool:
    """Every module is on the map but a package's `__init__.py` that holds only its docstring (the
    folder's line says it)."""
    body = ast.parse(path.read_text("utf-8")).body
    return path.name != "__init__.py" or not all(isinstance(node, ast.Expr) for node in body)


def test_the_map_in_the_docs_matches_the_tree() -> None:
    files, folders = mapped(MAP.read_text("utf-8"))
    missing = sorted(path for path in modules() if on_the_map(path) and relative(path) not in files)
    new_folders = sorted({folder for path in missing for folder in path.relative_to(ROOT).parents
                          if folder.parts and folder.as_posix() not in folders})
    assert not missing, (f"add a line for each to the map in {relative(MAP)}, under its folder, saying what it holds "
                         "(drafted from its docstring; a new folder gets a line of its own):\n"
                         + "\n".join(map_line(ROOT / folder) for folder in new_folders)
                         + ("\n" if new_folders else "") + "\n".join(map_line(path) for path in missing))
    gone = sorted(path for path in [*files, *folders] if not (ROOT / path).exists())
    assert not gone, f"{relative(MAP)} lists what is not in the tree (moved or removed?): " + ", ".join(gone)
    unsaid = sorted(path for path, about in files.items() if not about)
    assert not unsaid, f"{relative(MAP)}: say in a few words what each holds: " + ", ".join(unsaid)


def test_the_map_reader_reads_folders_and_modules() -> None:
    files, folders = mapped("x\n```\nrunner/\n  cli.py   commands\n  core/   spine\n    keys.py  keys\n"
                            "  spec/\n    typed.py\n```\n")
    assert files == {"runner/cli.py": "commands", "runner/core/keys.py": "keys", "runner/spec/typed.py": ""}
    assert folders == {"runner", "runner/core", "runner/spec"}


def test_a_missing_modules_line_is_drafted_where_the_map_wants_it() -> None:
    line = map_line(PACKAGE / "core" / "keys.py")
    assert line.startswith("    keys.py") and line.index("stage keys") == 23 and line.endswith("<- runner/core/keys.py")
    assert map_line(PACKAGE / "serve").index("`runner serve`: ") == 23  # a folder: its __init__.py's docstring
    text = MAP.read_text("utf-8")
    assert "\n    keys.py            stage keys: " in text  # the map's own column


def test_the_registry_holds_the_stages_in_the_order_the_cli_names_them() -> None:
    from runner.core.execute import registered_stages
    from runner.core.stage import STAGE_NAMES

    assert tuple(stage.name for stage in registered_stages()) == STAGE_NAMES


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages under tests/): two files of one name in
    different folders fail collection of the whole run, though each folder passes on its own."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
