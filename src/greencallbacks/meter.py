"""The meter: composes sensors, takes cumulative snapshots and measures windows between them.

Counters are never reset: a window is the difference of two snapshots, so windows may nest and
overlap freely. Cheap sensors are read when a snapshot is taken (phase boundaries). The one
background thread keeps sampled sensors integrated and counter wraparound tracked, and reads the
slow counters (``Sensor.off_thread``, NVML's ~3 ms energy read) at their update cadence: a
snapshot then only stamps the time and carries each slow counter's latest read forward to it with
the instantaneous power sampled since (or the counter's last slope), so the training thread never
waits for a slow read. That value is fixed when the snapshot is taken, and consecutive windows
share their boundary, so every joule is still billed exactly once; ``snapshot(exact=True)`` (the
run's first and last boundary) reads every counter on the spot.

A sensor that fails is never allowed to break training: its channel warns once, switches to
the fallback estimate if there is one (or stops counting), and labels what it reports; the span
between the failed sensor's last read and the switch is estimated, not lost. A transient fault
(an NVML timeout) is held and retried instead, however long it lasts, where nothing else can read
the device: the device is counted again when it answers (see TRANSIENT_HOLD_S).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from greencallbacks.channel import PHASE_PRECISION_S as PHASE_PRECISION_S
from greencallbacks.channel import PHASE_REFRESH_S as PHASE_REFRESH_S
from greencallbacks.channel import TRANSIENT_HOLD_S as TRANSIENT_HOLD_S
from greencallbacks.channel import _Channel as _Channel
from greencallbacks.channel import _Poller as _Poller
from greencallbacks.checks import keywords_checked
from greencallbacks.clock import _read_anchor, _unix_reading
from greencallbacks.clock import reset_unix_clock as reset_unix_clock
from greencallbacks.clock import since_boot as since_boot
from greencallbacks.clock import unix_now as unix_now
from greencallbacks.energy_warning import EnergyWarning as EnergyWarning
from greencallbacks.energy_warning import warn as warn
from greencallbacks.sensors.base import Sensor


def _read_last_if_slow(channel: "_Channel") -> bool:
    return channel.off_thread


def joules_between(start: "Snapshot", end: "Snapshot") -> float:
    """IT energy between two snapshots of one meter, all channels: ``Meter.between(...).energy_j``
    without the per-component detail (for live figures, at every logging step)."""
    before = start.energy_j
    return sum(max(0.0, joules - before.get(name, 0.0)) for name, joules in end.energy_j.items())


@dataclass(frozen=True)
class Component:
    """Energy of one sensor over one window."""

    name: str
    kind: str
    method: str
    energy_j: float
    uncertainty_j: float = 0.0
    note: str = ""
    source: str = ""  # the sensor's (Sensor.source): what a paper says the energy came from

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
        if self.source:
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class Snapshot:
    """Cumulative joules of every channel at one instant."""

    monotonic_s: float
    unix_s: float
    energy_j: dict[str, float]
    methods: dict[str, str]
    # Off-thread channels: seconds their value was carried forward from the latest counter read
    # (absent: read at the snapshot). Widens the window's stated uncertainty.
    carried_s: dict[str, float] = field(default_factory=dict)
    # Joules each channel has estimated rather than measured so far (the span between a failed
    # sensor's last read and its replacement, a sampled sensor's gap while it did not answer):
    # cumulative, absent where none.
    bridged_j: dict[str, float] = field(default_factory=dict)
    # Joules those estimates may be off by, cumulative, which a window states: each at
    # ESTIMATE_RELATIVE_UNCERTAINTY, more where the span was unsampled (a GPU lost without power
    # samples: see _Channel._bridge_at_slope).
    bridge_error_j: dict[str, float] = field(default_factory=dict)
    # Off-thread channels carried at the counter's slope, without power samples: joules the value
    # may be off by (see _Channel.estimate); absent where carried with samples or read in place.
    slope_error_j: dict[str, float] = field(default_factory=dict)


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



@keywords_checked
class Meter:
    """Measures energy of the given sensors between snapshots.

    Args:
        sensors: the sensors to read (see ``greencallbacks.sensors.discover_sensors``).
        fallback: maps a sensor to a factory of its replacement when it fails (default: the
            sensors package's estimates; ``None`` means a failed sensor stops counting).
        sync: called before every snapshot so queued device work is billed to the right window
            (e.g. ``torch.cuda.synchronize``). Its failures are ignored.
        off_thread: read slow counters (``Sensor.off_thread``) on the background thread and
            carry them forward to each boundary (True), or read them at every boundary on the
            caller's thread (False). Default: True on the real monotonic clock; False with an
            injected clock, which a background thread cannot keep pace with.
        clock / wall_clock: injectable for tests. ``wall_clock`` (unix seconds) is read once, at
            construction: every snapshot's ``unix_s`` is that reading advanced by a steady clock
            (see ``_unix_now``), so a wall-clock step during a run (NTP, a user's ``date -s``)
            moves no stamp. By default it is ``unix_now``, read once per process, so the meters
            of one process (``fit`` then ``test`` of one run) stamp alike across such a step.
    """

    def __init__(
        self,
        sensors: Iterable[Sensor],
        *,
        fallback: Callable[[Sensor], Sensor | None] | None | str = "default",
        sync: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = unix_now,
        off_thread: bool | None = None,
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
        if off_thread not in (None, True, False):
            raise ValueError(f"off_thread must be True, False or None (automatic), got {off_thread!r}")
        if off_thread is None:
            off_thread = clock is time.monotonic
        names = [s.name for s in sensors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sensors: names must be unique, got duplicates {duplicates}")
        if fallback == "default":
            from greencallbacks.sensors.discover import fallback_for as fallback
        self._clock = clock
        # Snapshots are stamped with the wall clock read once (by default once per process, see
        # ``unix_now``; an injected one here) and advanced by a steady clock.
        # Stamped with each snapshot's own time.time(), a step back of the system clock mid-run
        # (even NTP's 2 s) made a window end before it began: its phase's record was lost, and a
        # step after the last epoch left the run unfinished. The steady clock is the durations'
        # when injected (a test's fake clock moves both alike); by default CLOCK_BOOTTIME, which
        # advances as CLOCK_MONOTONIC (the durations') does while the machine runs and also
        # counts a suspend: durations leave out time suspended (nothing ran), stamps keep the hour.
        self._stamp_clock = since_boot if clock is time.monotonic else clock
        if wall_clock is unix_now and self._stamp_clock is since_boot:
            self._wall_anchor = _read_anchor()  # the process's own: stamps equal unix_now()
        else:
            self._wall_anchor = (_unix_reading(wall_clock), self._stamp_clock())
        self.sync = sync
        self.channels = [
            _Channel(s, (lambda s=s: fallback(s)) if fallback else None, clock, off_thread, self._unix_now)
            for s in sensors
        ]
        self.off_thread = off_thread
        self._poller = _Poller(self.channels, clock)
        self._closed = False

    @property
    def sensors(self) -> list[Sensor]:
        return [c.sensor for c in self.channels]

    def _unix_now(self) -> float:
        """Wall time (unix seconds) that never goes backwards: see ``__init__``."""
        wall, steady = self._wall_anchor
        return wall + max(0.0, self._stamp_clock() - steady)

    def snapshot(self, exact: bool = False) -> Snapshot:
        """Cumulative energy of every channel now.

        Cheap sensors are read; slow ones (``off_thread``) are carried forward from the background
        thread's latest read, costing microseconds. ``exact=True`` reads every counter in place
        (milliseconds on NVML): for the first and last boundary of a run.
        """
        if self.sync is not None:
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a failed sync only blurs a boundary
                pass
        unix_s, mono_s = self._unix_now(), self._clock()
        energy, carried, slope_error = {}, {}, {}
        # Cheap sensors first, read at the stamped instant; an off-thread one carries its value to
        # that instant from its read, however long an exact read of it waited.
        for channel in sorted(self.channels, key=_read_last_if_slow):
            energy[channel.name], seconds, error_j = channel.boundary(mono_s, exact)
            if seconds:
                carried[channel.name] = seconds
            if error_j:
                slope_error[channel.name] = error_j
        methods = {c.name: c.method for c in self.channels}
        bridged = {c.name: c.bridged_j for c in self.channels if c.bridged_j}
        bridge_error = {c.name: c.bridge_error_j for c in self.channels if c.bridge_error_j}
        # Started after the reads, so the reader's first read does not queue behind this one.
        if not self._poller.alive and not self._closed and self._poller.needed():
            self._poller.ensure_running()
        return Snapshot(monotonic_s=mono_s, unix_s=unix_s, energy_j=energy, methods=methods, carried_s=carried,
                        bridged_j=bridged, bridge_error_j=bridge_error, slope_error_j=slope_error)

    def monotonic_s(self) -> float:
        """The meter's clock now: the time base of its snapshots' ``monotonic_s``."""
        return self._clock()

    def peek(self) -> Snapshot:
        """Cumulative energy now for live figures (e.g. at a framework's logging steps): no device
        synchronisation and no slow read, so it costs the training thread microseconds; queued
        device work is not waited for. Boundaries still use ``snapshot``, which bills windows."""
        unix_s, mono_s = self._unix_now(), self._clock()
        energy, carried = {}, {}
        for channel in self.channels:
            energy[channel.name], seconds = channel.peek(mono_s)
            if seconds:
                carried[channel.name] = seconds
        methods = {c.name: c.method for c in self.channels}
        bridged = {c.name: c.bridged_j for c in self.channels if c.bridged_j}
        bridge_error = {c.name: c.bridge_error_j for c in self.channels if c.bridge_error_j}
        return Snapshot(monotonic_s=mono_s, unix_s=unix_s, energy_j=energy, methods=methods, carried_s=carried,
                        bridged_j=bridged, bridge_error_j=bridge_error)

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
                    uncertainty_j=channel.uncertainty_j(
                        energy_j,
                        duration_s,
                        max(start.carried_s.get(channel.name, 0.0), end.carried_s.get(channel.name, 0.0)),
                        max(0.0, end.bridge_error_j.get(channel.name, 0.0)
                            - start.bridge_error_j.get(channel.name, 0.0)),
                        # Each boundary's bound, added: the window is off by the difference of
                        # their errors, which are as often of opposite signs (in quadrature, 1 %
                        # of 1 s windows of a 50/700 W load without samples beat it, by up to 1.2x).
                        start.slope_error_j.get(channel.name, 0.0) + end.slope_error_j.get(channel.name, 0.0),
                    ),
                    note=note,
                    source=channel.source,
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
        for channel in self.channels:
            channel.forget()  # a read from before the stop is not carried across the pause

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
