"""A fake ``/sys/class/powercap`` tree under a temporary folder, laid out like the kernel's.

    root/intel-rapl:0/{name=package-0, energy_uj, max_energy_range_uj}
    root/intel-rapl:0/intel-rapl:0:0/{name=dram, ...}     (and root/intel-rapl:0:0 -> it)
    root/intel-rapl:1/{name=psys, ...}                    (optional)

Denying reads: tests often run as root, for whom ``chmod 000`` denies nothing. ``deny`` therefore
chmods the file (which works for other users) *and* records it; ``install(monkeypatch)`` makes the
RAPL module's ``open`` raise ``PermissionError`` for recorded paths, exactly what a non-root
reader of a root-only ``energy_uj`` gets.
"""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

DEFAULT_RANGE_UJ = 262_143_328_850  # a common max_energy_range_uj (about 262 kJ)


class FakeZone:
    def __init__(self, path: Path, name: str, max_energy_range_uj: int, energy_uj: int) -> None:
        self.path = path
        self.max_energy_range_uj = max_energy_range_uj
        self.total_uj = energy_uj  # the unwrapped truth, for tests to compare with
        path.mkdir(parents=True, exist_ok=True)
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
        self._write()

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"

    def _write(self) -> None:
        # The kernel serves a sysfs read whole; a plain write_text truncates first, so the meter's
        # poller thread could read an empty file. Write beside it and rename over it atomically.
        staged = self.path / ".energy_uj.new"
        staged.write_text(f"{self.total_uj % self.max_energy_range_uj}\n")
        os.replace(staged, self.energy_path)

    def add_joules(self, joules: float) -> None:
        """The zone consumes ``joules``; the file shows the counter modulo its range."""
        self.total_uj += round(joules * 1e6)
        self._write()


class FakePowercap:
    """Build zones with ``add_package`` / ``add_dram`` / ``add_psys`` under ``root``."""

    def __init__(self, root: Path, prefix: str = "intel-rapl") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.denied: set[Path] = set()

    def add_package(
        self, index: int, *, max_energy_range_uj: int = DEFAULT_RANGE_UJ, energy_uj: int = 12_345_678
    ) -> FakeZone:
        return FakeZone(self.root / f"{self.prefix}:{index}", f"package-{index}", max_energy_range_uj, energy_uj)

    def add_subzone(
        self,
        package_index: int,
        sub_index: int,
        name: str,
        *,
        max_energy_range_uj: int = DEFAULT_RANGE_UJ,
        energy_uj: int = 1_000_000,
    ) -> FakeZone:
        zone_name = f"{self.prefix}:{package_index}:{sub_index}"
        zone = FakeZone(self.root / f"{self.prefix}:{package_index}" / zone_name, name, max_energy_range_uj, energy_uj)
        link = self.root / zone_name  # the kernel lists every zone at the top level too
        if not link.exists():
            link.symlink_to(zone.path, target_is_directory=True)
        return zone

    def add_dram(self, package_index: int, sub_index: int = 0, **kwargs) -> FakeZone:
        return self.add_subzone(package_index, sub_index, "dram", **kwargs)

    def add_psys(self, index: int, **kwargs) -> FakeZone:
        kwargs.setdefault("max_energy_range_uj", DEFAULT_RANGE_UJ)
        kwargs.setdefault("energy_uj", 5_000_000)
        return FakeZone(self.root / f"{self.prefix}:{index}", "psys", **kwargs)

    # -- breaking things -------------------------------------------------------------------

    def deny(self, zone: FakeZone) -> None:
        """Make ``energy_uj`` of ``zone`` unreadable (root-only, as since Linux 5.10)."""
        os.chmod(zone.energy_path, 0o000)
        self.denied.add(zone.energy_path.resolve())

    def remove(self, zone: FakeZone) -> None:
        """The counter file disappears (driver unloaded)."""
        zone.energy_path.unlink()

    def install(self, monkeypatch) -> None:
        """Route the RAPL module's ``open`` through the denial list (effective even as root)."""
        import greencallbacks.sensors.rapl as rapl_module

        denied = self.denied

        def open_unless_denied(file, *args, **kwargs):
            if Path(file).resolve() in denied:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(rapl_module, "open", open_unless_denied, raising=False)
