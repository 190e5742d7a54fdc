"""Which physical GPU each joule came from: ranks sharing one GPU, GPUs that cannot be measured,
and other processes on the run's GPU. NVML is the fake of tests/fakes/fake_pynvml.py."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from greencallbacks import report
from greencallbacks.ledger import read_run_records
from greencallbacks.runs import load
from greencallbacks.sensors import nvml as nvml_module
from greencallbacks.session import EnergySession
from greencallbacks.tracker import SUMMARY_FILE
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid

REPO = Path(__file__).resolve().parent.parent
GPU_W, EPOCH_S, EPOCHS = 100.0, 10.0, 2

# Two gloo ranks, each with the fake NVML of one GPU at GPU_W on a fake clock, run twice: on the
# same GPU (one UUID: two DDP ranks given one device), then on one each. EPOCHS epochs of EPOCH_S.
RANKS = textwrap.dedent("""
    import os, sys
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def rank(index, port, out, repo):
        sys.path.insert(0, repo)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=index, world_size=2)
        from greencallbacks.carbon import Carbon
        from greencallbacks.distributed import TorchReducer
        from greencallbacks.meter import Meter
        from greencallbacks.sensors.discover import discover_sensors
        from greencallbacks.tracker import Tracker
        from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid
        from tests.fakes.scripted import FakeClock

        reducer = TorchReducer()
        for layout in ("shared", "own"):
            clock = FakeClock()
            nvml = FakeNvml(clock)
            nvml.add_gpu(gpu_uuid(0 if layout == "shared" else index), power_w={GPU_W})
            sensors = discover_sensors(gpus=[0], host=False, pynvml=nvml, environ={{}}, clock=clock).sensors
            tracker = Tracker(carbon=Carbon(intensity=200.0), output_dir=os.path.join(out, layout))
            tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: 1.7e9 + clock()),
                          reducer=reducer)
            for epoch in range({EPOCHS}):
                tracker.begin("train", epoch)
                clock.advance({EPOCH_S})
                tracker.end("train")
            tracker.finish()

    if __name__ == "__main__":
        mp.start_processes(rank, args=(int(sys.argv[1]), sys.argv[2], sys.argv[3]), nprocs=2, start_method="spawn")
""").format(GPU_W=GPU_W, EPOCHS=EPOCHS, EPOCH_S=EPOCH_S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp_path: Path) -> dict[str, tuple[list, dict]]:
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    done = subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {}
    for layout in ("shared", "own"):
        summary = json.loads((tmp_path / layout / SUMMARY_FILE).read_text())
        runs[layout] = read_run_records(summary["run_id"], [tmp_path / layout]), summary
    return runs


def gpu_joules(records) -> float:
    return sum(c["energy_j"] for r in records for c in r.components if c["kind"] == "gpu")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_on_one_gpu_bill_it_once_and_ranks_on_their_own_gpus_are_unchanged(tmp_path):
    pytest.importorskip("torch.distributed")
    # One GPU at 100 W for 2 x 10 s is 2000 J, whichever ranks read it: billed whole by each rank,
    # the run counted 4000 J.
    runs = run_two_ranks(tmp_path)
    records, summary = runs["shared"]
    assert gpu_joules(records) == pytest.approx(GPU_W * EPOCH_S * EPOCHS, rel=1e-3)
    for record in records:
        assert record.ranks == 2
        assert {c["uuid"] for c in record.components} == {gpu_uuid(0)}
        assert all("ranks 0, 1" in c["note"] for c in record.components)
    assert summary["gpus_shared"] == [{"uuid": gpu_uuid(0), "ranks": [0, 1], "scaled_by": 0.5}]

    # Two GPUs, one per rank: each billed whole, as before (4000 J), nothing said.
    records, summary = runs["own"]
    assert gpu_joules(records) == pytest.approx(2 * GPU_W * EPOCH_S * EPOCHS, rel=1e-3)
    assert {c["uuid"] for r in records for c in r.components} == {gpu_uuid(0), gpu_uuid(1)}
    assert not any(c.get("note") for r in records for c in r.components)
    assert "gpus_shared" not in summary


def fake_nvml(monkeypatch, gpus: int = 2, nvml: FakeNvml | None = None) -> FakeNvml:
    """The session's discovery finds ``gpus`` fake GPUs (no host sensors: their estimates say nothing here)."""
    nvml = nvml or FakeNvml()
    for index in range(gpus):
        nvml.add_gpu(gpu_uuid(index))
    monkeypatch.setattr(nvml_module, "import_pynvml", lambda: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus))))
    return nvml


def run_session(tmp_path: Path, gpus) -> dict:
    session = EnergySession(intensity=200.0, output_dir=tmp_path, gpus=gpus)
    session.start()
    session.tracker.begin("train", 0)
    session.tracker.end("train", samples=8)
    session.stop()
    return json.loads((tmp_path / SUMMARY_FILE).read_text())


def test_a_gpu_that_cannot_be_measured_from_the_start_is_named_in_the_summary_and_the_report(tmp_path, monkeypatch):
    nvml = fake_nvml(monkeypatch)
    dark = nvml.gpus[1]  # NVML lists it; neither its energy nor its power can be read (some vGPU profiles)
    dark.counter_supported = dark.instant_supported = dark.power_usage_supported = False
    with pytest.warns(UserWarning, match="gpu1 energy is not measured"):
        summary = run_session(tmp_path, [0, 1])
    [unmeasured] = summary["gpus_unmeasured"]
    assert unmeasured["name"] == "gpu1" and unmeasured["uuid"] == gpu_uuid(1)
    assert "neither energy nor power" in unmeasured["reason"]
    assert [s["scope"] for s in summary["sensors"] if s["kind"] == "gpu"] == [gpu_uuid(0)]

    loaded = load(tmp_path)
    data = report.summary(loaded.records, run_summaries=loaded.summaries, unfinished=loaded.unfinished)
    assert f"The GPU energy excludes gpu1 ({gpu_uuid(1)}), which could not be measured." in data["statement"]
    [note] = [n for n in data["provenance"] if "Not measured" in n]
    assert f"gpu1 ({gpu_uuid(1)})" in note and "neither energy nor power" in note
    assert not any(n.startswith("Every component was measured") for n in data["provenance"])
    assert "could not be measured" in report.render(loaded.records, "md", run_summaries=loaded.summaries)


def test_every_gpu_measured_leaves_the_summary_and_statement_as_they_were(tmp_path, monkeypatch):
    fake_nvml(monkeypatch)
    summary = run_session(tmp_path, [0, 1])
    assert "gpus_unmeasured" not in summary and "gpu_other_processes" not in summary
    loaded = load(tmp_path)
    assert "excludes" not in report.statement(loaded.records, run_summaries=loaded.summaries)


class NvmlWithProcesses(FakeNvml):
    """The fake NVML, listing ``pids`` as the compute processes of every GPU (pynvml's call and
    return shape: objects with ``pid``)."""

    def __init__(self, pids) -> None:
        super().__init__()
        self.pids = pids

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in self.pids]


OTHER_PID = 4_194_301  # above Linux's largest pid: no process of this run's


def test_another_process_on_the_runs_gpu_is_named_in_the_summary_and_the_report(tmp_path, monkeypatch):
    fake_nvml(monkeypatch, gpus=1, nvml=NvmlWithProcesses([os.getpid(), OTHER_PID]))
    with pytest.warns(UserWarning, match=f"other processes used this run's GPU.*{OTHER_PID}"):
        summary = run_session(tmp_path, [0])
    assert summary["gpu_other_processes"] == [
        {"gpu": "gpu0", "uuid": gpu_uuid(0), "pids": [OTHER_PID], "seen_at": ["start", "end"]}]
    loaded = load(tmp_path)
    data = report.summary(loaded.records, run_summaries=loaded.summaries, unfinished=loaded.unfinished)
    assert any(n.startswith(f"Other processes ran on gpu0 ({gpu_uuid(0)})") for n in data["provenance"])


class NvmlWithProcessesOn(FakeNvml):
    """The fake NVML, listing this process on every GPU and ``OTHER_PID`` too on GPU ``busy``."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy_uuid = gpu_uuid(busy)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        gpu = self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        pids = [os.getpid()] + ([OTHER_PID] if gpu.uuid == self.busy_uuid else [])
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in pids]


def test_another_process_on_a_later_ranks_gpu_is_in_the_summary_rank_0_writes(tmp_path, monkeypatch):
    """Two ranks (threads, over a real barrier), each on a GPU of its own; another job runs on
    rank 1's. Rank 0 writes the summary: it lists that job, found by rank 1 (it said nothing)."""
    import threading

    fake_nvml(monkeypatch, gpus=2, nvml=NvmlWithProcessesOn(busy=1))
    slots, barrier, errors = [None, None], threading.Barrier(2, timeout=30), []

    class ThreadReducer:
        world_size, hosts = 2, 1

        def __init__(self, rank):
            self.rank, self.measures_host = rank, rank == 0

        def all_gather(self, obj):
            slots[self.rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

    def rank(index):
        try:
            session = EnergySession(intensity=200.0, output_dir=tmp_path)
            session.start(device_indices=[index], reducer=ThreadReducer(index))
            session.tracker.begin("train", 0)
            session.tracker.end("train", samples=8)
            session.stop()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)
            barrier.abort()

    with pytest.warns(UserWarning, match=f"other processes used this run's GPU.*{OTHER_PID}"):
        threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["gpu_other_processes"] == [
        {"gpu": "gpu1", "uuid": gpu_uuid(1), "pids": [OTHER_PID], "seen_at": ["start", "end"]}]


@pytest.mark.parametrize("pids, pids_on_host", [
    ([os.getpid()], ()),  # this process alone
    ([os.getpid(), OTHER_PID], [OTHER_PID]),  # another rank of this run on this host
    ([OTHER_PID], ()),  # this process not among them: another pid namespace (a container), nothing can be told
])
def test_no_other_process_is_said_where_none_is_known(monkeypatch, pids, pids_on_host):
    nvml = fake_nvml(monkeypatch, gpus=1, nvml=NvmlWithProcesses(pids))
    from greencallbacks.sensors.discover import discover_sensors
    from greencallbacks.session import GpuNeighbours

    sensors = discover_sensors(gpus=[0], host=False, pynvml=nvml, environ={}).sensors
    neighbours = GpuNeighbours(sensors, pids_on_host)
    neighbours.look_at_end()
    assert neighbours.summary({}) is None
    for sensor in sensors:
        sensor.close()


class _ProcessInfoV2(ctypes.Structure):
    """What NVML's drivers write per process (nvmlProcessInfo_v2_t, 24 bytes), and what every
    nvidia-ml-py since 12.535.108 reads."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class _ProcessInfo12535_77(ctypes.Structure):
    """nvidia-ml-py 12.535.77's c_nvmlProcessInfo_t (copied by fields): one more 8-byte field, 32 bytes."""

    _fields_ = [*_ProcessInfoV2._fields_, ("usedGpuCcProtectedMemory", ctypes.c_ulonglong)]


class NvmlOf12535_77(NvmlWithProcesses):
    """The fake NVML as nvidia-ml-py 12.535.77 reads it on a driver that writes 24-byte entries
    (every one but 535.43 to 535.86): its process list read in 32-byte steps."""

    c_nvmlProcessInfo_t = _ProcessInfo12535_77

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        written = (_ProcessInfoV2 * (2 * len(self.pids) + 5))(
            *(_ProcessInfoV2(pid, 1 << 30, 0xFFFFFFFF, 0xFFFFFFFF) for pid in self.pids))
        read = (_ProcessInfo12535_77 * len(self.pids)).from_buffer(written)
        return [SimpleNamespace(pid=entry.pid, usedGpuMemory=entry.usedGpuMemory) for entry in read]


def test_nvidia_ml_py_12535_77s_misread_process_list_is_not_taken_for_other_processes(monkeypatch):
    """nvidia-ml-py 12.535.77 (the oldest release the declared floor nvidia-ml-py>=12.535 allows)
    reads NVML's process list with a 32-byte entry where drivers write 24 bytes: a second process
    of this run (another rank on this GPU) was read as pid 1073741824 (its memory use) and warned
    of as another job on the GPU. That binding's list is not used: nothing is said, as where NVML
    cannot list processes at all."""
    other_rank = os.getpid() + 1
    nvml = fake_nvml(monkeypatch, gpus=1, nvml=NvmlOf12535_77([os.getpid(), other_rank]))
    handle = nvml.gpus[0].handle
    nvml.nvmlInit()
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)] == [os.getpid(), 1 << 30]
    nvml.nvmlShutdown()
    from greencallbacks.sensors.discover import discover_sensors, gpu_process_ids
    from greencallbacks.session import GpuNeighbours

    sensors = discover_sensors(gpus=[0], host=False, pynvml=nvml, environ={}).sensors
    neighbours = GpuNeighbours(sensors, [other_rank])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neighbours.look_at_end()
    assert [str(w.message) for w in caught if "other processes" in str(w.message)] == []
    assert neighbours.summary({}) is None
    assert gpu_process_ids(sensors[0]) is None
    for sensor in sensors:
        sensor.close()


def test_the_misread_process_list_is_known_by_the_installed_pynvmls_entry_size():
    real = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed: nothing to compare with")
    from greencallbacks.sensors.discover import _misreads_process_list

    entry = real.c_nvmlProcessInfo_t
    assert _misreads_process_list(real) == (ctypes.sizeof(entry) != ctypes.sizeof(_ProcessInfoV2))
    layout = [(name, ctypes.sizeof(kind)) for name, kind in entry._fields_]
    assert layout in ([(n, ctypes.sizeof(k)) for n, k in s._fields_] for s in (_ProcessInfoV2, _ProcessInfo12535_77))
