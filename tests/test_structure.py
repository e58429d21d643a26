"""Layers the code keeps: no import cycle among nclab's modules (imports read with ast), and the
option schema validates without torch or numpy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nclab

SRC = Path(nclab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The nclab modules ``path`` imports, at module level or inside functions (a cycle through
    a deferred import is still two modules that need each other); ``if TYPE_CHECKING:``
    blocks do not count. Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for statement in node.orelse:
                    self.visit(statement)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    targets = set()
    for imported in found:
        parts = imported.split(".")
        targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module, and modules importing
    themselves (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the edges from a package's __init__ to its own modules and from a
    module to the packages above it (Python runs those __init__ files first anyway; they are
    not a design choice)."""
    out = {}
    for module, targets in graph.items():
        out[module] = {
            t for t in targets if not t.startswith(module + ".") and not module.startswith(t + ".")
        }
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_real_imports():
    graph = import_graph()
    assert "nclab.runs.files" in graph["nclab.runs.lifecycle"]
    assert "nclab.executors.base" in graph["nclab.executors.local"]
    assert "nclab.report" in graph["nclab.compare"]  # inside a function
    assert "nclab.executors" in graph["nclab.compare"]


def test_no_import_cycle_among_nclabs_modules():
    cycles = _cycles(_package_edges(import_graph()))
    assert cycles == [], f"modules that import each other: {cycles}"


def test_validating_options_imports_neither_torch_nor_numpy():
    code = (
        "import sys\n"
        "from nclab.config import TrainConfig\n"
        "TrainConfig(dataset='synthetic:k=3,d=4', loss='ls', smoothing=0.1).validate()\n"
        "TrainConfig(dataset='fashion-mnist', model='resnet18', loss='focal')\n"
        "for bad in ({'loss': 'hinge'}, {'loss': 'ce', 'smoothing': 0.1},"
        " {'loss': 'ls', 'smoothing': 1.0}):\n"
        "    try:\n"
        "        TrainConfig(**bad)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{bad} accepted')\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
