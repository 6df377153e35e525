"""No import cycles among the project's modules. Imports inside functions count too: a lazy
import only hides a cycle until the module is imported from the other side first."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("animax_addon", "backend")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules (or packages) that module ``name`` imports anywhere in its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    done, path = set(), []

    def visit(module):
        path.append(module)
        for other in sorted(graph[module]):
            if other in path:
                return path[path.index(other):] + [other]
            if other not in done and (cycle := visit(other)):
                return cycle
        done.add(path.pop())
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_relative_and_lazy_imports():
    """Otherwise the test above would pass on a graph without edges."""
    graph = import_graph()
    assert "backend.worker.view_parallel_worker" in graph["backend.worker.command"]  # relative, inside main()
    view_parallel = graph["backend.worker.view_parallel_worker"]
    assert {"backend.worker.standalone", "backend.worker.pipeline_loading"} <= view_parallel
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
