"""A scripted sensor on a fake clock: its power is set by the test, its energy is exact."""

from __future__ import annotations

import math
import threading
from typing import Callable

from greencallbacks.sensors.base import Kind, Method, Sensor, SensorError


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


PowerProfile = float | Callable[[float], float]


class PiecewisePower:
    """A simulated device's power over fake time: a constant or a function of time per piece.

    Shared by the fake GPUs of ``fake_pynvml`` and ``fake_amdsmi``; the first piece extends to the
    past, so averages over the last second exist at once.
    """

    def __init__(self, clock: FakeClock, power_w: PowerProfile) -> None:
        self.clock = clock
        self._pieces: list[tuple[float, PowerProfile]] = [(-math.inf, power_w)]

    def set_power(self, power_w: PowerProfile) -> None:
        """From now on the device draws ``power_w`` (watts, or a function of fake time)."""
        self._pieces.append((self.clock(), power_w))

    def power_at(self, t: float) -> float:
        profile = [p for start, p in self._pieces if start <= t][-1]
        return profile(t) if callable(profile) else float(profile)

    def energy_between_j(self, t0: float, t1: float) -> float:
        """The exact integral of power over [t0, t1] (Simpson's rule is exact for the linear ramps used)."""
        total = 0.0
        bounds = [p[0] for p in self._pieces[1:]] + [math.inf]
        for (start, profile), end in zip(self._pieces, bounds):
            a, b = max(start, t0), min(end, t1)
            if b <= a:
                continue
            if callable(profile):
                total += (b - a) / 6.0 * (profile(a) + 4.0 * profile((a + b) / 2.0) + profile(b))
            else:
                total += float(profile) * (b - a)
        return total


def read_while_polling(sensor: Sensor, clock: FakeClock, steps: int, step_s: float) -> list[float]:
    """``sensor.energy_j()`` after each of ``steps`` clock advances, while another thread calls
    ``sensor.poll()`` without pause: boundary reads racing the meter's background thread."""
    stop = threading.Event()

    def background() -> None:
        while not stop.is_set():
            sensor.poll()

    thread = threading.Thread(target=background)
    thread.start()
    try:
        readings = []
        for _ in range(steps):
            clock.advance(step_s)
            readings.append(sensor.energy_j())
    finally:
        stop.set()
        thread.join()
    return readings


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


def polling(meter, clock: FakeClock, step_s: float = 0.01):
    """A function advancing ``clock`` by its seconds while stepping ``meter``'s reader thread (made
    manual) every ``step_s``, as the real thread polls."""
    meter._poller.manual = True

    def run(seconds: float) -> None:
        for _ in range(round(seconds / step_s)):
            clock.advance(step_s)
            meter._poller.step()

    return run
