"""The command line starts without torch, and ``import valleys`` stays cheap with every public name intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_building_the_parser_and_printing_help_imports_no_torch():
    r = _python(
        "import sys, contextlib, io\n"
        "from valleys.app.cli import _parser, main\n"
        "p = _parser()\n"
        "for argv in (['--help'], ['train', '--help'], ['sharpness', '--help'], ['demo', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH' if bad else 'NO-TORCH', bad[:3])\n"
    )
    assert r.returncode == 0, r.stderr
    assert "NO-TORCH" in r.stdout, r.stdout


def test_version_flag_prints_the_version_without_torch():
    r = _python(
        "import sys\nfrom valleys.app.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
        "print('torch' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    first, last = r.stdout.splitlines()[0], r.stdout.splitlines()[-1]
    assert first.startswith("valleys ") and last == "False"


def test_import_valleys_is_lazy_and_keeps_every_public_name():
    r = _python(
        "import sys, valleys\nprint('torch' in sys.modules)\n"
        "missing = [n for n in valleys.__all__ if not hasattr(valleys, n)]\n"
        "from valleys import SWA, SWAG, lanczos, __version__\n"
        "print(missing, SWA.__module__, set(valleys.__all__) <= set(dir(valleys)))"
    )
    assert r.returncode == 0, r.stderr
    lazy, rest = r.stdout.splitlines()
    assert lazy == "False"
    assert rest == "[] valleys.methods.averaging True"


def test_unknown_attribute_still_raises():
    import pytest

    import valleys

    with pytest.raises(AttributeError):
        valleys.no_such_name  # noqa: B018


def test_parser_tables_match_the_library():
    from valleys.app.config import RunSettings, TrainConfig
    from valleys.app.registry import method_help
    from valleys.zoo import catalog, data, models, regression

    assert data.DATASETS is catalog.DATASETS and models.MODELS is catalog.MODELS
    assert regression.REGRESSION_DATASETS is catalog.REGRESSION_DATASETS
    assert issubclass(TrainConfig, RunSettings) and TrainConfig() == TrainConfig(**vars(RunSettings()))
    assert list(method_help()) == ["sgd", "swa", "swag", "swag-diag", "fge", "ensemble", "multiswag"]
