"""The package's layering, checked by tools/check_imports.py (and the checker itself on a bad tree)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports
_spec.loader.exec_module(check_imports)


def test_no_module_imports_a_higher_layer_or_a_private_name():
    assert check_imports.violations(ROOT / "src" / "valleys") == []


def test_no_import_cycles():
    assert check_imports.cycles(check_imports.import_graph(ROOT / "src" / "valleys")) == []


def test_checker_finds_cycles_at_module_level_only(tmp_path):
    pkg = tmp_path / "valleys"
    (pkg / "app" / "methods").mkdir(parents=True)
    for init in (pkg, pkg / "app", pkg / "app" / "methods"):
        (init / "__init__.py").write_text("")
    # runs -> methods.base (module level) -> runs (under TYPE_CHECKING: still module level): a cycle
    (pkg / "app" / "runs.py").write_text("from .methods.base import Method\n")
    (pkg / "app" / "methods" / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..runs import TrainConfig\nMethod = 1\n"
    )
    # a -> b at module level, b -> a inside a function: no cycle; c -> d -> e -> c: one cycle of three
    (pkg / "app" / "a.py").write_text("from . import b\n")
    (pkg / "app" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "app" / "c.py").write_text("import valleys.app.d\n")
    (pkg / "app" / "d.py").write_text("from .e import x\n")
    (pkg / "app" / "e.py").write_text("class K:\n    from .c import y\nx = 1\n")
    graph = check_imports.import_graph(pkg)
    assert graph["valleys.app.a"] == {"valleys.app.b"} and graph["valleys.app.b"] == set()
    assert check_imports.cycles(graph) == [
        ["valleys.app.c", "valleys.app.d", "valleys.app.e", "valleys.app.c"],
        ["valleys.app.methods.base", "valleys.app.runs", "valleys.app.methods.base"],
    ]
    assert check_imports.main(["check_imports", str(pkg)]) == 1


def test_checker_reports_upward_and_private_imports(tmp_path):
    pkg = tmp_path / "valleys"
    for sub in ("core", "app"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .app.cli import main\n")  # the root may import anything
    (pkg / "app" / "cli.py").write_text("from ..core.weights import WeightSpace\nmain = 1\n")
    (pkg / "core" / "weights.py").write_text(
        "from ..app.cli import main\nfrom .batches import _private\nimport valleys.app.cli\nWeightSpace = 1\n"
    )
    bad = check_imports.violations(pkg)
    assert len(bad) == 3, bad
    assert any("imports higher layer valleys.app.cli" in b and ":1:" in b for b in bad)
    assert any("private name _private" in b for b in bad)
    assert any(":3:" in b for b in bad)


def test_each_layer_is_a_subpackage_and_the_root_keeps_the_public_names():
    import valleys

    for layer in check_imports.LAYERS:
        assert (ROOT / "src" / "valleys" / layer / "__init__.py").is_file()
    for name in (
        "WeightSpace",
        "recompute_bn",
        "SWA",
        "SWAG",
        "bma",
        "evaluate",
        "Trainer",
        "Curve",
        "CurveModel",
        "Plane",
        "evaluate_points",
        "LossFunction",
        "lanczos",
        "FGECallback",
        "SWACallback",
    ):
        assert hasattr(valleys, name), name
