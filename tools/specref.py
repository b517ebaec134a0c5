"""The spec reference (docs/spec-reference.md), generated from the JSON Schema's descriptions.

    python tools/specref.py            write docs/spec-reference.md (make docs)
    python tools/specref.py --check    exit 1 when the committed page differs from the schema

The schema (runner/schemas/spec.schema.json) is the single source of validation, defaults and docs:
each field is described once, there. Standard library only, so it runs anywhere the repo is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "runner" / "schemas" / "spec.schema.json"
PAGE = ROOT / "docs" / "spec-reference.md"
COMMAND = "make docs"  # or: python tools/specref.py

HEADER = f"""\
# Spec reference

<!-- Generated from runner/schemas/spec.schema.json by `{COMMAND}` (tools/specref.py): do not edit by hand. -->

Every field a spec may hold, from the JSON Schema's own descriptions (the schema validates specs and
supplies their defaults; this page is made from it). Paths are dotted; `[]` is an item of a list.
Paths inside a spec are relative to the spec file. [How to write a spec](spec.md) says the rest.
"""

Field = tuple[str, dict[str, Any]]


def fields(node: dict[str, Any], path: str) -> Iterator[Field]:
    """Every field below `node`, depth first in the schema's own order: (dotted path, its schema). A
    list of objects is a field of its own too (`path[]`), its items' fields below it."""
    for name, child in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        yield here, child
        yield from fields(child, here)
        yield from _items(child, here)
    for branch in node.get("oneOf", []):  # a field that is a scalar or an object (none today; cheap to keep)
        yield from fields(branch, path)


def _items(node: dict[str, Any], path: str) -> Iterator[Field]:
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield f"{path}[]", items
        yield from fields(items, f"{path}[]")


def rows(section: str, node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """A section's rows: (path, schema, note). An object whose fields repeat an earlier object's (a
    mixture source's `fields` are `data.fields`) is one row saying so, not its fields again."""
    if "properties" not in node and "items" not in node:
        yield section, node, ""
        return
    every = [*fields(node, section), *_items(node, section)]
    canonical: dict[str, str] = {}  # an object's fields -> where they are shown: the plainest path
    for path, child in every:
        if "properties" in child:
            shape = json.dumps(child["properties"], sort_keys=True)
            if shape not in canonical or path.count("[]") < canonical[shape].count("[]"):
                canonical[shape] = path
    collapsed: list[str] = []
    for path, child in every:
        if any(path.startswith((done + ".", done + "[")) for done in collapsed):
            continue
        home = canonical.get(json.dumps(child["properties"], sort_keys=True)) if "properties" in child else None
        if home is not None and home != path:
            collapsed.append(path)
            yield path, child, f" Its fields are those of `{home}`."
            continue
        yield path, child, ""


def type_of(node: dict[str, Any]) -> str:
    """`string`, `integer or null`, `list of string`, `object or list of object`..."""
    if "oneOf" in node:
        return " or ".join(type_of(branch) for branch in node["oneOf"])
    if "const" in node:
        return json.dumps(node["const"])
    kinds = node.get("type", "any")
    names = []
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind == "array":
            names.append(f"list of {type_of(node['items'])}" if isinstance(node.get("items"), dict) else "list")
        else:
            names.append(kind)
    return " or ".join(names)


def allowed(node: dict[str, Any]) -> str:
    """The values the schema admits beyond the type: an enum, bounds, a pattern, list lengths."""
    parts = []
    if "enum" in node:
        parts.append(", ".join(f"`{json.dumps(v) if v is None else v}`" for v in node["enum"]))
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    if "minItems" in node or "maxItems" in node:
        parts.append(f"{node.get('minItems', 0)} to {node.get('maxItems', 'any')} items")
    if "minLength" in node:
        parts.append(f"at least {node['minLength']} characters")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    items = node.get("items")
    if isinstance(items, dict) and "enum" in items:
        parts.append("each " + allowed(items))
    for branch in node.get("oneOf", []):
        if allowed(branch):
            parts.append(allowed(branch))
    return "; ".join(parts)


def default_of(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(schema: dict[str, Any]) -> str:
    """The whole page: one table per top-level section, a row per field."""
    out = [HEADER]
    required = set(schema.get("required", []))
    for section, node in schema["properties"].items():
        out.append(f"\n## `{section}`\n")
        out.append(("Required. " if section in required else "") + _cell(node.get("description", "")) + "\n")
        out.append("| field | type | default | allowed | description |")
        out.append("| --- | --- | --- | --- | --- |")
        for path, child, note in rows(section, node):
            needed = " (required)" if _is_required(schema, path) else ""
            out.append(f"| `{path}`{needed} | {_cell(type_of(child))} | {_cell(default_of(child))} | "
                       f"{_cell(allowed(child))} | {_cell(child.get('description', '') + note)} |")
    return "\n".join(out) + "\n"


def _is_required(schema: dict[str, Any], path: str) -> bool:
    """Whether the object holding `path` lists it as required."""
    node = schema
    *parents, name = path.replace("[]", ".[]").split(".")
    for part in parents:
        node = node.get("items", {}) if part == "[]" else node.get("properties", {}).get(part, {})
    return name in node.get("required", [])


def main(argv: list[str]) -> int:
    page = render(json.loads(SCHEMA.read_text(encoding="utf-8")))
    if argv[1:] == ["--check"]:
        if PAGE.is_file() and PAGE.read_text(encoding="utf-8") == page:
            return 0
        print(f"{PAGE.relative_to(ROOT)} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
        return 1
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
