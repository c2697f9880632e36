"""Settings dataclasses that describe themselves: the flags generated from them and the checks of an object
made in Python follow the same rules."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import pytest

from valleys.app.options import add_flags, check_settings, setting
from valleys.errors import InputError


@dataclass
class Example:
    run: str = setting(help="a folder", positional=True, check="path")
    steps: int = setting(21, "points per ray", check="at_least_two")
    rate: float = setting(0.5, "a rate", check="fraction")
    scale: float | None = setting(None, "a scale (default: none)", check="positive", metavar="S")
    values: list[float] = setting([1.0], "candidates", check="positive", nargs="+")
    mode: str = setting("keep", "a mode", choices=("keep", "recompute"))
    norm: bool = setting(True, "normalise (the default)", negation="do not normalise")
    sure: bool = setting(True, "the only kind for now", required=True)
    seed: int = setting(0, "a seed", check="seed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    add_flags(p, Example)
    return p


def test_generated_flags_parse_with_the_fields_defaults():
    args = _parser().parse_args(["r", "--sure"])
    assert vars(args) == {
        "run": "r",
        "steps": 21,
        "rate": 0.5,
        "scale": None,
        "values": [1.0],
        "mode": "keep",
        "norm": True,
        "sure": True,
        "seed": 0,
    }
    args = _parser().parse_args(["r", "--sure", "--no-norm", "--values", "2", "3.5", "--scale", "1e-3"])
    assert (args.norm, args.values, args.scale) == (False, [2.0, 3.5], 1e-3)
    assert Example(**vars(args)).values == [2.0, 3.5]
    assert Example("a").values is not Example("b").values  # a list default is copied per object


@pytest.mark.parametrize(
    "argv,message",
    [
        (["r", "--sure", "--steps", "1"], "must be at least 2, got 1"),
        (["r", "--sure", "--rate", "1"], "must be a finite number in [0, 1), got 1"),
        (["r", "--sure", "--scale", "nan"], "must be finite and positive, got nan"),
        (["r", "--sure", "--values", "1", "-2"], "must be finite and positive, got -2"),
        (["r", "--sure", "--mode", "x"], "invalid choice: 'x'"),
        (["r", "--sure", "--seed", str(2**63)], "must be an integer in [0, 2**63 - 1]"),
        (["", "--sure"], "must be a path, got an empty string"),
    ],
)
def test_generated_flags_refuse_what_the_rules_refuse(argv, message):
    with pytest.raises(argparse.ArgumentError, match=re.escape(message)):
        _parser().parse_args(argv)


def test_a_required_switch_must_be_given():
    with pytest.raises(SystemExit):
        _parser().parse_args(["r"])


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(steps=1), "steps must be at least 2, got 1"),
        (dict(rate=1.0), "rate must be a finite number in [0, 1), got 1.0"),
        (dict(scale=0.0), "scale must be finite and positive, got 0.0"),
        (dict(values=[1.0, float("inf")]), "values must be finite and positive, got inf"),
        (dict(mode="x"), "mode must be one of keep, recompute, got 'x'"),
        (dict(seed=-1), "seed must be an integer in [0, 2**63 - 1], got -1"),
    ],
)
def test_objects_made_in_python_obey_the_same_rules(kw, message):
    check_settings(Example("r"))  # the defaults pass
    with pytest.raises(InputError) as e:
        check_settings(Example("r", **kw))
    assert str(e.value) == message
