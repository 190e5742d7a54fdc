"""greencallbacks: what each epoch of training cost in energy and CO2eq, in the logger you already use.

The core (meter, sensors, carbon, tracker, records) is framework-neutral. The adapters live in
``greencallbacks.lightning``, ``greencallbacks.keras`` and ``greencallbacks.hf`` and are imported
only when asked for: ``import greencallbacks`` imports no framework and no ``pynvml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greencallbacks._version import __version__

if TYPE_CHECKING:
    from greencallbacks.budget import Budget
    from greencallbacks.carbon import Carbon, Intensity
    from greencallbacks.carbon_aware import CarbonAwarePause
    from greencallbacks.meter import Measurement, Meter
    from greencallbacks.records import Record, read_records
    from greencallbacks.sensors.discover import discover_sensors
    from greencallbacks.tracker import Tracker

_LAZY = {
    "Budget": "greencallbacks.budget",
    "CarbonAwarePause": "greencallbacks.carbon_aware",
    "Carbon": "greencallbacks.carbon",
    "Intensity": "greencallbacks.carbon",
    "Meter": "greencallbacks.meter",
    "Measurement": "greencallbacks.meter",
    "EnergyWarning": "greencallbacks.meter",
    "Record": "greencallbacks.records",
    "read_records": "greencallbacks.records",
    "discover_sensors": "greencallbacks.sensors.discover",
    "Tracker": "greencallbacks.tracker",
    "METRIC_STEMS": "greencallbacks.tracker",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Lazy so that `import greencallbacks` stays fast and imports nothing heavy.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'greencallbacks' has no attribute {name!r}")
