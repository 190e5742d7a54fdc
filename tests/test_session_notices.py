"""The two set-up notices (estimated sensors, world-average intensity) are said once per process."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from greencallbacks import session as session_module
from greencallbacks.sensors.base import Kind, Method, Unavailable
from greencallbacks.sensors.discover import RESERVED_NAMES
from greencallbacks.sensors.estimate import ConstantPowerSensor
from greencallbacks.sensors.nvml import INSTALL_FIX
from greencallbacks.session import EnergySession
from tests.fakes.scripted import FakeClock, ScriptedSensor


def test_each_notice_is_said_once_per_process_not_on_every_fit(monkeypatch):
    monkeypatch.setattr(session_module, "_SAID", set())  # as in a fresh process
    clock = FakeClock()
    meter = SimpleNamespace(sensors=[ScriptedSensor("cpu", clock, kind=Kind.CPU, method=Method.ESTIMATED)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # fit, evaluate, predict in a notebook: three sessions
            EnergySession()._tell_once(meter)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "cpu energy is estimated, not measured" in messages[0] and "world average" in messages[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EnergySession(country="FR")._tell_once(SimpleNamespace(sensors=[]))  # nothing new to say
        EnergySession()._tell_once(SimpleNamespace(sensors=[ScriptedSensor("ram", clock, kind=Kind.RAM, method=Method.ESTIMATED)]))
    assert [str(w.message).split(" energy")[0] for w in caught] == ["greencallbacks: ram"]  # a new message is said


# -- a GPU this process trains on that is not measured ---------------------------------------------


def start_with(monkeypatch, tmp_path, sensors, unavailable, **start_kwargs):
    """Start and finish a session whose discovery finds ``sensors`` and lists ``unavailable``;
    the warnings it gives."""
    from greencallbacks.sensors import discover as discover_module
    from greencallbacks.sensors.base import Discovery

    monkeypatch.setattr(session_module, "_SAID", set())
    asked = {}

    def discover(**kwargs):
        asked.update(kwargs)
        return Discovery(list(sensors), list(unavailable))

    monkeypatch.setattr(discover_module, "discover_sensors", discover)
    session_kwargs = start_kwargs.pop("session", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = EnergySession(intensity=100.0, output_dir=tmp_path, **session_kwargs)
        session.start(**start_kwargs)
        session.tracker.finish()
    return [str(w.message) for w in caught]


def test_another_rank_says_which_of_its_own_gpus_goes_unmeasured_and_nothing_else(monkeypatch, tmp_path):
    """Rank 1's GPU, lost during a fit, was left out of the later validate's records unsaid: only
    rank 0 spoke. Each rank now says its own GPUs; the host and the grid, rank 0 alone."""
    from greencallbacks.distributed import LocalReducer

    class Rank1(LocalReducer):
        rank, world_size, measures_host = 1, 2, False

        def all_gather(self, obj):
            return [obj, obj]

    lost = Unavailable("gpu1", Kind.GPU, "GPU is lost", "")
    estimated = ScriptedSensor("cpu", FakeClock(), kind=Kind.CPU, method=Method.ESTIMATED)
    messages = start_with(monkeypatch, tmp_path, [estimated], [lost], device_indices=[1], reducer=Rank1())
    assert [m for m in messages if "gpu1" in m] == [
        "greencallbacks: no GPU energy is measured though this process trains on GPU 1, so records leave it out "
        "[gpu1: GPU is lost]."]
    assert not [m for m in messages if "estimated" in m]


NO_BINDINGS = Unavailable("gpu", Kind.GPU, "the NVML Python bindings (nvidia-ml-py) are not installed", INSTALL_FIX)


def host_counters(clock):
    return [ScriptedSensor("cpu-package-0", clock, kind=Kind.CPU), ScriptedSensor("dram-0", clock, kind=Kind.DRAM)]


@pytest.mark.parametrize("asked", [{"device_indices": [0]}, {"session": {"gpus": [0]}}])
def test_a_gpu_the_process_trains_on_that_cannot_be_measured_is_said_with_the_reason_and_fix(
    monkeypatch, tmp_path, asked
):
    # RAPL readable, nothing estimated: before, nothing at all was said and the GPU silently left out.
    messages = start_with(monkeypatch, tmp_path, host_counters(FakeClock()), [NO_BINDINGS], **asked)
    [message] = messages
    assert "no GPU energy is measured though this process trains on GPU 0" in message
    assert NO_BINDINGS.reason in message and INSTALL_FIX in message


@pytest.mark.parametrize("asked", [{"device_indices": []}, {}, {"session": {"gpus": None}}])
def test_no_gpu_notice_where_the_process_trains_on_no_known_gpu(monkeypatch, tmp_path, asked):
    # CPU training ([]), nobody said (every visible GPU: none on a CPU box), or GPUs switched off.
    assert start_with(monkeypatch, tmp_path, host_counters(FakeClock()), [NO_BINDINGS], **asked) == []


def test_one_of_several_gpus_unmeasured_is_named(monkeypatch, tmp_path):
    clock = FakeClock()
    lost = Unavailable("gpu1", Kind.GPU, "NVML cannot use GPU 1 (NVML index): GPU is lost", "reset the GPU")
    sensors = [ScriptedSensor("gpu0", clock), *host_counters(clock)]
    [message] = start_with(monkeypatch, tmp_path, sensors, [lost], device_indices=[0, 1])
    assert message.startswith("greencallbacks: gpu1 energy is not measured") and "GPU is lost" in message
    # Every GPU measured: nothing to say.
    assert start_with(monkeypatch, tmp_path, sensors, [], device_indices=[0]) == []


def test_gpu_reasons_are_said_in_the_gpu_notice_only(monkeypatch, tmp_path):
    estimated = [ScriptedSensor("cpu", FakeClock(), kind=Kind.CPU, method=Method.ESTIMATED)]
    denied = Unavailable("rapl", Kind.CPU, "no RAPL powercap interface", "nothing to do in a VM")
    messages = start_with(monkeypatch, tmp_path, estimated, [denied, NO_BINDINGS], device_indices=[0])
    assert len(messages) == 2
    assert "no RAPL powercap interface" in messages[0] and NO_BINDINGS.reason not in messages[0]
    assert NO_BINDINGS.reason in messages[1] and "no RAPL" not in messages[1]


# -- a fix shared by several unavailable sensors ---------------------------------------------------


def test_a_fix_shared_by_every_denied_rapl_zone_is_said_once(tmp_path, monkeypatch):
    from greencallbacks.sensors.rapl import find_rapl
    from tests.fakes.fake_powercap import FakePowercap

    powercap = FakePowercap(tmp_path / "powercap")
    powercap.install(monkeypatch)
    for zone in (powercap.add_package(0), powercap.add_dram(0), powercap.add_package(1), powercap.add_dram(1)):
        powercap.deny(zone)
    unavailable = find_rapl(powercap.root).unavailable
    assert len(unavailable) == 4 and len({u.fix for u in unavailable}) == 1
    monkeypatch.setattr(session_module, "_SAID", set())
    session = EnergySession(intensity=100.0)
    session.unavailable = unavailable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session._tell_once(SimpleNamespace(sensors=[ScriptedSensor("cpu", FakeClock(), kind=Kind.CPU, method=Method.ESTIMATED)]))
    [message] = [str(w.message) for w in caught]
    assert message.count(unavailable[0].fix) == 1
    assert message.count("permission denied") == 4  # each zone still named with its reason
    assert message.count("(fix: as for cpu-package-0)") == 3


# -- extra_sensors names are checked at construction -----------------------------------------------


def test_duplicate_extra_sensor_names_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"extra_sensors: sensor names must be unique, got duplicates \['switch'\]"):
        EnergySession(extra_sensors=[ConstantPowerSensor("switch", 40.0), ConstantPowerSensor("switch", 10.0)])
    with pytest.raises(ValueError, match="sensors: sensor names must be unique"):
        EnergySession(sensors=[ConstantPowerSensor("x", 1.0), ConstantPowerSensor("x", 2.0)])


@pytest.mark.parametrize(
    "name", ["cpu", "ram", "gpu0", "gpu12", "cpu-package-1", "dram-0", "cpu-package-0-die-1", "dram-1-die-0-estimate"]
)
def test_extra_sensor_names_that_discovery_may_give_are_refused_with_the_reserved_patterns(name):
    with pytest.raises(ValueError, match="extra_sensors") as refused:
        EnergySession(extra_sensors=[ConstantPowerSensor(name, 5.0)])
    assert repr(name) in str(refused.value) and RESERVED_NAMES in str(refused.value)


@pytest.mark.parametrize("name", ["switch", "gpu-fan", "cpu0", "ram-disk", "dram"])
def test_other_extra_sensor_names_are_accepted(name):
    assert EnergySession(extra_sensors=[ConstantPowerSensor(name, 5.0)]).extra_sensors[0].name == name


def test_sensors_given_as_generators_are_kept():
    """The checks read the argument once; a generator was then empty when kept."""
    session = EnergySession(extra_sensors=(ConstantPowerSensor(n, 5.0) for n in ("switch", "fan-0")))
    assert [s.name for s in session.extra_sensors] == ["switch", "fan-0"]
    assert [s.name for s in EnergySession(sensors=(ConstantPowerSensor(n, 1.0) for n in ["a"])).sensors] == ["a"]
