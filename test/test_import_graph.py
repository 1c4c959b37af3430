"""The project's import graph: no cycles (function-level imports included) and ``atmm`` stays
independent of ``valora`` (ARCHITECTURE.md, section 2)."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("valora", "atmm")
FORBIDDEN_IN_ATMM = ("valora", "exp_suite")

Edges = dict[str, dict[str, int]]  # importer -> {imported module: first line importing it}


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the given packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_statements(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(module name, name imported from it or None, line) for every import anywhere in the file
    (function bodies included), relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found += [(name, alias.name, node.lineno) for alias in node.names]
    return found


def project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` names (``pkg.mod.func`` -> ``pkg.mod``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(modules: dict[str, Path]) -> Edges:
    """``from pkg import sub`` (sub a submodule) is an edge to ``pkg.sub``, else to ``pkg``."""
    edges: Edges = {module: {} for module in modules}
    for module, path in modules.items():
        for name, imported, line in import_statements(module, path):
            submodule = f"{name}.{imported}" if imported else None
            target = submodule if submodule in modules else project_module(name, modules)
            if target is not None and target != module:
                edges[module].setdefault(target, line)
    return edges


def strongly_connected_components(edges: Edges) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, components in discovery order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
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
                    components.append(sorted(component))
    return components


def shortest_cycle(start: str, members: set[str], edges: Edges) -> list[str]:
    """A shortest path start -> ... -> start inside one component (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(edges[node]):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if succ in members and succ not in parent:
                parent[succ] = node
                queue.append(succ)
    raise AssertionError(f"{start} is on no cycle")


def describe(component: list[str], edges: Edges, modules: dict[str, Path]) -> str:
    cycle = shortest_cycle(component[0], set(component), edges)
    hops = [
        f"    {a} -> {b}  ({modules[a].relative_to(ROOT)}:{edges[a][b]})"
        for a, b in zip(cycle, cycle[1:])
    ]
    return f"  {len(component)} modules: {', '.join(component)}\n  e.g.\n" + "\n".join(hops)


def test_no_import_cycles_including_function_level_imports():
    modules = module_files()
    edges = import_graph(modules)
    cycles = [c for c in strongly_connected_components(edges) if len(c) > 1]
    report = "\n\n".join(describe(c, edges, modules) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) (strongly connected components):\n{report}"


def test_atmm_never_imports_valora_or_exp_suite():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in module_files(packages=("atmm",)).items()
        for name, _, line in import_statements(module, path)
        if name.split(".")[0] in FORBIDDEN_IN_ATMM
    ]
    assert not offenders, "atmm must import only torch + triton:\n" + "\n".join(offenders)


def test_the_graph_counts_function_level_relative_and_submodule_imports(tmp_path: Path):
    files = {
        "pkg/__init__.py": "from pkg import a\n",
        "pkg/a.py": "def f():\n    from .sub import b\n",
        "pkg/sub/__init__.py": "from ..a import f\n",
        "pkg/sub/b.py": "import pkg.sub\nfrom pkg.a import f\n",
        "pkg/c.py": "import os\nfrom pkg import b as _, a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = import_graph(module_files(tmp_path, ("pkg",)))
    assert edges == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.sub.b": 2},
        "pkg.sub": {"pkg.a": 1},
        "pkg.sub.b": {"pkg.sub": 1, "pkg.a": 2},
        "pkg.c": {"pkg": 2, "pkg.a": 2},
    }
    assert [c for c in strongly_connected_components(edges) if len(c) > 1] == [
        ["pkg.a", "pkg.sub", "pkg.sub.b"]
    ]


def test_the_control_plane_imports_no_torch():
    """request, sampling params, block manager, scheduler, orchestrator and the configs run
    without torch (their tests take milliseconds): importing them loads no torch."""
    import subprocess
    import sys

    code = (
        "import sys; import valora.scheduler, valora.block_manager, valora.request, "
        "valora.sampling_params, valora.orchestrator, valora.config; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
