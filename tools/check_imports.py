"""Check valleys' layering: a module imports only its own layer or lower ones, never another module's
private (underscore) names, and no two modules import each other, directly or through others (an import
cycle). Layers, lowest first: core, evaluation, methods, geometry, training, zoo, app. The package root
(``valleys/__init__.py``, ``__main__.py``) may import anything.

Cycles are looked for among module-level imports only (including those under ``if TYPE_CHECKING:``, which
tie the modules together for a reader and a type checker as much as at run time); an import inside a
function runs when the function does and does not count. Importing ``pkg.mod`` counts as an import of
``pkg.mod`` (and of ``pkg.mod.name`` when that is a module), not of the packages above it.

Usage: python tools/check_imports.py [src/valleys]   (exit status 1 and one line per violation)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = ("core", "evaluation", "methods", "geometry", "training", "zoo", "app")


def _target(module: str, level: int, pkg_parts: list[str]) -> list[str]:
    """Absolute dotted parts of an import ``from <level dots><module> import ...`` made inside ``pkg_parts``."""
    base = pkg_parts[: len(pkg_parts) - level + 1] if level else []
    return base + (module.split(".") if module else [])


def violations(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        parts = list(rel.with_suffix("").parts)  # e.g. ["valleys", "core", "weights"]
        pkg = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        if path.name == "__init__.py":
            pkg = parts[:-1]
        layer = parts[1] if len(parts) > 2 else None
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _target(node.module or "", node.level, pkg) if node.level else (node.module or "").split(".")
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    target = a.name.split(".")
                    if (
                        target[0] == "valleys"
                        and layer
                        and len(target) > 1
                        and target[1] in LAYERS
                        and LAYERS.index(target[1]) > LAYERS.index(layer)
                    ):
                        out.append(f"{rel}:{node.lineno}: layer {layer!r} imports higher layer {a.name}")
                continue
            else:
                continue
            if not target or target[0] != "valleys":
                continue
            if node.level == 0 or len(target) > 1:
                sub = target[1] if len(target) > 1 else None
                # `from . import x` inside a layer: x is a module of that layer
                if sub is None and names:
                    sub = None
                if layer and sub in LAYERS and LAYERS.index(sub) > LAYERS.index(layer):
                    out.append(f"{rel}:{node.lineno}: layer {layer!r} imports higher layer {'.'.join(target)}")
                if layer and sub is None and len(target) == 1 and any(n not in ("__version__",) for n in names):
                    out.append(f"{rel}:{node.lineno}: layer {layer!r} imports from the package root")
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    out.append(f"{rel}:{node.lineno}: imports private name {n} from {'.'.join(target)}")
    return out


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: everywhere but inside function bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at module level}``."""
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        is_pkg = path.name == "__init__.py"
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        for node in _module_level_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _target(node.module or "", node.level, pkg) if node.level else (node.module or "").split(".")
                dotted = ".".join(base)
                subs = [f"{dotted}.{a.name}" for a in node.names if f"{dotted}.{a.name}" in paths]
                # `from pkg import mod`: an import of the module; of `pkg` itself only for its own names
                targets = subs + ([dotted] if len(subs) < len(node.names) else [])
            graph[module].update(t for t in targets if t in paths and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected component of more than one module (Tarjan),
    as one cycle through it, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_one_cycle(graph, set(component)))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth first), closed by that module."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]  # pragma: no cover - a strongly connected component always has a cycle


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "src" / "valleys"
    bad = violations(root)
    bad += ["import cycle: " + " -> ".join(c) for c in cycles(import_graph(root))]
    for line in bad:
        print(line)
    print(f"{len(bad)} layering violations and import cycles in {root}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
