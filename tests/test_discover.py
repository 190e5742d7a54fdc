"""discover_sensors and fallback_for: what is measured, what is estimated, what replaces a failure."""

import json
import re
import sys
import warnings

import pytest

from greencallbacks import cli
from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors import discover_sensors, fallback_for
from greencallbacks.sensors.base import Kind, Method, SensorError
from greencallbacks.sensors.estimate import ConstantPowerSensor, CpuEstimateSensor, RamEstimateSensor, socket_count
from greencallbacks.sensors.nvml import NvmlGpuSensor
from greencallbacks.sensors.rapl import RaplSensor
from tests.fakes import fake_amdsmi as fa
from tests.fakes.fake_amdsmi import FakeAmdSmi
from tests.fakes.fake_powercap import FakePowercap
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid
from tests.fakes.scripted import FakeClock


@pytest.fixture
def powercap(tmp_path, monkeypatch):
    fake = FakePowercap(tmp_path / "powercap")
    fake.install(monkeypatch)
    return fake


@pytest.fixture
def nvml():
    fake = FakeNvml(FakeClock())
    for n in range(2):
        fake.add_gpu(gpu_uuid(n))
    return fake


def kinds(found):
    return [(type(s).__name__, s.name) for s in found.sensors]


def test_readable_rapl_is_used_for_cpu_and_dram(powercap):
    powercap.add_package(0)
    powercap.add_dram(0)
    found = discover_sensors(gpus=None, powercap_root=powercap.root)
    assert kinds(found) == [("RaplSensor", "cpu-package-0"), ("RaplSensor", "dram-0")]
    assert found.unavailable == []
    assert all(s.method == Method.COUNTER for s in found.sensors)


def test_rapl_without_dram_adds_a_ram_estimate_and_says_why(powercap):
    powercap.add_package(0)
    found = discover_sensors(gpus=None, powercap_root=powercap.root)
    assert kinds(found) == [("RaplSensor", "cpu-package-0"), ("RamEstimateSensor", "ram")]
    [missing] = found.unavailable
    assert missing.kind == Kind.DRAM and "no dram domain" in missing.reason


def test_permission_denied_falls_back_to_estimates_with_the_fix(powercap):
    powercap.deny(powercap.add_package(0))
    powercap.deny(powercap.add_dram(0))
    found = discover_sensors(gpus=None, powercap_root=powercap.root)
    assert kinds(found) == [("CpuEstimateSensor", "cpu"), ("RamEstimateSensor", "ram")]
    assert all(s.method == Method.ESTIMATED for s in found.sensors)
    assert {u.name for u in found.unavailable} == {"cpu-package-0", "dram-0"}
    assert all("chmod o+r" in u.fix for u in found.unavailable)


def test_one_unreadable_socket_means_the_whole_cpu_is_estimated(powercap):
    powercap.add_package(0)
    powercap.deny(powercap.add_package(1))
    found = discover_sensors(gpus=None, powercap_root=powercap.root)
    # Mixing socket 0's counter with a host-wide estimate would count socket 0 twice.
    assert kinds(found) == [("CpuEstimateSensor", "cpu"), ("RamEstimateSensor", "ram")]


def test_absent_rapl_falls_back_to_estimates(tmp_path):
    found = discover_sensors(gpus=None, powercap_root=tmp_path / "nothing", cpu_tdp_w=65.0, ram_w_per_gb=0.5)
    assert kinds(found) == [("CpuEstimateSensor", "cpu"), ("RamEstimateSensor", "ram")]
    cpu, ram = found.sensors
    assert cpu.tdp_w == pytest.approx(65.0 * socket_count())
    assert ram.w_per_gb == 0.5
    [missing] = found.unavailable
    assert "no RAPL powercap interface" in missing.reason


def test_host_false_measures_no_host_sensor(tmp_path, nvml):
    found = discover_sensors(host=False, pynvml=nvml, environ={}, powercap_root=tmp_path)
    assert kinds(found) == [("NvmlGpuSensor", "gpu0"), ("NvmlGpuSensor", "gpu1")]


def test_gpu_selection(tmp_path, nvml):
    found = discover_sensors(gpus=[1], host=False, pynvml=nvml, environ={})
    assert [(s.name, s.scope) for s in found.sensors] == [("gpu1", gpu_uuid(1))]
    found = discover_sensors(gpus=[], host=False, pynvml=nvml, environ={})
    assert found.sensors == [] and found.unavailable == []
    found = discover_sensors(gpus=None, host=False, pynvml=nvml, environ={})
    assert found.sensors == []
    assert nvml.calls["nvmlInit"] == 2  # discovery + one sensor; never for [] or None


@pytest.mark.parametrize("kwargs", [
    {"gpus": "all"}, {"gpus": "0"}, {"gpus": ["0"]}, {"gpus": 5}, {"gpus": [0.5]}, {"gpus": [-1]},
    {"cpu_tdp_w": "65"}, {"cpu_tdp_w": -1}, {"cpu_tdp_w": 1e9},
], ids=str)
def test_arguments_are_checked_as_the_callbacks_check_them(tmp_path, nvml, kwargs):
    """discover_sensors is public (a loop of one's own): gpus="all" raised a TypeError about '<=',
    gpus=5 'not iterable', cpu_tdp_w="65" was taken, -1 was refused naming tdp_w."""
    from greencallbacks.session import EnergySession

    (argument,) = kwargs
    with pytest.raises(ValueError) as by_discovery:
        discover_sensors(**kwargs, pynvml=nvml, environ={}, powercap_root=tmp_path)
    with pytest.raises(ValueError) as by_callbacks:
        EnergySession(**kwargs)
    assert str(by_discovery.value) == str(by_callbacks.value) and str(by_discovery.value).startswith(f"{argument} must be")


@pytest.mark.parametrize("kwargs, says", [
    ({"ram_w_per_gb": -1}, "ram_w_per_gb must be a finite number >= 0 up to 100, got -1"),
    ({"ram_w_per_gb": "0.37"}, "ram_w_per_gb must be a finite number >= 0 up to 100, got '0.37'"),
    ({"powercap_root": 5}, "powercap_root must be a directory path (str or os.PathLike), got 5"),
])
def test_the_estimate_settings_are_refused_by_their_own_names(tmp_path, kwargs, says):
    """ram_w_per_gb=-1 was refused naming 'w_per_gb', powercap_root=5 raised a bare TypeError."""
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        discover_sensors(gpus=None, **kwargs)


def test_gpus_from_any_iterable_of_indices_are_taken(tmp_path, nvml):
    found = discover_sensors(gpus=(i for i in [1]), host=False, pynvml=nvml, environ={})
    assert [s.name for s in found.sensors] == ["gpu1"]


def test_gpu_problems_are_listed_next_to_host_sensors(powercap, nvml):
    powercap.add_package(0)
    nvml.library_missing = True
    amd = FakeAmdSmi()  # initialises, finds no AMD GPU
    found = discover_sensors(pynvml=nvml, amdsmi=amd, environ={}, powercap_root=powercap.root)
    assert [s.name for s in found.sensors] == ["cpu-package-0", "ram"]
    assert [u.kind for u in found.unavailable] == [Kind.GPU, Kind.GPU, Kind.DRAM]
    # Both vendors were looked for, and each says why it is not there.
    nvidia, amd_gpu = found.unavailable[:2]
    assert "no NVIDIA driver" in nvidia.reason and "found no AMD GPU" in amd_gpu.reason


def test_an_amd_machine_measures_its_gpus_through_amdsmi_and_nvml_absence_is_no_news(tmp_path, nvml):
    nvml.library_missing = True
    amd = FakeAmdSmi()
    amd.add_board()
    amd.mi250x()
    found = discover_sensors(gpus="auto", host=False, pynvml=nvml, amdsmi=amd, environ={"HIP_VISIBLE_DEVICES": "0,2"})
    assert [(type(s).__name__, s.name) for s in found.sensors] == [("AmdGpuSensor", "gpu0"), ("Apportioned", "gpu1")]
    assert found.unavailable == []
    # No estimate for a GPU: the same board's power integrated, for a share of a board billed that
    # share (test_sensor_fallback_shares.py).
    replacements = [fallback_for(s) for s in found.sensors]
    assert [getattr(r, "method", None) for r in replacements] == [Method.SAMPLED, Method.APPORTIONED]
    assert (replacements[1].measured_by, replacements[1].share) == ("sampled", 0.5)


def test_nvidia_gpus_found_means_amdsmi_is_not_looked_for(tmp_path, nvml):
    amd = FakeAmdSmi()
    amd.add_board()
    found = discover_sensors(host=False, pynvml=nvml, amdsmi=amd, environ={})
    assert [type(s).__name__ for s in found.sensors] == ["NvmlGpuSensor", "NvmlGpuSensor"]
    assert amd.calls["amdsmi_init"] == 0


def test_extra_sensors_are_appended(tmp_path):
    extra = ConstantPowerSensor("switch", 20.0)
    found = discover_sensors(gpus=None, host=False, extra=[extra], powercap_root=tmp_path)
    assert found.sensors == [extra]


# -- fallback_for -------------------------------------------------------------------------------


def test_fallback_for_rapl_zones_is_an_estimate_for_their_share(powercap):
    for index in (0, 1):
        powercap.add_package(index)
        powercap.add_dram(index)
    found = discover_sensors(gpus=None, powercap_root=powercap.root, cpu_tdp_w=100.0, ram_w_per_gb=0.25)
    package = next(s for s in found.sensors if s.name == "cpu-package-1")
    dram = next(s for s in found.sensors if s.name == "dram-0")
    cpu_estimate = fallback_for(package)
    assert isinstance(cpu_estimate, CpuEstimateSensor)
    assert cpu_estimate.share == 0.5 and cpu_estimate.tdp_w == pytest.approx(100.0 * socket_count() * 0.5)
    ram_estimate = fallback_for(dram)
    assert isinstance(ram_estimate, RamEstimateSensor)
    assert ram_estimate.share == 0.5 and ram_estimate.w_per_gb == 0.25


def test_multi_die_sockets_are_measured_and_their_fallbacks_have_unique_names(powercap):
    from tests.fakes.fake_powercap import DEFAULT_RANGE_UJ, FakeZone

    for zone_index, (socket, die) in enumerate([(0, 0), (0, 1)]):
        FakeZone(powercap.root / f"intel-rapl:{zone_index}", f"package-{socket}-die-{die}", DEFAULT_RANGE_UJ, 1000)
        powercap.add_dram(zone_index)
    found = discover_sensors(gpus=None, powercap_root=powercap.root)
    names = [s.name for s in found.sensors]
    assert names == ["cpu-package-0-die-0", "cpu-package-0-die-1", "dram-0-die-0", "dram-0-die-1"]
    Meter(found.sensors).close()  # the meter refuses duplicate names: these are accepted
    fallbacks = [fallback_for(s) for s in found.sensors]
    assert [f.name for f in fallbacks] == [f"{name}-estimate" for name in names]
    assert all(f.share == 0.5 for f in fallbacks)


def test_fallback_for_a_gpu_is_its_power_sampled_and_for_an_estimate_none(nvml):
    [gpu] = discover_sensors(gpus=[0], host=False, pynvml=nvml, environ={}).sensors
    assert isinstance(gpu, NvmlGpuSensor)
    sampled = fallback_for(gpu)
    assert (sampled.method, sampled.scope, sampled.off_thread) == (Method.SAMPLED, gpu.scope, False)
    assert fallback_for(sampled) is None  # already sampled: nothing more to fall back to
    nvml.gpus[0].lose()
    with pytest.raises(SensorError):  # nothing measures a lost GPU
        fallback_for(gpu)
    assert fallback_for(ConstantPowerSensor("x", 1.0)) is None
    assert fallback_for(CpuEstimateSensor(10.0, cpu_seconds=lambda: 0.0)) is None


def test_meter_replaces_a_failing_rapl_package_with_the_estimate(powercap):
    zone = powercap.add_package(0)
    sensor = RaplSensor(zone.path)
    meter = Meter([sensor])
    try:
        window = meter.start()
        zone.add_joules(5.0)
        assert meter.snapshot().energy_j["cpu-package-0"] == pytest.approx(5.0)
        powercap.remove(zone)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = window.stop()
        assert any(issubclass(w.category, EnergyWarning) for w in caught)
        assert isinstance(meter.sensors[0], CpuEstimateSensor)
        assert result.energy_j >= 5.0
    finally:
        meter.close()


# -- `greencallbacks devices`: what was found, and why not ------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """The CLI imports pynvml and amdsmi itself: the fakes stand in for the modules."""
    for variable in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    nvml, amd = FakeNvml(FakeClock()), FakeAmdSmi()
    nvml.library_missing = True
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setitem(sys.modules, "amdsmi", amd)
    return nvml, amd


def test_devices_on_an_amd_machine_lists_the_die_and_its_share(machine, monkeypatch, capsys, recwarn):
    _, amd = machine
    amd.mi250x()
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    assert cli.main(["devices"]) == 0
    out = capsys.readouterr().out
    [gpu_line] = [line for line in out.splitlines() if line.strip().startswith("gpu0")]
    assert "apportioned" in gpu_line and "1 of the board's 2 dies" in gpu_line
    assert "NVIDIA" not in out.split("Not available:")[-1]  # NVML's absence is no news here
    assert not [w for w in recwarn if issubclass(w.category, EnergyWarning)]  # the listing says it


def test_devices_without_any_gpu_says_what_was_looked_for_and_how_to_enable_each(machine, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # the AMD binding is not installed
    assert cli.main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "no GPU: looked for NVIDIA GPUs through NVML and AMD GPUs through amdsmi" in out
    assert "no NVIDIA driver" in out and "AMD SMI Python bindings (amdsmi) are not installed" in out
    assert "fix: install the AMD SMI bindings: pip install 'greencallbacks[amd]'" in out


def test_devices_json_says_when_amd_gpus_are_not_permitted(machine, capsys):
    _, amd = machine
    amd.add_board()
    amd.init_error = fa.AMDSMI_STATUS_NO_PERM
    assert cli.main(["devices", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    [denied] = [u for u in listing["unavailable"] if "no permission" in u["reason"]]
    assert denied["kind"] == "gpu" and "'render' and 'video' groups" in denied["fix"]


# -- the devices the adapters ask discovery for ------------------------------------------------


def test_keras_on_jax_asks_for_the_local_cuda_index_even_when_it_is_0(monkeypatch):
    jax = pytest.importorskip("jax")
    pytest.importorskip("keras")
    from types import SimpleNamespace

    from greencallbacks.keras._backend import devices_and_sync

    # Process 1 of a jax.distributed job, one GPU per process (CUDA_VISIBLE_DEVICES=<rank>): its
    # device is CUDA 0 locally and device 1 globally. A local id of 0 is not "unknown".
    device = SimpleNamespace(platform="gpu", local_hardware_id=0, id=1, process_index=1)
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: [device])
    assert devices_and_sync("jax") == ([0], None)
    unknown = SimpleNamespace(platform="gpu", local_hardware_id=None, id=2)  # no local id: the device id
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: [unknown, SimpleNamespace(platform="cpu", id=0)])
    assert devices_and_sync("jax") == ([2], None)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_keras_training_on_the_cpu_asks_for_no_gpu(monkeypatch, backend):
    """A CPU-only TensorFlow wheel (or jax without its CUDA plugin) on a GPU host: no GPU device,
    which came out as None, "every visible GPU", and the fake host's 8 GPUs were billed 99.9 % of
    a CPU fit's energy."""
    module = pytest.importorskip(backend)
    pytest.importorskip("keras")
    from types import SimpleNamespace

    from greencallbacks.keras._backend import devices_and_sync

    if backend == "tensorflow":
        monkeypatch.setattr(module.config, "list_physical_devices", lambda kind=None: [])
    else:
        monkeypatch.setattr(module, "local_devices", lambda *args, **kwargs: [SimpleNamespace(platform="cpu", id=0)])
    assert devices_and_sync(backend) == ([], None)


@pytest.fixture
def cuda_box(monkeypatch):
    """torch believes CUDA is there (the GPUs themselves are the fake NVML's); synchronize is recorded."""
    torch = pytest.importorskip("torch")
    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda index=None: synced.append(index))
    return synced


@pytest.mark.parametrize("n_gpu, expected", [(4, [0, 1, 2, 3]), (1, [0])])
def test_hf_single_process_data_parallel_asks_for_every_gpu(cuda_box, n_gpu, expected):
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    import torch

    from greencallbacks.hf import _devices_and_sync

    # n_gpu > 1: one process, Trainer wraps the model in nn.DataParallel over cuda:0..n_gpu-1.
    indices, sync = _devices_and_sync(SimpleNamespace(device=torch.device("cuda:0"), n_gpu=n_gpu))
    assert indices == expected
    sync()
    assert cuda_box == expected  # every device's queued work is waited for at a boundary
    cpu = SimpleNamespace(device=torch.device("cpu"), n_gpu=0)
    assert _devices_and_sync(cpu) == ([], None)


def test_hf_data_parallel_measures_every_gpu(cuda_box, monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    import time
    from types import SimpleNamespace

    import torch

    import greencallbacks.sensors.nvml as nvml_module
    from greencallbacks.hf import EnergyCallback

    nvml = FakeNvml(time.monotonic)
    for n in range(4):
        nvml.add_gpu(gpu_uuid(n))
    monkeypatch.setattr(nvml_module, "import_pynvml", lambda: nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("greencallbacks.session._SAID", set())  # its notices stay out of other tests' way
    callback = EnergyCallback(intensity=100.0)
    callback._start(SimpleNamespace(device=torch.device("cuda:0"), n_gpu=4, world_size=1, output_dir=str(tmp_path)))
    try:
        names = [s.name for s in callback.session.tracker.meter.sensors]
    finally:
        callback._stop()
    assert [n for n in names if n.startswith("gpu")] == ["gpu0", "gpu1", "gpu2", "gpu3"]


@pytest.mark.parametrize("gpus", [[10**5000, -1], [4096], (i for i in [0, 10**400])])
def test_gpu_indices_out_of_range_are_refused_naming_gpus(gpus):
    """[10**5000, -1] raised Python's own 'Exceeds the limit (4300 digits)', naming nothing, and
    [10**400] was taken."""
    with pytest.raises(ValueError, match=r"^gpus must be .*ints from 0 to 1023.*, got \["):
        discover_sensors(gpus=gpus, host=False)
