"""The training methods of the run layer, one module each; :mod:`valleys.app.registry` lists them."""

from .base import Method, Predictive, find_callback

__all__ = ["Method", "Predictive", "find_callback"]
