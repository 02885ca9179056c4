"""The package's layout: dependencies point one way (shared/DESIGN.md, "Package layout").

Reference: the import statements themselves, read with ``ast`` from the source files, at module
level and inside functions, relative imports resolved. Nothing is imported, so a cycle that Python
tolerates at run time only because one side imports inside a function is still found. An import
of a package counts as an import of its ``__init__`` module only (not of every submodule), so a
package that re-exports lazily does not appear to import what it exports.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FORMATS = "gdlab.data.formats"
# What a format reader may build on: the helpers shared by the readers, the Dataset type, the
# split helpers and the errors; never another format, the dispatch or the presets.
FORMAT_DEPENDENCIES = {f"{FORMATS}.common", "gdlab.data.dataset", "gdlab.data.split", "gdlab.errors"}


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `src`, by dotted name (a package by its own name)."""
    files = {}
    for path in sorted((src / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules among `modules` that `module` (the source file `path`) imports anywhere.

    ``from p import y`` imports the submodule p.y when there is one, else the module p.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in modules and target != module)
    return found


def import_graph(src: Path = SRC, package: str = "gdlab") -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = module_files(src, package)
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles [a, b, ..., a] among modules that import each other: within each strongly
    connected component of more than one module, the shortest cycle through each of its modules
    (each cycle once, starting at its first module by name)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = set()
    for component in (c for c in components if len(c) > 1):
        for node in component:
            cycle = shortest_cycle(graph, node, component)[:-1]
            first = cycle.index(min(cycle))
            cycles.add((*cycle[first:], *cycle[:first], min(cycle)))
    return sorted(map(list, cycles))


def shortest_cycle(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """The shortest path start -> ... -> start within `component` (breadth first)."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node] & component):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_imports_itself_through_others():
    cycles = import_cycles(import_graph())
    assert not cycles, f"import cycles (break each by moving what both sides need below them):\n{describe(cycles)}"


def test_format_readers_build_only_on_the_shared_helpers():
    graph = import_graph()
    readers = [m for m in graph if m.startswith(FORMATS + ".") and m != f"{FORMATS}.common"]
    assert readers, f"no format modules found under {FORMATS}"
    wrong = {m: sorted(graph[m] - FORMAT_DEPENDENCIES) for m in readers if graph[m] - FORMAT_DEPENDENCIES}
    assert not wrong, f"format readers importing more than {sorted(FORMAT_DEPENDENCIES)}: {wrong}"
    assert graph[f"{FORMATS}.common"] <= FORMAT_DEPENDENCIES - {f"{FORMATS}.common"}


def test_the_checker_finds_function_level_and_relative_cycles(tmp_path):
    """Reference: a package written here with known edges: a cycle closed by an import inside a
    function and a relative import, and a lazily re-exporting __init__ that is no cycle."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("def __getattr__(name):\n    import importlib\n")
    (package / "a.py").write_text("from pkg import b\nimport pkg\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import x\nfrom pkg.sub import d\n")
    (package / "sub" / "d.py").write_text("import pkg.sub\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b", "pkg"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a", "pkg.sub.d"},
        "pkg.sub.d": {"pkg.sub"},
    }
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
