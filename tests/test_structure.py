"""The shape of the code: no import cycle, no module reaching into another's private names, and
each table of store.db declared by one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "syncdb"


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def imports(tree: ast.Module) -> list[tuple[str, list[str], bool]]:
    """(syncdb module imported, names taken from it, at run time) for every import, at any depth.

    Imports under ``if TYPE_CHECKING:`` are for type checkers only and never run.
    """
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                   for stmt in block.body for node in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in typing_only
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import a, b
                found.append((node.module.split(".")[0], [a.name for a in node.names], runs))
            elif node.level == 1:  # from . import x, y
                found += [(a.name, [], runs) for a in node.names]
            elif node.module and node.module.startswith("syncdb."):
                found.append((node.module.split(".")[1], [a.name for a in node.names], runs))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], [], runs) for a in node.names if a.name.startswith("syncdb.")]
    return found


def test_no_module_imports_another_modules_private_names():
    """``_`` alone is gettext's public name (i18n._), not a private one."""
    offences = [f"{name} imports {private} from {other}" for name, tree in modules().items()
                for other, names, _ in imports(tree) for private in names
                if private.startswith("_") and not private.startswith("__") and private != "_"]
    assert offences == []


def test_no_module_reaches_into_another_modules_private_names():
    """``bundles._stand_ins(conn)`` is as private as ``from .bundles import _stand_ins``."""
    offences = []
    for name, tree in modules().items():
        imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.level == 1 and not node.module for alias in node.names}
        offences += [f"{name} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in imported and node.attr.startswith("_") and not node.attr.startswith("__") and node.attr != "_"]
    assert offences == []


def test_the_modules_import_each_other_without_a_cycle():
    """Function-level imports count too: one made only to dodge a cycle is still a cycle."""
    trees = modules()
    graph = {name: sorted({other for other, _, runs in imports(tree) if runs and other in trees and other != name})
             for name, tree in trees.items()}
    cycles = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_each_table_of_the_store_is_declared_by_one_module():
    """migrations.py makes store.db from what each owner declares; no other module declares those tables."""
    from syncdb import migrations

    owned = {table: owner for owner, ddl in migrations.OWNED_TABLES.items()
             for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)}
    assert {"conflicts", "ledger", "communities", "received", "outbound", "skipped", "frontier"} <= set(owned)
    declared: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", path.read_text(encoding="utf-8")):
            declared.setdefault(table, set()).add(path.stem)
    assert {table: declared[table] for table in owned} == {table: {owner} for table, owner in owned.items()}


def test_the_design_note_names_every_module():
    note = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [path.name for path in sorted(PACKAGE.glob("*.py"))
               if path.name != "__init__.py" and not path.name.startswith("sample") and f"`{path.name}`" not in note]
    assert missing == []
