"""Optional dependencies: the core needs only torch, numpy and safetensors.

Plotting (matplotlib), the embedded datasets (mnist1d, scikit-learn) and progress bars (tqdm) are extras.
:func:`require` imports one of them or raises an :class:`ImportError` that names the extra to install;
:func:`progress_bar` gives a tqdm bar on a terminal, a :class:`PlainBar` (a plain line every 10% or 30 s, no
carriage returns) when the output is a log file or pipe, or a silent stand-in when tqdm is missing.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

__all__ = ["require", "progress_bar", "NullBar", "PlainBar"]


def require(module_name: str, extra: str) -> ModuleType:
    """Import ``module_name`` (e.g. ``"matplotlib.pyplot"``) or raise
    :class:`valleys.errors.MissingExtraError` (an ``ImportError``) naming ``valleys[extra]``."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        from ..errors import MissingExtraError

        top = module_name.split(".")[0]
        raise MissingExtraError(
            f"{top} is needed for this but is not installed; install it with: pip install 'valleys[{extra}]'"
        ) from None


class Progress(Protocol):
    """What the library calls on a progress bar it is given (a tqdm bar, :class:`NullBar`, :class:`PlainBar`)."""

    def update(self, n: float = 1) -> object: ...


class NullBar:
    """What :func:`progress_bar` returns without tqdm: accepts the calls a bar gets and shows nothing."""

    def __init__(self, iterable: Any = None, **kwargs: Any) -> None:
        self.iterable = iterable
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial", 0)

    def __iter__(self):
        for item in self.iterable if self.iterable is not None else ():
            self.n += 1
            yield item

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class PlainBar(NullBar):
    """What :func:`progress_bar` returns when its stream is not a terminal (a CI log, ``nohup``, ``make demo >
    log``): instead of redrawing one line with carriage returns (hundreds of kilobytes of log in a long run),
    it writes a plain line each time another ``step`` of the total (10%) is done, or ``interval`` seconds
    (30, or the environment variable ``VALLEYS_PROGRESS_INTERVAL``) after the last line, and a last line on
    ``close()`` if work was done since. Same methods as a tqdm bar.
    """

    def __init__(
        self,
        iterable: Any = None,
        *,
        file: Any = None,
        desc: str | None = None,
        unit: str = "it",
        step: float = 0.1,
        interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        if interval is None:  # VALLEYS_PROGRESS_INTERVAL: seconds between lines (30), for logs that want more
            try:
                interval = float(os.environ.get("VALLEYS_PROGRESS_INTERVAL", "30"))
            except ValueError:
                interval = 30.0
        if kwargs.get("total") is None and iterable is not None and hasattr(iterable, "__len__"):
            kwargs["total"] = len(iterable)
        super().__init__(iterable, **kwargs)
        self.file, self.desc, self.unit, self.step, self.interval = file, desc, unit, step, interval
        self.postfix = ""
        self.start = self._last_time = time.monotonic()
        self._last_n = self.n
        self._next = self._threshold(self.n)
        self._closed = False

    def _threshold(self, n: float) -> float:
        """The next count at which a line is due: the next multiple of ``step * total`` above ``n``."""
        if not self.total:
            return float("inf")
        chunk = max(self.step * self.total, 1)
        return (int(n // chunk) + 1) * chunk

    def __iter__(self):
        try:
            for item in self.iterable if self.iterable is not None else ():
                yield item
                self.update(1)
        finally:  # also when the loop body raises: the line is finished before the error is printed
            self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n >= self._next or now - self._last_time >= self.interval:
            self._line(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        done = (
            f"{self.n:g}/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else f"{self.n:g} {self.unit}"
        )
        text = f"{self.desc}: {done}" if self.desc else done
        text += f", {elapsed:.0f}s elapsed"
        if self.postfix:
            text += f", {self.postfix}"
        stream = self.file if self.file is not None else sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is not worth an error
            pass
        self._last_time, self._last_n = now, self.n
        self._next = self._threshold(self.n)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._line(time.monotonic())


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A progress bar on ``kwargs.get("file", sys.stderr)`` with tqdm's arguments (total, desc, unit, leave,
    disable, initial, ...): a ``tqdm.auto.tqdm`` bar on a terminal (or in a notebook), a :class:`PlainBar` when
    the stream is not a terminal (plain lines, no carriage returns), a :class:`NullBar` when ``disable`` is set
    or tqdm is not installed on a terminal (``pip install 'valleys[progress]'``)."""
    if kwargs.get("disable"):
        return NullBar(iterable, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream) and "ipykernel" not in sys.modules:
        plain = {k: v for k, v in kwargs.items() if k in ("total", "initial", "desc", "unit", "file")}
        return PlainBar(iterable, **plain)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return NullBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
