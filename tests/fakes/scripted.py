"""A scripted sensor on a fake clock: its power is set by the test, its energy is exact."""

from __future__ import annotations

from greencallbacks.sensors.base import Kind, Method, Sensor, SensorError


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedSensor(Sensor):
    """Energy = integral of a piecewise-constant power on ``clock``; can be told to fail."""

    def __init__(self, name, clock, power_w=100.0, kind=Kind.GPU, method=Method.COUNTER, update_period_s=0.0):
        self.name, self.kind, self.method, self.scope = name, kind, method, f"scripted-{name}"
        self.update_period_s = update_period_s
        self.clock = clock
        self.power_w = power_w
        self._t = clock()
        self._energy = 0.0
        self.fail_with: Exception | None = None
        self.reads = 0
        self.polls = 0
        self.closed = False

    def set_power(self, power_w: float) -> None:
        self._advance()
        self.power_w = power_w

    def _advance(self) -> None:
        now = self.clock()
        self._energy += self.power_w * (now - self._t)
        self._t = now

    def energy_j(self) -> float:
        self.reads += 1
        if self.fail_with is not None:
            raise self.fail_with
        self._advance()
        return self._energy

    def poll(self) -> None:
        self.polls += 1
        if self.fail_with is not None:
            raise SensorError(str(self.fail_with))

    def close(self) -> None:
        self.closed = True
