"""CPU package and DRAM energy from Linux powercap (RAPL): ``/sys/class/powercap``.

Layout (Intel, and AMD Zen through the same ``intel-rapl`` driver; ``amd-rapl`` accepted too)::

    intel-rapl:0/              name = package-0   energy_uj   max_energy_range_uj
    intel-rapl:0/intel-rapl:0:0/   name = core | uncore | dram
    intel-rapl:1/              name = package-1   (second socket) or psys

On sockets with several dies (e.g. Xeon Platinum 9200) each die is a zone of its own, named
``package-N-die-M`` (the kernel's ``rapl_add_package`` when a package has more than one die);
its sensors are then named ``cpu-package-N-die-M`` and ``dram-N-die-M``.

What is read, and why:

- ``package-N``: the whole socket (cores, caches, uncore). ``core``/``uncore`` subzones are
  parts of it, so they are not read (that would count them twice).
- ``dram``: the memory attached to the socket; outside the package, so it adds.
- ``psys`` (platform, on laptops and some desktops) is *skipped*: it covers the whole SoC,
  package and DRAM included, so adding it would count them twice.
- ``intel-rapl-mmio:N`` is the same package domain through another interface: skipped.

``energy_uj`` wraps at ``max_energy_range_uj``. The reader adds the range when a reading is
below the last one, which is right as long as at most one wrap happens between reads; the poll
interval guarantees that at any plausible power.

Since Linux 5.10, ``energy_uj`` is readable by root only (a fix for a power side channel,
CVE-2020-8694), and most VMs and containers have no powercap at all: ``find_rapl`` then
reports the zones as unavailable, with the fix, and the caller estimates instead.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

from greencallbacks.sensors.base import Counter, Discovery, Kind, Method, Sensor, SensorError, Unavailable

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
# Generous upper bound on a zone's power: no CPU socket or its DRAM draws a kilowatt today.
MAX_PLAUSIBLE_POWER_W = 1000.0
MAX_POLL_INTERVAL_S = 30.0  # poll at least this often even when a wrap takes hours
MIN_POLL_INTERVAL_S = 0.1

_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR}
_PACKAGE_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")
_SUBZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+):(\d+)$")

ABSENT_REASON = "no RAPL powercap interface (VM/container or non-Intel/AMD CPU)"
ABSENT_FIX = (
    "nothing to do in a VM or container (CPU and RAM energy are estimated); on bare metal "
    "load the driver: sudo modprobe intel_rapl_common"
)


def permission_fix(root: str | os.PathLike = DEFAULT_POWERCAP_ROOT) -> str:
    return (
        f"allow reading the counters until reboot: sudo chmod o+r {root}/*-rapl:*/energy_uj "
        f"{root}/*-rapl:*/*-rapl:*:*/energy_uj; or for good, a udev rule such as "
        "'SUBSYSTEM==\"powercap\", ACTION==\"add\", RUN+=\"/bin/chmod o+r /sys%p/energy_uj\"' "
        "in /etc/udev/rules.d/90-powercap.rules"
    )


def _read_int(path: Path) -> int:
    # A plain open() (not Path.read_text) so that tests can deny reads of one path as root.
    with open(path) as file:
        return int(file.read().strip())


def _read_name(path: Path) -> str:
    with open(path) as file:
        return file.read().strip()


def wrap_safe_poll_interval_s(max_energy_range_uj: int) -> float:
    """Half the time the counter takes to wrap at ``MAX_PLAUSIBLE_POWER_W``, within bounds."""
    wrap_period_s = max_energy_range_uj / 1e6 / MAX_PLAUSIBLE_POWER_W
    return min(MAX_POLL_INTERVAL_S, max(MIN_POLL_INTERVAL_S, wrap_period_s / 2.0))


class RaplSensor(Sensor):
    """One RAPL zone: a CPU package (``kind`` CPU) or its DRAM (``kind`` DRAM).

    Args:
        zone_dir: the zone's folder, e.g. ``/sys/class/powercap/intel-rapl:0``.
        package_index: the socket number; read from the zone (or its parent) name when None.
        die_index: the die of a multi-die socket (zone ``package-N-die-M``); None for a single-die
            socket. Read with ``package_index`` when that is None.

    Raises ``PermissionError`` / ``OSError`` at construction when the counter cannot be read,
    ``SensorError`` when a later read fails.
    """

    method = Method.COUNTER
    source = "RAPL counters"

    def __init__(
        self, zone_dir: str | os.PathLike, *, package_index: int | None = None, die_index: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.zone_dir = Path(zone_dir)
        self._energy_path = self.zone_dir / "energy_uj"
        zone_name = _read_name(self.zone_dir / "name")
        if zone_name == "dram":
            self.kind = Kind.DRAM
            if package_index is None:
                package_index, die_index = _package_and_die(_read_name(self.zone_dir.parent / "name"))
            self.name = f"dram-{_zone_label(package_index, die_index)}"
            self.scope = f"package-{_zone_label(package_index, die_index)}/dram"
        elif zone_name.startswith("package"):
            self.kind = Kind.CPU
            if package_index is None:
                package_index, die_index = _package_and_die(zone_name)
            self.name = f"cpu-package-{_zone_label(package_index, die_index)}"
            self.scope = zone_name
        else:
            raise ValueError(f"zone_dir: {self.zone_dir} is a {zone_name!r} zone, not a package or dram zone")
        self.package_index = package_index
        self.die_index = die_index  # None on a single-die socket (zone named package-N)
        # Zones of this kind on the host: an estimate replacing this one covers 1/count of the host.
        self.package_count = 1
        self.max_energy_range_uj = _read_int(self.zone_dir / "max_energy_range_uj")
        self.poll_interval_s = wrap_safe_poll_interval_s(self.max_energy_range_uj)
        self._lock = threading.Lock()
        first_uj = _read_int(self._energy_path)  # PermissionError here: root-only counter
        # Microjoules, wrapping at the zone's range (the poll interval rules out two wraps unseen).
        self._counter = Counter(first_uj, unit_j=1e-6, max_power_w=MAX_PLAUSIBLE_POWER_W,
                                wrap_at=self.max_energy_range_uj, clock=clock, name=self.name)

    def energy_j(self) -> float:
        with self._lock:
            return self._update()

    def poll(self) -> float:
        with self._lock:
            return self._update()

    def _update(self) -> float:
        try:
            raw_uj = _read_int(self._energy_path)
        except (OSError, ValueError) as error:
            # An I/O error or a torn read can clear at the next read (the counter loses nothing
            # meanwhile): held, as an NVML timeout is; a file gone or denied is not.
            transient = isinstance(error, ValueError) or getattr(error, "errno", None) in _TRANSIENT_ERRNOS
            raise SensorError(f"{self.name}: cannot read {self._energy_path}: {error}", transient=transient) from error
        return self._counter.add(raw_uj)


def _package_and_die(zone_name: str) -> tuple[int, int | None]:
    """(socket, die) of a zone named ``package-N`` (die None) or ``package-N-die-M``.

    The die matters: every die of a multi-die socket is a zone of its own, and naming them all
    after the socket would give several sensors one name.
    """
    match = re.fullmatch(r"package-(\d+)(?:-die-(\d+))?", zone_name)
    if not match:
        return 0, None
    return int(match.group(1)), (None if match.group(2) is None else int(match.group(2)))


def _zone_label(package_index: int, die_index: int | None) -> str:
    """``N`` for a single-die socket (names unchanged), ``N-die-M`` for one die of a multi-die socket."""
    return f"{package_index}" if die_index is None else f"{package_index}-die-{die_index}"


def find_rapl(root: str | os.PathLike = DEFAULT_POWERCAP_ROOT, *, clock: Callable[[], float] = time.monotonic) -> Discovery:
    """Every readable RAPL package and DRAM zone, and the unreadable ones with the reason and fix.

    ``clock``: monotonic seconds, which a counter step is checked against (``sensors.base.Counter``)."""
    found = Discovery()
    root_path = Path(root)
    try:
        entries = sorted(os.listdir(root_path))
    except OSError:
        entries = []
    packages = sorted(
        (root_path / e for e in entries if _PACKAGE_ZONE.match(e)), key=lambda p: int(p.name.rsplit(":", 1)[1])
    )
    zones: list[tuple[Path, Kind, str, int, int | None]] = []
    for package_dir in packages:
        try:
            package_name = _read_name(package_dir / "name")
        except OSError:
            continue
        if not package_name.startswith("package"):
            continue  # psys and unknown domains: psys already includes the packages and DRAM
        index, die = _package_and_die(package_name)
        label = _zone_label(index, die)
        zones.append((package_dir, Kind.CPU, f"cpu-package-{label}", index, die))
        for sub_dir in sorted(p for p in package_dir.iterdir() if _SUBZONE.match(p.name)):
            try:
                if _read_name(sub_dir / "name") == "dram":
                    zones.append((sub_dir, Kind.DRAM, f"dram-{label}", index, die))
            except OSError:
                continue
    if not any(kind == Kind.CPU for _, kind, _, _, _ in zones):
        found.unavailable.append(Unavailable("rapl", Kind.CPU, ABSENT_REASON, ABSENT_FIX))
        return found

    for zone_dir, kind, name, index, die in zones:
        try:
            found.sensors.append(RaplSensor(zone_dir, package_index=index, die_index=die, clock=clock))
        except PermissionError:
            found.unavailable.append(
                Unavailable(
                    name,
                    kind,
                    f"permission denied reading {zone_dir / 'energy_uj'} (root-only since Linux 5.10)",
                    permission_fix(root_path),
                )
            )
        except (OSError, ValueError) as error:
            found.unavailable.append(Unavailable(name, kind, f"cannot read {zone_dir}: {error}"))
    for sensor in found.sensors:
        assert isinstance(sensor, RaplSensor)
        sensor.package_count = sum(1 for _, kind, _, _, _ in zones if kind == sensor.kind)
    return found
