"""Optional dependencies: the core needs only torch, numpy and safetensors.

Plotting (matplotlib), the embedded datasets (mnist1d, scikit-learn) and progress bars (tqdm) are extras.
:func:`require` imports one of them or raises an :class:`ImportError` that names the extra to install;
:func:`progress_bar` gives a tqdm bar, or a silent stand-in with the same methods when tqdm is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["require", "progress_bar", "NullBar"]


def require(module_name: str, extra: str) -> ModuleType:
    """Import ``module_name`` (e.g. ``"matplotlib.pyplot"``) or raise ImportError naming ``valleys[extra]``."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        top = module_name.split(".")[0]
        raise ImportError(
            f"{top} is needed for this but is not installed; install it with: pip install 'valleys[{extra}]'"
        ) from e


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


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto.tqdm`` bar with ``kwargs`` (total, desc, unit, leave, disable, ...), or a :class:`NullBar`
    when tqdm is not installed (``pip install 'valleys[progress]'``)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return NullBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
