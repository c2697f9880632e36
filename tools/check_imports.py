"""Check valleys' layering: a module imports only its own layer or lower ones, never another module's
private (underscore) names. Layers, lowest first: core, evaluation, methods, geometry, training, zoo, app.
The package root (``valleys/__init__.py``, ``__main__.py``) may import anything.

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


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "src" / "valleys"
    bad = violations(root)
    for line in bad:
        print(line)
    print(f"{len(bad)} layering violations in {root}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
