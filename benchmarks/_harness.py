"""Shared by the benchmark scripts: run ``main`` and never fail the build (a measurement, not a test)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable


def run_measurement(main: Callable[[], object]) -> None:
    """Call ``main``; print any exception's traceback, then exit 0 either way."""
    try:
        main()
    except Exception:  # report, but never fail the build
        traceback.print_exc()
    sys.exit(0)
