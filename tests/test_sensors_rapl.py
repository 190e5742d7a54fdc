"""RAPL powercap sensors on a fake /sys/class/powercap tree."""

import pytest

from greencallbacks.sensors.base import Kind, Method, SensorError
from greencallbacks.sensors.rapl import (
    ABSENT_REASON,
    MAX_POLL_INTERVAL_S,
    RaplSensor,
    find_rapl,
    wrap_safe_poll_interval_s,
)
from tests.fakes.fake_powercap import DEFAULT_RANGE_UJ, FakePowercap, FakeZone
from tests.fakes.scripted import FakeClock


@pytest.fixture
def powercap(tmp_path, monkeypatch):
    fake = FakePowercap(tmp_path / "powercap")
    fake.install(monkeypatch)
    return fake


def by_name(found):
    return {s.name: s for s in found.sensors}


def test_package_and_dram_are_found_and_count_exactly(powercap):
    package = powercap.add_package(0)
    dram = powercap.add_dram(0)
    powercap.add_subzone(0, 1, "core")  # part of the package: must not be read
    found = find_rapl(powercap.root)
    sensors = by_name(found)
    assert sorted(sensors) == ["cpu-package-0", "dram-0"]
    assert found.unavailable == []
    cpu, ram = sensors["cpu-package-0"], sensors["dram-0"]
    assert (cpu.kind, cpu.method, cpu.scope) == (Kind.CPU, Method.COUNTER, "package-0")
    assert (ram.kind, ram.method, ram.scope) == (Kind.DRAM, Method.COUNTER, "package-0/dram")
    assert cpu.energy_j() == 0.0
    package.add_joules(123.456789)
    dram.add_joules(7.5)
    assert cpu.energy_j() == pytest.approx(123.456789, abs=1e-6)
    assert ram.energy_j() == pytest.approx(7.5, abs=1e-6)


def test_two_sockets_each_with_dram(powercap):
    for index in (0, 1):
        powercap.add_package(index)
        powercap.add_dram(index)
    sensors = by_name(find_rapl(powercap.root))
    assert sorted(sensors) == ["cpu-package-0", "cpu-package-1", "dram-0", "dram-1"]
    assert {s.package_count for s in sensors.values()} == {2}


def add_dies(powercap, dies):
    """Sockets of several dies: the kernel names each die's zone package-N-die-M (one counter each)."""
    zones = []
    for zone_index, (socket, die) in enumerate(dies):
        zones.append(FakeZone(powercap.root / f"intel-rapl:{zone_index}", f"package-{socket}-die-{die}", DEFAULT_RANGE_UJ, 1000))
        zones.append(powercap.add_dram(zone_index))
    return zones


def test_multi_die_sockets_give_each_die_its_own_names(powercap):
    zones = add_dies(powercap, [(0, 0), (0, 1), (1, 0), (1, 1)])
    found = find_rapl(powercap.root)
    sensors = by_name(found)
    assert sorted(sensors) == [
        "cpu-package-0-die-0", "cpu-package-0-die-1", "cpu-package-1-die-0", "cpu-package-1-die-1",
        "dram-0-die-0", "dram-0-die-1", "dram-1-die-0", "dram-1-die-1",
    ]  # fmt: skip
    assert found.unavailable == []
    die = sensors["cpu-package-0-die-1"]
    assert (die.package_index, die.die_index, die.scope, die.package_count) == (0, 1, "package-0-die-1", 4)
    assert sensors["dram-1-die-0"].scope == "package-1-die-0/dram"
    zones[2].add_joules(3.0)  # die 1 of socket 0 counts to its own sensor only
    assert die.energy_j() == pytest.approx(3.0)
    assert sensors["cpu-package-0-die-0"].energy_j() == 0.0
    # Built alone, a zone reads the same names from the zone (or its parent) name.
    assert RaplSensor(zones[3].path).name == "dram-0-die-1"
    assert RaplSensor(zones[2].path).name == "cpu-package-0-die-1"


def test_psys_and_mmio_zones_are_skipped_to_avoid_double_counting(powercap):
    package = powercap.add_package(0)
    psys = powercap.add_psys(1)
    mmio = powercap.root / "intel-rapl-mmio:0"  # the package domain again, through MMIO
    mmio.mkdir()
    (mmio / "name").write_text("package-0\n")
    (mmio / "energy_uj").write_text("5\n")
    (mmio / "max_energy_range_uj").write_text("1000000\n")
    found = find_rapl(powercap.root)
    assert [s.name for s in found.sensors] == ["cpu-package-0"]
    assert [s.zone_dir.name for s in found.sensors] == ["intel-rapl:0"]
    package.add_joules(10.0)
    psys.add_joules(25.0)  # includes the package's 10 J: adding it would count them twice
    assert sum(s.energy_j() for s in found.sensors) == pytest.approx(10.0)


def test_amd_rapl_prefix(tmp_path, monkeypatch):
    powercap = FakePowercap(tmp_path / "powercap", prefix="amd-rapl")
    zone = powercap.add_package(0)
    sensors = by_name(find_rapl(powercap.root))
    assert list(sensors) == ["cpu-package-0"]
    zone.add_joules(2.0)
    assert sensors["cpu-package-0"].energy_j() == pytest.approx(2.0)


def test_several_wraps_with_polls_in_between_add_up_exactly(powercap):
    range_uj = 100_000_000  # the counter wraps every 100 J
    zone = powercap.add_package(0, max_energy_range_uj=range_uj, energy_uj=60_000_000)
    sensor = RaplSensor(zone.path)
    consumed = [70.0, 90.0, 45.5, 99.0, 40.25]  # four of these steps cross a wrap
    wraps_seen = 0
    for joules in consumed:
        before = zone.total_uj % range_uj
        zone.add_joules(joules)
        wraps_seen += (zone.total_uj % range_uj) < before
        sensor.poll()
    assert wraps_seen == 4
    assert sensor.energy_j() == pytest.approx(sum(consumed), abs=1e-6)


def test_a_wrap_between_boundary_reads_is_counted_without_a_poll(powercap):
    zone = powercap.add_package(0, max_energy_range_uj=100_000_000, energy_uj=95_000_000)
    sensor = RaplSensor(zone.path)
    zone.add_joules(20.0)  # raw goes 95 J -> 15 J
    assert sensor.energy_j() == pytest.approx(20.0)


def test_poll_interval_leaves_no_room_for_two_unseen_wraps():
    # 262 kJ range: wraps after 262 s at 1 kW; capped at the maximum interval.
    assert wrap_safe_poll_interval_s(262_143_328_850) == MAX_POLL_INTERVAL_S
    # A 32-bit microjoule range (old CPUs): 4295 J wraps after 4.3 s at 1 kW: poll every 2.1 s.
    assert wrap_safe_poll_interval_s(2**32) == pytest.approx(2**32 / 1e6 / 1000.0 / 2)
    assert wrap_safe_poll_interval_s(1_000) == pytest.approx(0.1)  # never a busy loop


def test_sensor_poll_interval_comes_from_its_range(powercap):
    zone = powercap.add_package(0, max_energy_range_uj=2**32)
    assert RaplSensor(zone.path).poll_interval_s == pytest.approx(2.147483648)


def test_permission_denied_is_unavailable_with_the_fix(powercap):
    package = powercap.add_package(0)
    dram = powercap.add_dram(0)
    powercap.deny(package)
    powercap.deny(dram)
    found = find_rapl(powercap.root)
    assert found.sensors == []
    assert [(u.name, u.kind) for u in found.unavailable] == [("cpu-package-0", Kind.CPU), ("dram-0", Kind.DRAM)]
    for missing in found.unavailable:
        assert "permission denied" in missing.reason and "5.10" in missing.reason
        assert "chmod o+r" in missing.fix and "udev" in missing.fix


@pytest.mark.parametrize("layout", ["no root", "empty root", "psys only"])
def test_absent_powercap_is_unavailable(tmp_path, layout):
    root = tmp_path / "powercap"
    if layout != "no root":
        powercap = FakePowercap(root)
        if layout == "psys only":
            powercap.add_psys(0)
    found = find_rapl(root)
    assert found.sensors == []
    [missing] = found.unavailable
    assert missing.reason == ABSENT_REASON
    assert "modprobe" in missing.fix


def test_read_failure_mid_run_raises_sensor_error(powercap):
    zone = powercap.add_package(0)
    sensor = RaplSensor(zone.path)
    zone.add_joules(1.0)
    assert sensor.energy_j() == pytest.approx(1.0)
    powercap.remove(zone)
    with pytest.raises(SensorError, match="cpu-package-0.*energy_uj"):
        sensor.energy_j()
    with pytest.raises(SensorError):
        sensor.poll()


def test_denied_mid_run_raises_sensor_error(powercap):
    zone = powercap.add_package(0)
    sensor = RaplSensor(zone.path)
    powercap.deny(zone)
    with pytest.raises(SensorError, match="Permission denied"):
        sensor.energy_j()


def test_non_package_zone_is_rejected(powercap):
    psys = powercap.add_psys(0)
    with pytest.raises(ValueError, match="zone_dir"):
        RaplSensor(psys.path)


def test_a_counter_read_below_the_last_that_is_no_wrap_is_skipped_as_a_misread(tmp_path):
    """A read 5 kJ low in a 262 kJ range was taken for a wrap: 257 kJ billed to one second.
    Only a wrap (or a step) that a package could draw in the time between reads is counted."""
    zone = FakePowercap(tmp_path).add_package(0, energy_uj=100_000_000_000)
    clock = FakeClock()
    sensor = RaplSensor(zone.path, clock=clock)
    with pytest.warns(UserWarning, match="misread"):
        for second in range(4):
            clock.advance(1.0)
            zone.add_joules(100.0)
            if second == 1:  # this one read is 5 kJ low
                zone.energy_path.write_text(f"{zone.total_uj - 5_000_000_000}\n")
            sensor.energy_j()
    assert sensor.energy_j() == pytest.approx(400.0)
    # A real wrap, from near the top of the range, is still counted.
    zone.add_joules(DEFAULT_RANGE_UJ / 1e6 - 100_000.0 - 400.0 - 20.0)  # jump the truth close to the top
    clock.advance(1000.0)
    before = sensor.energy_j()
    clock.advance(1.0)
    zone.add_joules(150.0)  # wraps
    assert sensor.energy_j() - before == pytest.approx(150.0)


def test_one_io_error_is_held_and_the_next_read_recovers_every_joule(tmp_path, monkeypatch):
    """A single EIO on energy_uj switched the zone to its estimate for the rest of the run (12 J
    an epoch measured became 0.6 J estimated). An I/O error is transient now, as an NVML timeout is;
    a file gone is not."""
    import builtins
    import errno

    from greencallbacks.meter import Meter

    zone = FakePowercap(tmp_path).add_package(0)
    clock = FakeClock()
    sensor = RaplSensor(zone.path, clock=clock)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9)
    meter._poller.manual = True  # no background poll takes the failing read
    first = meter.snapshot()
    real_open, fail = builtins.open, [1]

    def open_failing_once(file, *args, **kwargs):
        if str(file) == str(zone.energy_path) and fail:
            fail.pop()
            raise OSError(errno.EIO, "Input/output error")
        return real_open(file, *args, **kwargs)

    clock.advance(1.0)
    zone.add_joules(12.0)
    monkeypatch.setattr(builtins, "open", open_failing_once)
    held = meter.snapshot()  # the failed read: held at its last value, no warning
    clock.advance(1.0)
    zone.add_joules(12.0)
    last = meter.snapshot()
    assert not meter.channels[0].failed
    assert meter.between(first, held).energy_j == 0.0
    assert meter.between(first, last).energy_j == pytest.approx(24.0)
    meter.close()
    zone.energy_path.unlink()
    with pytest.raises(SensorError) as gone:
        sensor.energy_j()
    assert not gone.value.transient
