"""The package's shape: no import cycles, no module importing another's private names,
and dependencies pointing one way (nothing below the API imports it or the CLI).

The graph is read from the source (every import statement, also those inside functions:
a lazy import only hides a cycle, it does not remove it).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reprlearn"


def modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package __init__)."""
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    return found


def imports(mods: dict) -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported module, names taken from it, line)] for imports inside the package."""
    graph = {}
    for name, (file, is_package) in mods.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        edges = []
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                if not target or not target.startswith("reprlearn"):
                    continue
                names = [a.name for a in node.names]
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                for sub in submodules:  # `from . import ops` imports the submodule, not its package
                    edges.append((sub, [], node.lineno))
                taken = [n for n in names if f"{target}.{n}" not in mods]
                if taken:
                    edges.append((target, taken, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("reprlearn")]
        graph[name] = [(t, n, line) for t, n, line in edges if t in mods and t != name]
    return graph


def find_cycle(graph: dict) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target, _, _ in graph[node]:
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": [("b", [], 1)], "b": [("c", [], 1)], "c": [("a", [], 1)], "d": [("a", [], 1)]}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    graph["c"] = []
    assert find_cycle(graph) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(imports(modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another():
    offenders = [f"{name}:{line} imports {', '.join(n for n in names if n.startswith('_'))} from {target}"
                 for name, edges in imports(modules()).items() for target, names, line in edges
                 if any(n.startswith("_") and not n.startswith("__") for n in names)]
    assert not offenders, "; ".join(offenders)


@pytest.mark.parametrize("upper", ["reprlearn.api", "reprlearn.cli"])
def test_nothing_below_the_api_imports_it(upper):
    """Only the CLI and the experiments (protocols on the public API) sit above it; the API itself
    must not import them (the cycle test catches that)."""
    allowed = {"reprlearn", "reprlearn.cli", "reprlearn.api"}  # the package's face and the CLI above it
    above = ("reprlearn.experiments",)  # protocols written on the public API, run by the CLI
    users = sorted(name for name, edges in imports(modules()).items()
                   if name not in allowed and not name.startswith(above) and any(t == upper for t, _, _ in edges))
    assert not users, f"{upper} is imported by {users}"
