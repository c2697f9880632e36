"""The width of the training API: ``Trainer`` is configured with policy objects, not with flat flags."""

import inspect

from valleys.training.trainer import Trainer

MAX_KEYWORDS = 8


def _keywords(fn) -> list[str]:
    """Parameters a caller sets by keyword: keyword-only ones, and positional ones that have a default."""
    params = inspect.signature(fn).parameters.values()
    return [
        p.name
        for p in params
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    ]


def test_trainer_takes_at_most_eight_keyword_arguments_and_no_catch_all():
    params = inspect.signature(Trainer.__init__).parameters.values()
    assert not [p.name for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    keywords = _keywords(Trainer.__init__)
    assert len(keywords) <= MAX_KEYWORDS, keywords
    # the flat aliases of the policies are gone
    removed = {"loss_fn", "input_fn", "target_fn", "likelihood", "eval_loaders", "eval_every", "checkpoint_path"}
    assert not removed & set(inspect.signature(Trainer.__init__).parameters)


def test_the_counter_counts():  # the width check above can fail: a signature of nine keywords is caught
    def wide(a, b=1, *, c, d=2, e=3, f=4, g=5, h=6, i=7, j=8):
        pass

    assert len(_keywords(wide)) == 9
