"""What every training method of the run layer provides: :class:`Method` (settings, schedule, callbacks,
saved files, predictive) and :class:`Predictive` (how its posterior is evaluated).

The method modules import torch and the library inside their methods, so that the registry's metadata (names,
help, settings) loads without them: the command line's parser reads it before any command runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import InputError

if TYPE_CHECKING:  # pragma: no cover - torch and the library load when a method runs, not with the registry
    from torch import nn

    from ...evaluation.predict import Sample
    from ...training.schedules import Schedule
    from ...training.trainer import Callback
    from ..config import TrainConfig

__all__ = ["Method", "Predictive", "find_callback"]


@dataclass(frozen=True)
class Predictive:
    """How a run's predictive distribution is evaluated: ``p(y|x) = (1/S) sum_s p(y|x, w_s)`` over the
    samples ``w_s`` that ``draw()`` yields (called once per split: the same samples each time).

    Attributes:
        draw: a factory of the samples (state dicts or flat vectors, see :func:`valleys.evaluation.predict.bma`).
        needs_bn: recompute BatchNorm statistics for every sample (SWAG draws).
        ensemble: the samples are distinct networks worth scoring one by one (FGE snapshots, ensemble members).
    """

    draw: Callable[[], Iterable[Sample]]
    needs_bn: bool = False
    ensemble: bool = False


class Method:
    """One training method of ``valleys train``: override what differs from plain SGD.

    Class attributes:
        name: the ``--method`` value; help: its one-line ``--help`` text.
        settings: the settings dataclasses this method reads (fields made with :func:`valleys.app.options.setting`;
            several methods may share one). Their fields become :class:`valleys.app.config.TrainConfig` fields
            and ``valleys train`` flags, whose help names the methods that use them; a field marked
            ``exclusive`` is refused for the other methods.
        member: for ensembles of runs, the method each member is trained with (members go to ``member-<i>``).
        views: other methods whose predictive this run's files also hold (a SWAG run holds SWA's).
        saves: the files it writes into the run folder besides the common ones.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    settings: ClassVar[tuple[type, ...]] = ()
    member: ClassVar[str | None] = None
    views: ClassVar[tuple[str, ...]] = ()
    saves: ClassVar[tuple[str, ...]] = ()

    def resolve(self, cfg: TrainConfig) -> None:
        """Fill this method's defaults into ``cfg`` (a copy) and check what the settings' own rules cannot (their
        relations to each other and to the epochs); raise :class:`valleys.errors.InputError`."""

    def schedule(self, cfg: TrainConfig) -> Schedule:  # pragma: no cover - abstract
        """The learning-rate schedule of a resolved config."""
        raise NotImplementedError

    def callbacks(
        self, cfg: TrainConfig, model: nn.Module, *, bn_loader: Iterable, eval_loaders: Mapping[str, Iterable]
    ) -> list[Callback]:
        """The trainer callbacks that collect this method's weights (none for SGD)."""
        return []

    def save(self, out: Path, callbacks: list[Callback], header: dict[str, Any]) -> None:
        """Write what the callbacks collected into ``out`` (see :attr:`saves`)."""

    def predictive(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, samples: int) -> Predictive:
        """The run's samples for Bayesian model averaging; ``model`` holds ``model.safetensors``."""
        raise NotImplementedError  # pragma: no cover - abstract


def find_callback(callbacks: list[Callback], kind: type) -> Any:
    """The one callback of type ``kind`` in ``callbacks``."""
    found = [cb for cb in callbacks if isinstance(cb, kind)]
    if len(found) != 1:
        raise InputError(f"expected one {kind.__name__} among the callbacks, found {len(found)}")
    return found[0]
