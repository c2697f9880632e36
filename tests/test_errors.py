"""One exception hierarchy: every error valleys raises on purpose derives from ``valleys.errors.ValleysError``
(and from the built-in that fits), and no module raises a bare built-in instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import valleys
from valleys import errors
from valleys.evaluation.predict import bma
from valleys.methods.averaging import SWA

SRC = Path(valleys.__file__).parent
BUILTINS = {"ValueError", "TypeError", "RuntimeError", "IndexError", "KeyError", "FileNotFoundError"}


def bare_raises(root: Path) -> list[str]:
    """``path:line name`` of every ``raise <built-in>(...)`` under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in BUILTINS:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {func.id}")
    return out


def test_no_module_raises_a_bare_builtin() -> None:
    assert bare_raises(SRC) == []


def test_the_scan_finds_a_bare_raise(tmp_path: Path) -> None:  # the scan above can fail
    (tmp_path / "m.py").write_text("def f():\n    raise ValueError('x')\n")
    global SRC  # noqa: PLW0603 - the scan reads the module-level root
    old, SRC = SRC, tmp_path
    try:
        assert bare_raises(tmp_path) == ["m.py:2 ValueError"]
    finally:
        SRC = old


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_derives_from_valleys_error(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.ValleysError)
    assert getattr(valleys, name) is cls  # exported from the package root too


def test_bad_input_is_also_a_value_error() -> None:
    for cls in (errors.InputError, errors.ConfigError, errors.CheckpointError, errors.MissingBNLoaderError):
        assert issubclass(cls, ValueError)
    assert issubclass(errors.BatchFormatError, TypeError) and issubclass(errors.InputTypeError, TypeError)
    assert issubclass(errors.DatasetNotFoundError, FileNotFoundError)


def test_errors_raised_by_the_library_carry_their_class() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=4)
    with pytest.raises(errors.NoWeightsError):
        bma(model, [], data)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with pytest.raises(errors.MissingBNLoaderError, match="BatchNorm"):
        bma(model, [flat], data)
    swa = SWA(model, moments=False)
    with pytest.raises(errors.NotCollectedError):
        _ = swa.mean
    swa.collect(model)
    with pytest.raises(errors.UsageError, match="moments=True"):
        _ = swa.variance


def test_wrong_kinds_of_argument_are_refused_by_name_before_any_work() -> None:
    """A loss where the adapter goes, a sample that is neither a vector nor a state dict, a list where the
    loaders' mapping goes, a dict or a path where a policy goes, a number where the schedule goes: each gets an
    ``InputTypeError`` naming what to pass, not an ``AttributeError`` from deep inside."""
    from valleys.evaluation.grid import evaluate_points
    from valleys.evaluation.predict import evaluate
    from valleys.training.trainer import Trainer

    model = nn.Sequential(nn.Linear(3, 2))
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=4)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with pytest.raises(errors.InputTypeError, match=r"ModelAdapter\(loss=fn\)"):
        evaluate(model, data, adapter=nn.functional.cross_entropy)  # type: ignore[arg-type]
    with pytest.raises(errors.InputTypeError, match="weight sample 0 is a int"):
        bma(model, [3], data, bn="keep")  # type: ignore[list-item]
    with pytest.raises(errors.InputTypeError, match="loaders must be a mapping"):
        evaluate_points(model, [flat], [data], bn="keep")  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, what in (
        ({"evaluation": {"test": data}}, "evaluation must be an instance of EvaluationPolicy"),
        ({"checkpoint": "run/c.safetensors"}, "checkpoint must be an instance of CheckpointPolicy"),
        ({"schedule": 0.1}, "schedule must be a Schedule"),
    ):
        with pytest.raises(errors.InputTypeError, match=what):
            Trainer(model, opt, data, 1, **kwargs)  # type: ignore[arg-type]
