"""``import dpr_pg`` stays light: public names load on first use, and keep their meaning."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import dpr_pg


def test_import_dpr_pg_loads_neither_sqlalchemy_nor_torch() -> None:
    probe = "import sys, dpr_pg; print(sorted(m for m in ('sqlalchemy', 'alembic', 'torch', 'transformers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_every_public_name_resolves() -> None:
    missing = [name for name in dpr_pg.__all__ if getattr(dpr_pg, name, None) is None]
    assert missing == []


def test_all_lists_every_lazily_loaded_name_once() -> None:
    assert len(dpr_pg.__all__) == len(set(dpr_pg.__all__))
    assert set(dpr_pg.__all__) == set(dpr_pg._EXPORTS)


def test_a_public_name_is_the_object_its_module_defines() -> None:
    import importlib

    for name, module in dpr_pg._EXPORTS.items():
        assert getattr(dpr_pg, name) is getattr(importlib.import_module(module), name), name


def test_submodules_are_attributes_of_the_package_and_unknown_names_are_not() -> None:
    probe = ("import dpr_pg; print(dpr_pg.config.DEFAULT_DIM, dpr_pg.errors.DprPgError.__name__, "
             "callable(dpr_pg.aio.ask), hasattr(dpr_pg, 'no_such_name'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["768", "DprPgError", "True", "False"]


def test_a_function_keeps_its_name_when_its_module_of_the_same_name_is_imported() -> None:
    probe = ("import dpr_pg, dpr_pg.search.planner, dpr_pg.db.index, dpr_pg.db.doctor, dpr_pg.evaluation.evaluate; "
             "print([callable(f) and f.__name__ for f in (dpr_pg.search, dpr_pg.ingest, dpr_pg.doctor, dpr_pg.evaluate)])")
    names = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert names.strip() == "['search', 'ingest', 'doctor', 'evaluate']"


# The layout's rules, read from the source: no import cycle among dpr_pg's modules, and imports at
# the top of a module, where its dependencies show. A function may import only a heavy optional
# dependency, or anything else with a "# lazy: <reason>" note on the line. cli.py imports inside its
# commands by design (its docstring says why), and TYPE_CHECKING blocks never run.
PACKAGE = Path(dpr_pg.__file__).parent
HEAVY_OPTIONAL = {"torch", "transformers", "onnxruntime", "ray"}
LAZY_BY_DESIGN = {"dpr_pg.cli"}
LAZY_NOTE = re.compile(r"#\s*lazy:\s*\S")


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement runs, by absolute name (for ``from m import a``: m.a when a is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".")[: len(module.split(".")) - (0 if is_package else 1) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST) -> tuple[list[ast.Import | ast.ImportFrom], list[ast.Import | ast.ImportFrom]]:
    """(imports that run when the module is imported, imports inside functions)."""
    top: list[ast.Import | ast.ImportFrom] = []
    inner: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).append(child)
            else:
                walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return top, inner


def _dpr_pg_modules_run_by(target: str) -> set[str]:
    """``target`` and the packages above it: importing a.b.c runs a/__init__ and a/b/__init__ first."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    parts = target.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(MODULES)


def _import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, (path, is_package) in MODULES.items():
        top, _ = _imports(ast.parse(path.read_text(encoding="utf-8")))
        runs = set()
        for node in top:
            for target in _targets(module, is_package, node):
                if target.startswith("dpr_pg."):
                    runs |= _dpr_pg_modules_run_by(target)
        graph[module] = {m for m in runs if m != module and not module.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_finds_a_cycle_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_dpr_pg_modules_import_each_other_in_a_cycle() -> None:
    graph = _import_graph()
    # Importing dpr_pg.ingest.loader runs dpr_pg/ingest/__init__.py first: that counts too.
    assert graph["dpr_pg.db.partition_ops"] >= {"dpr_pg.db.revision", "dpr_pg.ingest.loader", "dpr_pg.ingest"}
    assert _cycles(graph) == []


def test_functions_import_only_heavy_optional_dependencies_unless_a_lazy_note_says_why() -> None:
    unexplained = []
    for module, (path, is_package) in MODULES.items():
        if module in LAZY_BY_DESIGN:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        _, inner = _imports(ast.parse("\n".join(lines)))
        for node in inner:
            heavy = all(target.split(".")[0] in HEAVY_OPTIONAL for target in _targets(module, is_package, node))
            noted = any(LAZY_NOTE.search(line) for line in lines[node.lineno - 1:node.end_lineno])
            if not heavy and not noted:
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                unexplained.append(f"{where}: {lines[node.lineno - 1].strip()}")
    assert unexplained == []


def test_cli_says_why_its_commands_import_inside_their_functions() -> None:
    assert "function-level" in (ast.get_docstring(ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))) or "")
