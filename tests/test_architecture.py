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
