"""The import graph of sgm/, read from the source with ast (imports inside functions included): no cycle,
and the floors keep their order (files and helpers below models, models below callbacks and diagnostics)."""
import ast
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sgm")
# (importer prefix, imported prefixes it must not use)
FLOORS = [
    (("sgm.util", "sgm.rng", "sgm.config", "sgm.compat", "sgm.io"),
     ("sgm.modules", "sgm.models", "sgm.data", "sgm.metrics", "sgm.callbacks", "sgm.diagnostics", "sgm.evaluation")),
    (("sgm.modules", "sgm.data", "sgm.metrics"), ("sgm.models", "sgm.callbacks", "sgm.diagnostics", "sgm.evaluation")),
    (("sgm.models",), ("sgm.callbacks", "sgm.diagnostics", "sgm.evaluation")),
    (("sgm.evaluation", "sgm.diagnostics"), ("sgm.callbacks",)),
]


def module_files() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[module.removesuffix(".__init__")] = path
    return out


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """module -> the sgm modules it imports (a name imported from a package counts as that submodule)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.startswith("sgm")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if base == "sgm" or base.startswith("sgm."):
                    deps |= {known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base)
                             for a in node.names}
        graph[module] = {d for d in deps if d and d != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_sgm():
    modules = module_files()
    assert len(modules) > 50 and "sgm.models.dmd" in modules and "sgm.diagnostics.registry" in modules
    assert cycles(import_graph(modules)) == []


@pytest.mark.parametrize("importers, forbidden", FLOORS)
def test_floors(importers, forbidden):
    graph = import_graph(module_files())
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(importers)
                   for d in deps if d.startswith(forbidden))
    assert wrong == []


def test_every_module_imports():
    for module in sorted(module_files()):
        importlib.import_module(module)
