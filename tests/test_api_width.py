"""The public entry points stay narrow: at most 8 keyword arguments each (positional essentials such as the
model, the weights and the loaders do not count), and no ``**kwargs`` that would hide more.

Add a callable to :data:`ENTRY_POINTS` to hold it to the same rule."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from valleys.evaluation.engine import evaluate_many
from valleys.evaluation.grid import evaluate_points
from valleys.evaluation.predict import bma, evaluate
from valleys.geometry.paths import evaluate_path
from valleys.training.trainer import Trainer

MAX_KEYWORDS = 8

#: the entry points held to the rule (extend the list for new ones)
ENTRY_POINTS: list[Callable] = [bma, evaluate, evaluate_points, evaluate_path, evaluate_many, Trainer.__init__]

#: the flat aliases 1.0 removed: none of the entry points may take them again
REMOVED = {
    "input_fn",
    "target_fn",
    "likelihood",
    "loss_fn",
    "bn_loader",
    "bn_batches",
    "stale_bn_ok",
    "eval_loaders",
    "eval_every",
    "checkpoint_path",
    "checkpoint_every",
    "header",
}


def keyword_count(fn: Callable) -> int:
    """Keyword-only parameters plus positional-or-keyword parameters that have a default."""
    params = inspect.signature(fn).parameters.values()
    return sum(
        1
        for p in params
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    )


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_entry_point_has_at_most_8_keywords_and_no_var_keyword(fn: Callable) -> None:
    params = inspect.signature(fn).parameters.values()
    assert not [p.name for p in params if p.kind is p.VAR_KEYWORD], f"{fn.__qualname__} takes **kwargs"
    count = keyword_count(fn)
    assert count <= MAX_KEYWORDS, f"{fn.__qualname__} has {count} keyword parameters (at most {MAX_KEYWORDS})"
    assert not REMOVED & set(inspect.signature(fn).parameters), f"{fn.__qualname__} takes a removed alias"


def test_the_count_sees_keywords_defaults_and_var_keyword() -> None:
    """The rule's own oracle: a signature with known counts."""

    def wide(a, b=1, *args, c, d=2, **kwargs):
        pass

    assert keyword_count(wide) == 3  # b (a default), c and d (keyword-only); a, *args and **kwargs do not count
    assert any(p.kind is p.VAR_KEYWORD for p in inspect.signature(wide).parameters.values())

    def nine(a, b=1, *, c, d=2, e=3, f=4, g=5, h=6, i=7, j=8):
        pass

    assert keyword_count(nine) == 9 > MAX_KEYWORDS  # a signature one keyword too wide is caught
