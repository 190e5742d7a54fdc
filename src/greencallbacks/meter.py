"""The meter: composes sensors, takes cumulative snapshots and measures windows between them.

Counters are never reset: a window is the difference of two snapshots, so windows may nest and
overlap freely. Reads happen only when a snapshot is taken (phase boundaries), plus the one
background thread that keeps sampled sensors integrated and counter wraparound tracked.

A sensor that fails is never allowed to break training: its channel warns once, switches to
the fallback estimate if there is one (or stops counting), and labels what it reports.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from greencallbacks.sensors.base import Method, Sensor

# Estimates are models, not measurements: report them with a wide, stated relative uncertainty.
ESTIMATE_RELATIVE_UNCERTAINTY = 0.5


class EnergyWarning(UserWarning):
    """A sensor was degraded or a measurement is less exact than asked; training goes on."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """Warn, pointing at the first caller outside this package (the user's or the framework's
    line), not at the library's internals."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, EnergyWarning, stacklevel=level)


@dataclass(frozen=True)
class Component:
    """Energy of one sensor over one window."""

    name: str
    kind: str
    method: str
    energy_j: float
    uncertainty_j: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "energy_j": self.energy_j,
            "uncertainty_j": self.uncertainty_j,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Snapshot:
    """Cumulative joules of every channel at one instant."""

    monotonic_s: float
    unix_s: float
    energy_j: dict[str, float]
    methods: dict[str, str]


@dataclass(frozen=True)
class Measurement:
    """What a window between two snapshots used."""

    start_unix: float
    duration_s: float
    components: tuple[Component, ...]

    @property
    def energy_j(self) -> float:
        return sum(c.energy_j for c in self.components)

    @property
    def uncertainty_j(self) -> float:
        # Independent per-sensor errors add in quadrature.
        return sum(c.uncertainty_j**2 for c in self.components) ** 0.5


class _Channel:
    """One sensor plus what replaces it if it fails; its reading never goes backwards."""

    def __init__(self, sensor: Sensor, fallback: Callable[[], Sensor | None] | None, clock) -> None:
        self.sensor = sensor
        self.name = sensor.name
        self.kind = str(sensor.kind)
        self._fallback = fallback
        self._clock = clock
        self._lock = threading.Lock()
        self._offset_j = 0.0  # energy counted by sensors this channel used before the current one
        self._base_j = 0.0  # the current sensor's reading when it took over
        self._last_j = 0.0
        self._started = clock()
        self.note = getattr(sensor, "note", "") or ""
        self.failed = False  # stopped counting altogether

    @property
    def method(self) -> str:
        return str(self.sensor.method)

    @property
    def poll_interval_s(self) -> float | None:
        return None if self.failed else self.sensor.poll_interval_s

    def read(self) -> float:
        with self._lock:
            if not self.failed:
                try:
                    value = self._offset_j + self.sensor.energy_j() - self._base_j
                except Exception as error:  # noqa: BLE001 - any sensor failure degrades, never raises
                    self._degrade(error)
                else:
                    # A sensor must never make a window negative; hold the high-water mark.
                    self._last_j = max(self._last_j, value)
            return self._last_j

    def poll(self) -> None:
        with self._lock:
            if self.failed:
                return
            try:
                self.sensor.poll()
            except Exception as error:  # noqa: BLE001
                self._degrade(error)

    def _degrade(self, error: BaseException) -> None:
        broken = self.sensor
        replacement = None
        if self._fallback is not None:
            try:
                replacement = self._fallback()
                if replacement is not None:
                    self._base_j = replacement.energy_j()
            except Exception:  # noqa: BLE001
                replacement = None
        when = time.strftime("%H:%M:%S")
        try:
            broken.close()
        except Exception:  # noqa: BLE001
            pass
        self._offset_j = self._last_j
        if replacement is not None:
            self.sensor = replacement
            self.note = f"{broken.method} until {when} ({error}); {replacement.method} since"
            warn(
                f"greencallbacks: sensor {self.name} ({broken.scope or broken.name}) failed: {error}. "
                f"Its energy is {replacement.method} from now on and labelled so; training continues."
            )
        else:
            self.failed = True
            self.note = f"stopped counting at {when} ({error})"
            warn(
                f"greencallbacks: sensor {self.name} ({broken.scope or broken.name}) failed: {error}. "
                "It is no longer counted (labelled in the records); training continues."
            )

    def uncertainty_j(self, energy_j: float, duration_s: float) -> float:
        if self.method == Method.ESTIMATED.value:
            return ESTIMATE_RELATIVE_UNCERTAINTY * energy_j
        # A stated share of a device (apportioned) errs in proportion to the energy, whatever the window.
        stated_j = (getattr(self.sensor, "relative_uncertainty", 0.0) or 0.0) * energy_j
        period = getattr(self.sensor, "update_period_s", 0.0) or 0.0
        if self.method == Method.SAMPLED.value:
            period = max(period, self.sensor.poll_interval_s or 0.0)
        if period <= 0:
            return stated_j
        # A quantised counter can be off by one update period at the window's end; use the
        # window's power, or the channel's long-run power when the window read 0 J.
        power_w = energy_j / duration_s if duration_s > 0 and energy_j > 0 else self.mean_power_w()
        return (stated_j**2 + (period * power_w) ** 2) ** 0.5

    def mean_power_w(self) -> float:
        elapsed = self._clock() - self._started
        return self._last_j / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        try:
            self.sensor.close()
        except Exception:  # noqa: BLE001
            pass


class _Poller:
    """The one background daemon thread. Starts lazily, stops cleanly, can start again."""

    def __init__(self, channels: Sequence[_Channel], clock) -> None:
        self._channels = channels
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def needed(self) -> bool:
        return any(c.poll_interval_s for c in self._channels)

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._thread is not None and not self._stop.is_set():
                self.restarts += 1
                warn("greencallbacks: the energy sampling thread had stopped; restarted it.")
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="greencallbacks-meter", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        due = {id(c): 0.0 for c in self._channels}
        while not stop.is_set():
            now = self._clock()
            waits = []
            for channel in self._channels:
                interval = channel.poll_interval_s
                if not interval:
                    continue
                if now >= due[id(channel)]:
                    channel.poll()
                    due[id(channel)] = now + interval
                waits.append(due[id(channel)] - now)
            if not waits:
                return
            stop.wait(max(0.001, min(waits)))


class Meter:
    """Measures energy of the given sensors between snapshots.

    Args:
        sensors: the sensors to read (see ``greencallbacks.sensors.discover_sensors``).
        fallback: maps a sensor to a factory of its replacement when it fails (default: the
            sensors package's estimates; ``None`` means a failed sensor stops counting).
        sync: called before every snapshot so queued device work is billed to the right window
            (e.g. ``torch.cuda.synchronize``). Its failures are ignored.
        clock / wall_clock: injectable for tests.
    """

    def __init__(
        self,
        sensors: Iterable[Sensor],
        *,
        fallback: Callable[[Sensor], Sensor | None] | None | str = "default",
        sync: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if sensors is None or isinstance(sensors, (str, bytes)) or not isinstance(sensors, Iterable):
            raise ValueError(f"sensors must be a list of greencallbacks Sensor objects, got {sensors!r}")
        sensors = list(sensors)
        for sensor in sensors:
            if not isinstance(sensor, Sensor):
                raise ValueError(f"sensors must hold greencallbacks Sensor objects, got {sensor!r}")
        if not (fallback is None or fallback == "default" or callable(fallback)):
            raise ValueError(f"fallback must be a function sensor -> replacement, None or 'default', got {fallback!r}")
        for argument, function in (("sync", sync), ("clock", clock), ("wall_clock", wall_clock)):
            if not (callable(function) or (argument == "sync" and function is None)):
                raise ValueError(f"{argument} must be a function taking no argument, got {function!r}")
        names = [s.name for s in sensors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sensors: names must be unique, got duplicates {duplicates}")
        if fallback == "default":
            from greencallbacks.sensors.discover import fallback_for as fallback
        self._clock = clock
        self._wall_clock = wall_clock
        self.sync = sync
        self.channels = [
            _Channel(s, (lambda s=s: fallback(s)) if fallback else None, clock) for s in sensors
        ]
        self._poller = _Poller(self.channels, clock)
        self._closed = False

    @property
    def sensors(self) -> list[Sensor]:
        return [c.sensor for c in self.channels]

    def snapshot(self) -> Snapshot:
        """Cumulative energy of every channel now. Costs one read of each counter."""
        if self._poller.needed() and not self._closed:
            self._poller.ensure_running()
        if self.sync is not None:
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a failed sync only blurs a boundary
                pass
        unix_s, mono_s = self._wall_clock(), self._clock()
        energy = {c.name: c.read() for c in self.channels}
        methods = {c.name: c.method for c in self.channels}
        return Snapshot(monotonic_s=mono_s, unix_s=unix_s, energy_j=energy, methods=methods)

    def between(self, start: Snapshot, end: Snapshot) -> Measurement:
        duration_s = max(0.0, end.monotonic_s - start.monotonic_s)
        components = []
        for channel in self.channels:
            energy_j = max(0.0, end.energy_j.get(channel.name, 0.0) - start.energy_j.get(channel.name, 0.0))
            method = end.methods.get(channel.name, channel.method)
            note = channel.note
            if start.methods.get(channel.name, method) != method and not note:
                note = f"{start.methods[channel.name]} then {method}"
            components.append(
                Component(
                    name=channel.name,
                    kind=channel.kind,
                    method=method,
                    energy_j=energy_j,
                    uncertainty_j=channel.uncertainty_j(energy_j, duration_s),
                    note=note,
                )
            )
        return Measurement(start_unix=start.unix_s, duration_s=duration_s, components=tuple(components))

    def start(self) -> "Window":
        return Window(self)

    @contextmanager
    def measure(self) -> Iterator["Window"]:
        """``with meter.measure() as window: ...`` then ``window.result``."""
        window = self.start()
        try:
            yield window
        finally:
            window.stop()

    @property
    def sampling(self) -> bool:
        return self._poller.alive

    def stop_sampling(self) -> None:
        """Stop the background thread; the next snapshot starts it again if needed."""
        self._poller.stop()

    def close(self) -> None:
        self._closed = True
        self._poller.stop()
        for channel in self.channels:
            channel.close()

    def describe(self) -> list[dict]:
        return [
            {**c.sensor.describe(), "name": c.name, "method": c.method, **({"note": c.note} if c.note else {})}
            for c in self.channels
        ]


@dataclass
class Window:
    """An open measurement; ``stop()`` returns (and keeps) its ``Measurement``."""

    meter: Meter
    start_snapshot: Snapshot = field(init=False)
    result: Measurement | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.start_snapshot = self.meter.snapshot()

    def stop(self) -> Measurement:
        if self.result is None:
            self.result = self.meter.between(self.start_snapshot, self.meter.snapshot())
        return self.result
