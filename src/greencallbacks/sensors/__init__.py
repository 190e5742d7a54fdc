"""Energy sources. Each module holds one kind of sensor; ``discover_sensors`` finds the usable ones.

The sensor modules load on first use, so ``import greencallbacks.sensors`` stays light (pynvml,
amdsmi and psutil are imported only inside the functions that need them).
"""

from __future__ import annotations

import importlib
from typing import Any

from greencallbacks.sensors.base import Discovery, Integrator, Kind, Method, Sensor, SensorError, Unavailable

_LAZY = {
    "discover_sensors": "greencallbacks.sensors.discover",
    "fallback_for": "greencallbacks.sensors.discover",
    "NvmlGpuSensor": "greencallbacks.sensors.nvml",
    "find_nvml_gpus": "greencallbacks.sensors.nvml",
    "AmdGpuSensor": "greencallbacks.sensors.amd",
    "find_amd_gpus": "greencallbacks.sensors.amd",
    "Apportioned": "greencallbacks.sensors.share",
    "RaplSensor": "greencallbacks.sensors.rapl",
    "find_rapl": "greencallbacks.sensors.rapl",
    "CpuEstimateSensor": "greencallbacks.sensors.estimate",
    "RamEstimateSensor": "greencallbacks.sensors.estimate",
    "ConstantPowerSensor": "greencallbacks.sensors.estimate",
}

__all__ = ["Discovery", "Integrator", "Kind", "Method", "Sensor", "SensorError", "Unavailable", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greencallbacks.sensors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
