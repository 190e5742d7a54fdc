"""The one small interface every energy source implements.

A sensor reports *cumulative* joules since it was created. It never resets; the meter takes
differences. Sensors that need regular attention (integrating sampled power, catching counter
wraparound) say how often in ``poll_interval_s`` and are polled by the meter's one background
thread through ``poll``. Boundary reads go through ``energy_j``.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class Method(str, enum.Enum):
    """How a sensor knows its energy."""

    COUNTER = "counter"  # a hardware energy counter (NVML total energy, RAPL)
    SAMPLED = "sampled"  # instantaneous power sampled and integrated by the background thread
    ESTIMATED = "estimated"  # a model: TDP x utilisation, W/GB, a declared constant
    # A stated share of a measured device that other work also uses (a MIG instance of an NVIDIA
    # GPU, one die of a two-die AMD board): the device is measured, the share is a rule.
    APPORTIONED = "apportioned"

    def __str__(self) -> str:
        return self.value


class Kind(str, enum.Enum):
    """What part of the machine a sensor covers."""

    GPU = "gpu"
    CPU = "cpu"
    DRAM = "dram"  # RAM measured by a counter (RAPL dram domain)
    RAM = "ram"  # RAM estimated
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


class SensorError(RuntimeError):
    """A sensor could not be read. The meter catches it and degrades that sensor, at once, or,
    where ``transient`` (a fault the device recovers from: an NVML timeout), when it persists.
    ``unsupported``: the binding said the device or driver cannot do that (NOT_SUPPORTED), which
    retrying will not change.

    ``stalled_since`` and ``watts``: the sensor answered without counting since that time (its
    clock's; an energy accumulator standing still) while the device drew that power: what replaces
    it bridges that span at that power."""

    def __init__(self, message: str, *, transient: bool = False, unsupported: bool = False,
                 stalled_since: float | None = None, watts: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.unsupported = unsupported
        self.stalled_since = stalled_since
        self.watts = watts


class Sensor:
    """Base class. Subclasses set the attributes and implement ``energy_j``.

    Attributes:
        name: unique, stable and readable, e.g. ``"gpu0"``, ``"cpu-package-0"``, ``"ram"``.
        kind: which part of the machine (``Kind``).
        scope: what exactly it measures, e.g. a GPU UUID, ``"package-0"``, ``"host"``.
        method: ``Method``.
        poll_interval_s: how often the background thread must call ``poll``; ``None`` if never.
        update_period_s: the counter's update period (quantisation of short windows); 0 if none.
        note: a short caveat to carry into records, e.g. ``"1-second averaged power"``; "" if none.
        source: where the energy comes from, in words a paper can use after "energy from" (or
            "estimated from"), e.g. ``"NVML energy counters"``, ``"TDP x CPU time"``; "" if unsaid.
        relative_uncertainty: a stated error as a fraction of the energy read, for sensors whose
            error grows with the energy rather than sits at a window's boundaries (apportioned
            shares); the meter adds it to the boundary error. 0 if none.
        off_thread: ``energy_j`` is slow (milliseconds, like NVML's energy counter): the meter
            reads it on its background thread every ``update_period_s`` and estimates each
            boundary from the latest read, so the training thread never waits for it.
        samples_when_read: ``energy_j`` adds a power sample to the integral it returns (sampled
            power, the RAM estimate): a read moves what later reads give, so live figures
            (``Meter.peek``) give the value of the last poll rather than read it.
    """

    name: str = "sensor"
    kind: Kind = Kind.OTHER
    scope: str = ""
    method: Method = Method.ESTIMATED
    poll_interval_s: float | None = None
    update_period_s: float = 0.0
    note: str = ""
    source: str = ""
    relative_uncertainty: float = 0.0
    off_thread: bool = False
    samples_when_read: bool = False

    def energy_j(self) -> float:
        """Cumulative joules since this sensor was created. Raises ``SensorError`` on failure."""
        raise NotImplementedError

    def exact_energy_j(self) -> float:
        """``energy_j`` at a run's first and last boundary (``Meter.snapshot(exact=True)``), for a
        sensor whose boundary read leaves out what it reads fully only off the training thread
        (the CPU estimate's child processes). The same as ``energy_j`` unless overridden."""
        return self.energy_j()

    def poll(self) -> float | None:
        """Called from the background thread every ``poll_interval_s``. Must be cheap.

        Returns the cumulative joules it read (as ``energy_j`` would), or None: where the sensor
        fails later, the meter keeps the energy up to its last poll rather than its last boundary.
        """
        return None

    def power_now_w(self) -> float | None:
        """Instantaneous power if it is cheap to read (microseconds), else ``None``. The meter
        uses it to carry an ``off_thread`` counter forward between two reads."""
        return None

    def close(self) -> None:
        """Release resources. Idempotent."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": str(self.kind), "scope": self.scope, "method": str(self.method)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scope={self.scope!r}, method={self.method.value!r})"


@dataclass(frozen=True)
class Unavailable:
    """A sensor that was looked for and could not be used, with the reason and the fix."""

    name: str
    kind: Kind
    reason: str
    fix: str = ""


@dataclass
class Discovery:
    """What ``discover_sensors`` found: the usable sensors and the ones it could not use."""

    sensors: list[Sensor] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)


class Counter:
    """A hardware energy counter's raw reads turned into a continuous total: one owner for the
    rule every counter sensor shares (NVML, amdsmi, RAPL).

    A read below the previous one is a wrap (a counter of known width: ``wrap_at``) or a restart
    from 0 (a driver reload); either is taken only where the energy it implies fits the time since
    the last read taken at ``max_power_w``. A read that fits neither, or a forward step too large for
    that time, is a misread (amdsmi's accumulator has been seen to step back by a few hundred joules;
    a glitch of a few kJ read as a restart billed a whole counter's value, a megajoule, to one epoch):
    it is skipped with one warning and the total is held until a read fits again. Where the counter
    itself went back by a little, the energy until it is above its old value again is not counted;
    where one read spiked high and the next came back, nothing is lost.

    A low read that a restart could give (0 J, one read) is taken as one, but the series before it
    is kept: a later read that continues that series, not the restart's, proves the low read a
    misread, and the total goes on from the series (rather than hold until the time since the
    restart allowed the counter's whole value, a megajoule, as one step). A read at or past
    ``wrap_at`` proves the counter wider than that: it wraps no more there.

    ``add(raw)`` returns the total in joules; ``raw`` in units of ``unit_j`` joules.
    """

    # A read within this of the previous one is taken as long as it fits `max_power_w` over the time
    # between them plus this: reads are stamped when they return, the counter updated earlier.
    SLACK_S = 0.5

    def __init__(self, first_raw: int, *, unit_j: float, max_power_w: float, wrap_at: int | None = None,
                 clock: Callable[[], float] = time.monotonic, name: str = "sensor") -> None:
        self.unit_j = unit_j
        self.max_power_w = max_power_w
        self.wrap_at = wrap_at if wrap_at and first_raw < wrap_at else None
        self.name = name
        self._clock = clock
        self._last_raw = first_raw
        self._last_t = clock()
        self._total = 0  # in counts, an int: no rounding however long the run
        self._before_restart: tuple[int, float, int] | None = None  # (raw, t, total) of the series a restart cut
        self._said = False

    @property
    def total_j(self) -> float:
        return self._total * self.unit_j

    def _most(self, since: float, now: float) -> float:
        """The most counts the device can add between ``since`` and ``now``."""
        return self.max_power_w * (max(0.0, now - since) + self.SLACK_S) / self.unit_j

    def add(self, raw: int) -> float:
        now = self._clock()
        if self.wrap_at is not None and raw >= self.wrap_at:
            self.wrap_at = None
        before = self._before_restart
        if before is not None and before[0] <= raw and raw - before[0] <= self._most(before[1], now) and (
            raw < self._last_raw or raw - self._last_raw > self._most(self._last_t, now)
        ):
            # The series before the "restart" goes on: that low read was a misread.
            self._say_misread(raw, now - self._last_t)
            self._last_raw, self._last_t, self._total = before
            self._before_restart = None
        most = self._most(self._last_t, now)
        if raw >= self._last_raw:
            gains = [raw - self._last_raw]
        else:
            gains = ([raw + self.wrap_at - self._last_raw] if self.wrap_at else []) + [raw]  # wrapped, or restarted
        gain = next((g for g in gains if 0 <= g <= most), None)
        if gain is None:
            self._say_misread(raw, now - self._last_t)
            return self.total_j
        if raw < self._last_raw and gain == raw:
            self._before_restart = (self._last_raw, self._last_t, self._total)
        elif self._before_restart is not None and raw >= self._last_raw:
            self._before_restart = None  # the restart's series goes on: it was one
        self._total += gain
        self._last_raw, self._last_t = raw, now
        return self.total_j

    def _say_misread(self, raw: int, seconds: float) -> None:
        if self._said:
            return
        self._said = True
        from greencallbacks.meter import warn  # on first use: sensor modules load nothing beyond base

        step = "back" if raw < self._last_raw else "forward"
        explains = "a restart or a wrap" if raw < self._last_raw and self.wrap_at else "a restart" if raw < self._last_raw else "the device"
        warn(f"greencallbacks: {self.name}'s energy counter stepped {step} by {abs(raw - self._last_raw) * self.unit_j:.4g} J "
             f"in {seconds:.3g} s, which {explains} at up to {self.max_power_w:g} W cannot explain: taken as a misread and "
             "skipped; the total is held until a read fits again.")


class Integrator:
    """Integrates power samples into energy (trapezoid rule) on a monotonic clock.

    Shared by every sensor that knows power rather than energy. Boundary reads and the background
    thread both add samples, hence the lock. ``clock`` is injectable so that tests advance time
    without sleeping.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_t: float | None = None
        self._last_w = 0.0
        self.energy_j = 0.0

    def add(self, power_w: float, now: float | None = None) -> float:
        """Add one sample of instantaneous power; returns cumulative joules."""
        with self._lock:
            now = self._clock() if now is None else now
            if self._last_t is not None and now > self._last_t:
                self.energy_j += 0.5 * (power_w + self._last_w) * (now - self._last_t)
            if self._last_t is None or now >= self._last_t:
                self._last_t, self._last_w = now, power_w
            return self.energy_j
