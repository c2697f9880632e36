"""The core imports without the extras (matplotlib, scikit-learn, mnist1d, tqdm); missing extras say what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from valleys.core.optional import NullBar, progress_bar, require

EXTRAS = ("matplotlib", "sklearn", "mnist1d", "tqdm")

# Makes the extras look uninstalled: any import of them raises ImportError.
BLOCK = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {EXTRAS!r}:
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_valleys_pulls_in_no_extra():
    # torch.hub imports tqdm itself when it is installed, so count only what valleys adds on top of torch.
    code = (
        "import sys, torch; before = set(sys.modules); import valleys; "
        f"print(sorted(m for m in {EXTRAS!r} if m in sys.modules and m not in before))"
    )
    assert _run(code) == "[]"


def test_core_works_without_the_extras():
    code = (
        BLOCK
        + """
import valleys, torch
from valleys.core.optional import progress_bar, require, NullBar
assert isinstance(progress_bar(total=3), NullBar)
ws = valleys.WeightSpace(torch.nn.Linear(2, 1))
for name, extra in (("matplotlib.pyplot", "plots"), ("sklearn.datasets", "data"), ("mnist1d.data", "data")):
    try:
        require(name, extra)
    except ImportError as e:
        assert f"pip install 'valleys[{extra}]'" in str(e), e
    else:
        raise AssertionError(name)
from valleys.zoo.data import load_dataset
try:
    load_dataset("digits")
except ImportError as e:
    assert "valleys[data]" in str(e)
else:
    raise AssertionError("digits loaded without scikit-learn")
try:
    import valleys.app.plots
except ImportError as e:
    assert "valleys[plots]" in str(e)
else:
    raise AssertionError("plots imported without matplotlib")
print("ok")
"""
    )
    assert _run(code) == "ok"


def test_require_and_progress_bar():
    assert require("json", "none").dumps([1]) == "[1]"
    with pytest.raises(ImportError, match=r"pip install 'valleys\[plots\]'"):
        require("surely_not_a_module_xyz", "plots")
    bar = NullBar(total=4)
    bar.update(2)
    bar.set_postfix(loss=1.0)
    bar.set_postfix({"a": 1})
    bar.close()
    assert bar.n == 2
    assert list(NullBar(range(3))) == [0, 1, 2]
    real = progress_bar(total=2, disable=True)
    real.update(1)
    real.set_postfix(x=1)
    real.close()
