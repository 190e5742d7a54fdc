"""Energy sources. Each module holds one kind of sensor; ``discover_sensors`` finds the usable ones."""

from greencallbacks.sensors.base import Discovery, Integrator, Kind, Method, Sensor, SensorError, Unavailable

__all__ = ["Discovery", "Integrator", "Kind", "Method", "Sensor", "SensorError", "Unavailable"]
