"""``EnergyWarning`` and ``warn``: how the library says that a measurement is less exact than asked,
pointing at the user's line. A module of its own so that the meter's parts (``channel``) warn
without importing the meter; ``greencallbacks.meter`` re-exports both."""

from __future__ import annotations

import os
import sys
import warnings


class EnergyWarning(UserWarning):
    """A sensor was degraded or a measurement is less exact than asked; training goes on."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """Warn, pointing at the first caller outside this package (the user's or the framework's
    line), not at the library's internals."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    try:
        warnings.warn(message, EnergyWarning, stacklevel=level)
    except EnergyWarning:
        # A filter that makes warnings errors (python -W error, pytest's filterwarnings = error)
        # raised it here, in the middle of a run's start or a boundary: the run was never started
        # and the fit failed, records and all. Measuring never stops training: said on stderr.
        if sys.stderr is not None:
            print(f"{message} (EnergyWarning, shown here: warnings are errors in this process)", file=sys.stderr)
