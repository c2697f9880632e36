"""Size of valleys' public API and a few habits, read from the source with ``ast`` (nothing is imported).

Prints two Markdown tables:

1. the widest public signatures: public module-level functions and public classes' ``__init__`` (for a
   ``@dataclass`` without its own ``__init__``, the generated one: its fields) in ``src/valleys``, whose module
   path and name have no component starting with ``_`` (``__init__.py`` counts as public). Width = the
   keyword-only parameters plus the positional-or-keyword parameters that have a default, i.e. the knobs a
   caller may set by name;
2. per area (``core``, ``evaluation``, ..., and the top-level modules): annotations that mention ``Any``,
   ``# type: ignore`` comments, and imports inside function bodies.

Usage: python tools/api_stats.py [SRC_ROOT] [--top N]    (SRC_ROOT defaults to this checkout's src/valleys)
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tokenize
from collections import Counter
from pathlib import Path

_TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore")


def _is_dataclass(cls: ast.ClassDef) -> tuple[bool, bool]:
    """(is a dataclass, with ``kw_only=True``)."""
    for dec in cls.decorator_list:
        call = dec if isinstance(dec, ast.Call) else None
        target = call.func if call else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            kw_only = bool(
                call
                and any(
                    k.arg == "kw_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in call.keywords
                )
            )
            return True, kw_only
    return False, False


def _function_width(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = fn.args
    # `defaults` belong to the last positional parameters; count those that are positional-or-keyword.
    return len(args.kwonlyargs) + min(len(args.defaults), len(args.args))


def _dataclass_width(cls: ast.ClassDef, kw_only: bool) -> int:
    width = 0
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        ann = ast.unparse(stmt.annotation)
        if ann.startswith(("ClassVar", "typing.ClassVar", "InitVar")) or ann == "KW_ONLY":
            continue
        if kw_only or stmt.value is not None:
            width += 1
    return width


def _public_module(rel: Path) -> bool:
    return not any(part.startswith("_") and part != "__init__.py" for part in rel.parts)


def widest_signatures(root: Path) -> list[tuple[int, str]]:
    """(width, ``module.name``) for every public function and class constructor under ``root``."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if not _public_module(rel.relative_to(rel.parts[0])):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                rows.append((_function_width(node), f"{module}.{node.name}"))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                init = next(
                    (s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
                    None,
                )
                if init is not None:
                    rows.append((_function_width(init), f"{module}.{node.name}"))
                else:
                    is_dc, kw_only = _is_dataclass(node)
                    if is_dc:
                        rows.append((_dataclass_width(node, kw_only), f"{module}.{node.name}"))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return rows


def _annotations(tree: ast.AST) -> list[ast.expr]:
    out: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    out.append(arg.annotation)
            if node.returns is not None:
                out.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            out.append(node.annotation)
    return out


def _mentions_any(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):  # a string annotation
        try:
            expr = ast.parse(expr.value, mode="eval").body
        except SyntaxError:
            return False
    return any(
        (isinstance(n, ast.Name) and n.id == "Any") or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(expr)
    )


def _function_imports(tree: ast.AST) -> int:
    count = 0

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                count += 1
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return count


def _type_ignores(source: str) -> int:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return sum(1 for t in tokens if t.type == tokenize.COMMENT and _TYPE_IGNORE.search(t.string))


def habits(root: Path) -> dict[str, Counter[str]]:
    """Per area: ``any`` (annotations mentioning Any), ``ignore`` (type: ignore comments), ``imports``
    (imports inside function bodies)."""
    areas: dict[str, Counter[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        area = rel.parts[0] if len(rel.parts) > 1 else "(top level)"
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        c = areas.setdefault(area, Counter())
        c["any"] += sum(_mentions_any(a) for a in _annotations(tree))
        c["ignore"] += _type_ignores(source)
        c["imports"] += _function_imports(tree)
    return areas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent / "src" / "valleys"
    )
    parser.add_argument("--top", type=int, default=10)
    ns = parser.parse_args(argv)
    root: Path = ns.root.resolve()

    print(f"### The {ns.top} widest public signatures\n")
    print("| # | callable | keyword-only + defaulted params |")
    print("|---:|---|---:|")
    for i, (width, name) in enumerate(widest_signatures(root)[: ns.top], 1):
        print(f"| {i} | `{name}` | {width} |")

    areas = habits(root)
    print("\n### Habits per area\n")
    print("| area | `Any` annotations | `type: ignore` | imports in functions |")
    print("|---|---:|---:|---:|")
    total: Counter[str] = Counter()
    for area in sorted(areas):
        c = areas[area]
        total.update(c)
        print(f"| {area} | {c['any']} | {c['ignore']} | {c['imports']} |")
    print(f"| **total** | **{total['any']}** | **{total['ignore']}** | **{total['imports']}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
