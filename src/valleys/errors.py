"""Every error valleys raises on bad input or a failed run, in one place.

Each class derives from :class:`ValleysError`, and also from the built-in exception that fits (``ValueError``
where the input was bad, ``TypeError`` for a batch of the wrong kind, ``FileNotFoundError`` for missing data,
``RuntimeError`` for a call in the wrong order), so ``except ValueError`` keeps working for callers that know
only the built-ins. ``str(error)`` is the one line the command line prints after ``valleys <command>: error:``;
callers choose what to do by the class, never by matching the message.

This module imports nothing: every layer of the package may raise these.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ValleysError",
    "InputError",
    "InputTypeError",
    "NonFinitePredictionError",
    "ConfigError",
    "CheckpointError",
    "WeightSpaceError",
    "EmptyLoaderError",
    "MissingBNLoaderError",
    "NoWeightsError",
    "SubspaceError",
    "UCIFormatError",
    "MissingLabelsError",
    "UserCodeError",
    "BatchFormatError",
    "AdapterError",
    "NotCollectedError",
    "UsageError",
    "EvaluationError",
    "SamplerError",
    "DistributedSetupError",
    "DatasetNotFoundError",
    "MissingFileError",
    "MissingExtraError",
    "OutputFolderError",
    "TrainingDiverged",
]


class ValleysError(Exception):
    """Base of every error valleys raises on purpose; ``str(e)`` is one line that says what to change."""


# ------------------------------------------------------------------------------------------- bad input
class InputError(ValleysError, ValueError):
    """An argument, setting or value that cannot be used (wrong range, shape, rank, unknown option, NaN)."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong kind (a loss where the optimizer goes, a loader without a length, ...)."""


class NonFinitePredictionError(InputError):
    """A network's predictions hold NaN or infinite values (its weights, or an average's BatchNorm
    statistics, diverged); the trainer turns it into :class:`TrainingDiverged`."""


class ConfigError(InputError):
    """A ``config.json`` (or another settings file) is unreadable, not an object, or holds a bad setting;
    the message names the file."""


class CheckpointError(InputError):
    """A checkpoint file is truncated, not a valleys checkpoint, or from another model."""


class WeightSpaceError(InputError):
    """A weight vector or module does not fit the weight space it was used with."""


class EmptyLoaderError(InputError):
    """A data loader yielded no batches."""


class MissingBNLoaderError(InputError):
    """Weight vectors were given for a BatchNorm model without a loader to recompute its statistics on."""


class NoWeightsError(InputError):
    """An evaluation over weight vectors was given none."""


class SubspaceError(InputError):
    """A subspace cannot be built from what was given (rank, shapes, non-finite values)."""


class UCIFormatError(InputError):
    """A UCI-layout folder with missing or inconsistent files."""


class MissingLabelsError(InputError):
    """A dataset's examples carry no class labels to split on."""


class UserCodeError(InputError):
    """A reference to the user's code (``--model``, ``--data``, ``--loss``: ``module.path:name`` or
    ``file.py:name``) that cannot be imported, is not callable, raises, or returns the wrong kind of object."""


class BatchFormatError(ValleysError, TypeError):
    """A batch whose input or target cannot be found without an explicit adapter setting."""


class AdapterError(BatchFormatError):
    """The adapter cannot map a batch or an output; the message names the setting to pass."""


# ------------------------------------------------------------------------------------ wrong order, runs
class NotCollectedError(ValleysError, RuntimeError):
    """An average or a sample was asked for before any weights were collected."""


class UsageError(ValleysError, RuntimeError):
    """A call the object cannot answer in the state it was built in (e.g. variances of an average kept without
    moments)."""


class EvaluationError(ValleysError, RuntimeError):
    """An evaluation failed part-way for a reason the message names, with the setting that avoids it."""


class SamplerError(ValleysError, RuntimeError):
    """A sampler could not run (non-finite likelihood at the start, a chain that never accepts, ...)."""


class DistributedSetupError(ValleysError, RuntimeError):
    """The processes of a distributed run disagree (world size, devices, shards); the message names the rank."""


class DatasetNotFoundError(ValleysError, FileNotFoundError):
    """A dataset's files are not where valleys looks for them."""


class MissingFileError(ValleysError, FileNotFoundError):
    """A file or folder a command reads does not exist (a run folder, its ``config.json``, a demo's runs)."""


class MissingExtraError(ValleysError, ImportError):
    """An optional dependency is not installed; the message names the ``valleys[extra]`` to install."""


class OutputFolderError(ValleysError, FileExistsError):
    """An output folder may not be written: it holds other output, or it cannot be a folder."""


class TrainingDiverged(ValleysError, FloatingPointError):
    """The loss became NaN or infinite; the message says where and which checkpoint is the last good one.

    ``checkpoint`` is that checkpoint's path; the message names it only while it exists (a command that
    removes its unfinished folder after the failure then says that nothing was kept)."""

    def __init__(self, message: str, checkpoint: str | Path | None = None, advice: str = "") -> None:
        super().__init__(message)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.advice = advice

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        if self.checkpoint is not None or self.advice:
            last = (
                f"the last good checkpoint is {self.checkpoint}"
                if self.checkpoint is not None and self.checkpoint.exists()
                else "no checkpoint was kept"
            )
            text = f"{text}; {last}." + (f" {self.advice}" if self.advice else "")
        return text
