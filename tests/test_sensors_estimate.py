"""Estimated sensors: CPU from TDP and CPU time, RAM from W/GB, declared constants."""

import math
import os
import random
import subprocess
import sys

import pytest

from greencallbacks.sensors import estimate
from greencallbacks.sensors.base import Kind, Method, SensorError
from greencallbacks.sensors.estimate import (
    BYTES_PER_GB,
    DEFAULT_W_PER_CORE,
    ConstantPowerSensor,
    CpuEstimateSensor,
    RamEstimateSensor,
    is_virtual_machine,
    lookup_tdp_w,
    process_tree_cpu_seconds,
    resolve_cpu_power,
)
from tests.fakes.cpuinfo import write_cpuinfo
from tests.fakes.scripted import FakeClock


class Counter:
    """An injectable cumulative quantity the test moves by hand."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


# -- CPU ----------------------------------------------------------------------------------------


def test_cpu_energy_is_tdp_times_share_of_busy_cpus():
    cpu_seconds = Counter(50.0)  # time used before the sensor existed is not counted
    sensor = CpuEstimateSensor(120.0, sockets=2, logical_cpus=16, cpu_seconds=cpu_seconds)
    assert (sensor.kind, sensor.method) == (Kind.CPU, Method.ESTIMATED)
    assert sensor.energy_j() == 0.0
    # 4 logical CPUs busy for 10 s = 40 CPU-seconds out of 160: a quarter of 240 W for 10 s.
    cpu_seconds.value += 40.0
    assert sensor.energy_j() == pytest.approx(0.25 * 240.0 * 10.0)
    assert "120 W per socket (given) x 2 socket(s)" in sensor.note


def test_cpu_time_that_dips_is_not_counted_twice():
    cpu_seconds = Counter(0.0)
    sensor = CpuEstimateSensor(80.0, sockets=1, logical_cpus=8, cpu_seconds=cpu_seconds)
    cpu_seconds.value = 8.0
    sensor.poll()
    cpu_seconds.value = 6.0  # a child exited and is not reaped yet: its time is missing for a while
    sensor.poll()
    assert sensor.energy_j() == pytest.approx(80.0)
    cpu_seconds.value = 9.0  # reaped: its time is back, plus one more CPU-second
    assert sensor.energy_j() == pytest.approx(90.0)


def test_cpu_share_scales_the_estimate():
    cpu_seconds = Counter()
    sensor = CpuEstimateSensor(100.0, share=0.5, sockets=1, logical_cpus=4, cpu_seconds=cpu_seconds)
    cpu_seconds.value = 4.0
    assert sensor.energy_j() == pytest.approx(50.0)
    assert sensor.tdp_w == pytest.approx(50.0)


def test_tdp_is_looked_up_from_the_cpu_model(tmp_path):
    metal = write_cpuinfo(tmp_path, "Intel(R) Xeon(R) Platinum 8480+", sockets=2, cores=56, vm=False)
    tdp_w, note, _ = resolve_cpu_power(cpuinfo_path=metal)
    assert tdp_w == 700.0
    assert "Intel Xeon Platinum 8480+" in note and "CodeCarbon" in note and "MIT" in note
    assert lookup_tdp_w("AMD EPYC 7763 64-Core Processor") == ("AMD EPYC 7763", 280.0)
    assert lookup_tdp_w("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz") == ("Intel Xeon E5-2680 v4", 120.0)
    assert lookup_tdp_w("Apple M2 Pro") == ("Apple M2 Pro", 35.0)  # the most specific entry wins


def test_a_turbo_figure_in_the_upstream_table_is_corrected_to_base_power_and_says_so(tmp_path):
    """The table gives base power (i9-13900K 125 W); CodeCarbon's gave the i7-12700K its 190 W
    Maximum Turbo Power, billing it 1.5 times its peers. The corrected row says where its figure is from."""
    desktop = write_cpuinfo(tmp_path, "12th Gen Intel(R) Core(TM) i7-12700K", sockets=1, cores=12, vm=False)
    power = resolve_cpu_power(cpuinfo_path=desktop)
    assert power.watts == 125.0 and "Processor Base Power 125 W" in power.note and "additions" in power.source
    assert lookup_tdp_w("12th Gen Intel(R) Core(TM) i7-1270P") == ("Intel Core i7-1270P", 28.0)
    assert lookup_tdp_w("13th Gen Intel(R) Core(TM) i5-1335U") == ("Intel Core i5-1335U", 15.0)


def busy_for_an_hour(sensor, cpu_seconds, busy_cpus):
    """Mean watts billed for ``busy_cpus`` logical CPUs kept busy for an hour."""
    cpu_seconds.value += busy_cpus * 3600.0
    return sensor.energy_j() / 3600.0


def test_a_vm_is_billed_its_vcpus_share_of_the_host_socket_not_the_whole_socket(tmp_path):
    """A cloud VM's /proc/cpuinfo names the host's CPU but shows only the VM: 8 vCPUs on one
    'socket'. 8 busy vCPUs of a 360 W, 96-core (192-thread) EPYC 9654 were billed 360 W, the
    whole socket; their share is 8/192 of it, 15 W."""
    vm = write_cpuinfo(tmp_path, "AMD EPYC 9654 96-Core Processor", cores=4, vm=True)
    assert is_virtual_machine(vm)
    cpu_seconds = Counter()
    sensor = CpuEstimateSensor(cpuinfo_path=vm, logical_cpus=8, physical_cores=4, cpu_seconds=cpu_seconds)
    assert sensor.joules_per_cpu_second == pytest.approx(360.0 / 192)  # 1.875 W per busy vCPU
    assert busy_for_an_hour(sensor, cpu_seconds, 8) == pytest.approx(15.0)
    assert sensor.tdp_w == pytest.approx(15.0)  # what the VM's CPUs draw, all busy
    assert sensor.note.startswith("VM: TDP 360 W per host socket") and "192 hardware threads" in sensor.note
    # A name without a core count: the table's threads (a custom cloud SKU, as the retail 8480+).
    vm = write_cpuinfo(tmp_path, "Intel(R) Xeon(R) Platinum 8480C", cores=48, threads_per_core=1, vm=True)
    cpu_seconds = Counter()
    sensor = CpuEstimateSensor(cpuinfo_path=vm, logical_cpus=48, physical_cores=48, cpu_seconds=cpu_seconds)
    assert sensor.joules_per_cpu_second == pytest.approx(350.0 / 112)  # 3.125 W per busy vCPU
    assert busy_for_an_hour(sensor, cpu_seconds, 48) == pytest.approx(150.0)


def test_bare_metal_is_billed_the_tdp_per_hardware_thread_as_before(tmp_path):
    """No hypervisor flag: all sockets' TDP over all logical CPUs, which is the same per busy CPU."""
    metal = write_cpuinfo(tmp_path, "AMD EPYC 9654 96-Core Processor", sockets=2, cores=96, vm=False)
    assert not is_virtual_machine(metal)
    cpu_seconds = Counter()
    sensor = CpuEstimateSensor(cpuinfo_path=metal, logical_cpus=384, physical_cores=192, cpu_seconds=cpu_seconds)
    assert sensor.tdp_w == 720.0 and sensor.joules_per_cpu_second == pytest.approx(720.0 / 384)  # 1.875 W
    assert busy_for_an_hour(sensor, cpu_seconds, 384) == pytest.approx(720.0)
    assert sensor.note.startswith("TDP 360 W per socket x 2 socket(s)")
    metal = write_cpuinfo(tmp_path, "Intel(R) Xeon(R) Platinum 8480+", sockets=2, cores=56, vm=False)
    sensor = CpuEstimateSensor(cpuinfo_path=metal, logical_cpus=224, physical_cores=112, cpu_seconds=Counter())
    assert sensor.tdp_w == 700.0 and sensor.joules_per_cpu_second == pytest.approx(350.0 / 112)  # 3.125 W


def test_a_vm_whose_host_socket_size_is_unknown_gets_the_per_core_default_not_the_socket(tmp_path):
    """The 8275CL's TDP is known (240 W), its threads per socket are not: 4 busy vCPUs were billed
    the whole socket, 240 W; the per-core default bills the VM's 2 cores, 20 W."""
    vm = write_cpuinfo(tmp_path, "Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz", cores=2, vm=True)
    cpu_seconds = Counter()
    sensor = CpuEstimateSensor(cpuinfo_path=vm, logical_cpus=4, physical_cores=2, cpu_seconds=cpu_seconds)
    assert sensor.joules_per_cpu_second == pytest.approx(DEFAULT_W_PER_CORE * 2 / 4)  # 5 W per busy vCPU
    assert busy_for_an_hour(sensor, cpu_seconds, 4) == pytest.approx(20.0)
    assert sensor.note.startswith("VM: host socket size unknown") and "240 W per host socket" in sensor.note
    assert sensor.source.startswith("a default of 10 W per physical core x CPU time (a VM")


def test_a_tdp_the_user_gives_is_per_socket_cpuinfo_shows_in_a_vm_too(tmp_path):
    """In a VM, cpu_tdp_w= is the VM's share (documented): 15 W over its 8 vCPUs, not looked up."""
    vm = write_cpuinfo(tmp_path, "AMD EPYC 9654 96-Core Processor", cores=4, vm=True)
    sensor = CpuEstimateSensor(15.0, cpuinfo_path=vm, logical_cpus=8, cpu_seconds=Counter())
    assert sensor.tdp_w == 15.0 and sensor.joules_per_cpu_second == pytest.approx(15.0 / 8)
    assert sensor.source == "TDP x CPU time (TDP 15 W per socket, given by the user)"


def test_the_source_a_paper_cites_says_which_tdp_or_which_default(tmp_path):
    metal = write_cpuinfo(tmp_path, "Intel(R) Xeon(R) Platinum 8480+", sockets=2, cores=56, vm=False)
    assert CpuEstimateSensor(cpuinfo_path=metal, logical_cpus=224, cpu_seconds=Counter()).source == (
        "TDP x CPU time (TDP 350 W per socket of Intel Xeon Platinum 8480+, from CodeCarbon's CPU table)")
    vm = write_cpuinfo(tmp_path, "AMD EPYC 9654 96-Core Processor", cores=4, vm=True)
    assert CpuEstimateSensor(cpuinfo_path=vm, logical_cpus=8, cpu_seconds=Counter()).source == (
        "TDP x CPU time, a VM's share of its host's (1.875 W per busy vCPU: TDP 360 W per socket of AMD EPYC 9654, "
        "from CodeCarbon's CPU table, over 192 hardware threads)")
    unknown = write_cpuinfo(tmp_path, "AMD EPYC", cores=2, threads_per_core=1, vm=True)  # as a small cloud VM shows
    assert CpuEstimateSensor(cpuinfo_path=unknown, logical_cpus=2, physical_cores=2, cpu_seconds=Counter()).source == (
        "a default of 10 W per physical core x CPU time (no TDP found for CPU 'AMD EPYC'; the default is "
        "greencallbacks' assumption, see its data/SOURCES.md)")
    assert RamEstimateSensor().source == (
        "resident memory x 0.37 W/GB (the default, after Green Algorithms' 0.3725 W/GB, Advanced Science 2021)")
    assert RamEstimateSensor(0.5, basis="host").source == "installed RAM x 0.5 W/GB"


def test_cloud_gpu_hosts_custom_xeons_are_in_the_table_at_their_retail_parts_tdp():
    """The 8480C (DGX H100, Azure ND H100 v5) and 8480CL have the 8480+'s cores and clocks: 350 W,
    not the 10 W per core of an unknown CPU (2 x 56 cores billed 1120 W)."""
    assert lookup_tdp_w("Intel(R) Xeon(R) Platinum 8480C") == ("Intel Xeon Platinum 8480C", 350.0)
    assert lookup_tdp_w("Intel(R) Xeon(R) Platinum 8480CL") == ("Intel Xeon Platinum 8480CL", 350.0)
    assert lookup_tdp_w("Intel(R) Xeon(R) Platinum 8480+") == ("Intel Xeon Platinum 8480+", 350.0)


def test_the_lookup_finds_what_a_scan_of_every_row_finds():
    """The lookup parses only the lines that can match (a process's first fit parsed and tokenized
    all ~4,900 rows: ~40 ms of its set-up). Table names as /proc/cpuinfo decorates them, names
    cut short, and a word added, must find the entry a scan of every row, parsed whole, finds."""
    from greencallbacks.carbon.tables import read_rows

    rows = [(estimate._tokens(row["model"]), row["model"], float(row["tdp_w"])) for row in read_rows(estimate.TDP_TABLE)]

    def scan_every_row(cpu_model: str):  # the lookup's rule, the oracle
        wanted, best, found = estimate._tokens(cpu_model), None, None
        for tokens, model, tdp_w in rows:
            if tokens and tokens <= wanted and any(ch.isdigit() for ch in "".join(tokens)):
                if best is None or (len(tokens), len(model)) > best:
                    best, found = (len(tokens), len(model)), (model, tdp_w)
        return found

    rng = random.Random(0)
    names = ["AMD EPYC 7763 64-Core Processor", "Intel(R) Core(TM) 2 Duo CPU", "Apple M2 Pro", "Xeon"]
    for _, model, _ in rng.sample(rows, 100):
        words = model.split()
        names += [model, f"{model.replace('Intel ', 'Intel(R) ')}(R) CPU @ 2.40GHz", " ".join(words[:-1]),
                  f"{model} {rng.choice(rows)[1].split()[-1]}"]
    mismatched = [(name, lookup_tdp_w(name), scan_every_row(name)) for name in names
                  if lookup_tdp_w(name) != scan_every_row(name)]
    assert not mismatched, mismatched[:5]


def test_a_lookup_tokenizes_only_the_lines_that_can_match(monkeypatch):
    calls = []
    tokens = estimate._tokens
    monkeypatch.setattr(estimate, "_tokens", lambda name: calls.append(name) or tokens(name))
    for cached in ("_lookup_row", "_tdp_lines", "_tdp_table"):  # a first lookup in this process
        getattr(getattr(estimate, cached, None), "cache_clear", lambda: None)()
    assert lookup_tdp_w("Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz") == ("Intel Xeon Platinum 8480C", 350.0)
    assert len(calls) < 20, len(calls)  # the name, then the few rows with "8480c" in them


def test_unknown_cpu_uses_the_stated_default_per_core():
    assert lookup_tdp_w("AMD EPYC") is None  # a family name is not a model
    tdp_w, note, _ = resolve_cpu_power(cpu_model="Some Future CPU 9000", sockets=1, physical_cores=12)
    assert tdp_w == pytest.approx(DEFAULT_W_PER_CORE * 12) and DEFAULT_W_PER_CORE == 10.0
    assert "not in the TDP table" in note and "cpu_tdp_w" in note
    sensor = CpuEstimateSensor(
        cpu_model="Some Future CPU 9000", sockets=1, physical_cores=12, logical_cpus=24, cpu_seconds=Counter()
    )
    assert "10 W per physical core" in sensor.note


def test_an_arm_server_is_named_by_its_part_and_estimated_at_arm_core_power(tmp_path):
    """Arm's /proc/cpuinfo has no model name, only part numbers: the 10 W/core default put a
    64-core Graviton2 (Neoverse-N1) at 640 W."""
    from greencallbacks.sensors.estimate import ARM_W_PER_CORE, cpu_model_name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
                       "CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n" * 2)
    model = cpu_model_name(str(cpuinfo))
    assert model == "Arm Neoverse-N1"
    tdp_w, note, _ = resolve_cpu_power(cpu_model=model, sockets=1, physical_cores=64)
    assert tdp_w == pytest.approx(ARM_W_PER_CORE * 64) and "Arm Neoverse-N1" in note and "3 W per physical core" in note
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n")
    assert cpu_model_name(str(cpuinfo)) == "Arm core 0xfff"


def test_process_tree_cpu_time_includes_children():
    before = process_tree_cpu_seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert process_tree_cpu_seconds() - before >= 0.29


def test_process_tree_takes_in_the_other_ranks_processes_once_each(tmp_path, monkeypatch):
    """torchrun's ranks are siblings: the rank that measures the host adds them (and what they
    started) by pid. One that is already a child of this process is not counted twice."""
    import os
    import signal
    import time

    from greencallbacks.sensors import estimate

    monkeypatch.setattr(estimate, "_TREE", estimate._ProcessTree())

    def burner(name):  # burns 0.3 CPU-s, says so, then idles until killed
        return (f"import time, pathlib\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
                f"pathlib.Path({str(tmp_path / name)!r}).touch()\ntime.sleep(60)")

    child = subprocess.Popen([sys.executable, "-c", burner("child")])
    # A sibling: started through a shell that exits at once, so it is no descendant of this process.
    sibling = int(subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" > /dev/null 2>&1 & echo $!', burner("sibling")],
                                 check=True, capture_output=True, text=True).stdout)
    try:
        deadline = time.monotonic() + 30
        while not ((tmp_path / "child").exists() and (tmp_path / "sibling").exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
        own = sum(estimate._own_and_waited_cpu_seconds())
        without = process_tree_cpu_seconds() - own  # the child alone
        estimate.measure_other_processes([sibling, child.pid])
        with_others = process_tree_cpu_seconds() - own
        # (Other live children of this test process, from earlier tests, may add to both.)
        assert without >= 0.29
        assert 0.29 <= with_others - without < 0.5  # the sibling's 0.3 CPU-s; the child not again
    finally:
        child.kill()
        child.wait()
        os.kill(sibling, signal.SIGKILL)


def test_a_run_after_a_distributed_one_in_this_process_keeps_no_rank_of_it(tmp_path):
    """The host's first rank measured a sibling rank; the single-process run after it (rank 0's
    test() after a DDP fit) took its estimate's base with that sibling still in the tree, then
    left it out: the sibling's CPU time dropped out of the sum and 1 CPU-s of work recorded 0."""
    import os
    import signal
    import time

    from greencallbacks.distributed import LocalReducer
    from greencallbacks.records import read_records
    from greencallbacks.session import EnergySession

    code = (f"import time, pathlib\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
            f"pathlib.Path({str(tmp_path / 'burnt')!r}).touch()\ntime.sleep(60)")
    sibling = int(subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" > /dev/null 2>&1 & echo $!', code],
                                 check=True, capture_output=True, text=True).stdout)

    class FirstRankOfTheHost(LocalReducer):  # as place_on_hosts leaves it, without collectives
        host_pids = [sibling]

    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "burnt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        distributed = EnergySession(intensity=100, run_id="distributed", output_dir=tmp_path)
        distributed.start(reducer=FirstRankOfTheHost())
        distributed.stop()
        single = EnergySession(intensity=100, run_id="single", output_dir=tmp_path)
        single.start()
        start = time.process_time()
        while time.process_time() - start < 0.5:
            pass
        single.stop()
    finally:
        os.kill(sibling, signal.SIGKILL)
    cpu_j = sum(c["energy_j"] for r in read_records(tmp_path) if r.run_id == "single" for c in r.components if c["kind"] == "cpu")
    # 0.5 CPU-s of this process (plus whatever live children of the test process did meanwhile).
    assert 0.35 <= cpu_j / CpuEstimateSensor().joules_per_cpu_second < 1.5


def test_cpu_estimate_on_this_process_counts_real_work():
    sensor = CpuEstimateSensor(100.0, sockets=1, logical_cpus=4)
    total = 0
    for i in range(3_000_000):
        total += i
    assert sensor.energy_j() > 0.0
    assert sensor.scope == "process tree"


# -- RAM ----------------------------------------------------------------------------------------


def test_ram_energy_is_w_per_gb_times_memory_times_time():
    clock = FakeClock()
    sensor = RamEstimateSensor(0.5, memory_bytes=lambda: 4 * BYTES_PER_GB, clock=clock)
    assert (sensor.kind, sensor.method) == (Kind.RAM, Method.ESTIMATED)
    clock.advance(10.0)
    assert sensor.energy_j() == pytest.approx(0.5 * 4 * 10.0)


def test_ram_memory_changes_are_integrated_between_samples():
    clock = FakeClock()
    memory = Counter(2 * BYTES_PER_GB)
    sensor = RamEstimateSensor(0.5, memory_bytes=memory, clock=clock)  # 1 W
    clock.advance(5.0)
    memory.value = 6 * BYTES_PER_GB  # 3 W from the next sample on
    sensor.poll()
    clock.advance(5.0)
    # Trapezoid over the samples at 0 s (1 W), 5 s (3 W) and 10 s (3 W): 10 J + 15 J.
    assert sensor.energy_j() == pytest.approx(25.0)


def test_ram_default_is_0_37_w_per_gb_of_this_process_tree():
    sensor = RamEstimateSensor()
    assert sensor.w_per_gb == 0.37
    assert sensor.scope == "process tree" and "0.37 W/GB" in sensor.note
    assert 0.0 < sensor.power_w() < 0.37 * 2**40 / BYTES_PER_GB
    assert RamEstimateSensor(basis="host").scope == "host"


def test_ram_read_failure_raises_sensor_error():
    clock = FakeClock()
    failing = {"now": False}

    def memory():
        if failing["now"]:
            raise OSError("proc is gone")
        return BYTES_PER_GB

    sensor = RamEstimateSensor(memory_bytes=memory, clock=clock)
    failing["now"] = True
    with pytest.raises(SensorError, match="proc is gone"):
        sensor.poll()  # memory is read by the background poll, never at a boundary


def test_ram_boundary_read_holds_the_last_sampled_power_without_reading_memory():
    clock = FakeClock()
    reads = []
    sensor = RamEstimateSensor(w_per_gb=1.0, memory_bytes=lambda: reads.append(1) or 2 * BYTES_PER_GB, clock=clock)
    clock.advance(10.0)
    assert sensor.energy_j() == pytest.approx(20.0)  # 2 GB x 1 W/GB x 10 s
    assert len(reads) == 1  # the construction sample only


def test_with_child_processes_a_boundary_reads_its_own_cpu_time_and_the_childrens_last_read(monkeypatch):
    """With child processes (DataLoader workers) the tree's CPU time costs a /proc read per child:
    the meter's thread reads them every 0.1 s, and a boundary reads this process's own CPU time
    now (two getrusage calls) and adds the children's as last read. Carried forward whole at the
    rate of the read before, a 30 ms busy phase after an idle spell was billed 0 J. A cpu_seconds
    the caller gives is read in place."""
    from greencallbacks.meter import Meter
    from greencallbacks.sensors import estimate

    cpu = {"own": 0.0, "child": 0.0, "reads": 0}
    tree = estimate._ProcessTree()

    def tree_cpu_seconds(process=None):  # the whole tree, a /proc read per child
        cpu["reads"] += 1
        tree.keep_reads(0.0, [estimate._ChildRead(4242, True, cpu["child"], 0.0)])
        return cpu["own"] + cpu["child"]

    monkeypatch.setattr(estimate, "_TREE", tree)
    monkeypatch.setattr(estimate, "process_tree_cpu_seconds", tree_cpu_seconds)
    monkeypatch.setattr(estimate, "_own_and_waited_cpu_seconds", lambda: (cpu["own"], 0.0))
    monkeypatch.setattr(tree, "has_live_children", lambda: True)
    monkeypatch.setattr(tree, "watch", lambda: None)
    monkeypatch.setattr(estimate, "PROCESS_CPU_CLOCKS", False)  # (pid 4242 is no child: its read, as read)
    clock = FakeClock()
    sensor = CpuEstimateSensor(tdp_w=100.0, logical_cpus=1, clock=clock)  # 100 J per CPU-second
    assert not sensor.off_thread and not CpuEstimateSensor(tdp_w=100.0, cpu_seconds=lambda: 0.0).off_thread
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=clock, off_thread=True)
    meter._poller.manual = True  # the test runs the meter thread's steps on the fake clock
    meter.snapshot(exact=True)  # the run's first boundary reads the whole tree in place
    for _ in range(3):  # a worker keeps a CPU busy, read by the meter's thread every 0.1 s
        clock.advance(0.1)
        cpu["child"] += 0.1
        meter._poller.step()
    reads = cpu["reads"]
    clock.advance(0.05)
    cpu["child"] += 0.05
    cpu["own"] += 0.03  # a 30 ms busy phase of this process
    assert meter.snapshot().energy_j["cpu"] == pytest.approx(33.0)  # its own 3 J now, the child's as read
    assert cpu["reads"] == reads  # no /proc read at the boundary
    clock.advance(0.06)
    meter._poller.step()  # the child's 0.05 CPU-s since: in the next phase
    assert meter.snapshot().energy_j["cpu"] == pytest.approx(38.0)
    cpu["child"] += 0.02
    assert meter.snapshot(exact=True).energy_j["cpu"] == pytest.approx(40.0)  # the last boundary reads it all
    meter.close()


def test_without_child_processes_a_short_phase_gets_its_own_cpu_time(monkeypatch):
    """Read off the thread every 0.1 s, a 20 ms test phase was billed the rate of the 0.1 s
    before it (0 J after an idle spell) and the gap after it its energy: the demo's test phase
    read 0 J, and the life-cycle model's per-sample inference cost from it was 100 x too low.
    Without live child processes the tree's CPU time is read at the boundary (two getrusage calls)."""
    from greencallbacks.meter import Meter
    from greencallbacks.sensors import estimate

    cpu = {"seconds": 0.0}
    monkeypatch.setattr(estimate, "process_tree_cpu_seconds", lambda process=None: cpu["seconds"])
    children = {"live": False}
    monkeypatch.setattr(estimate._TREE, "has_live_children", lambda: children["live"])
    clock = FakeClock()
    sensor = CpuEstimateSensor(tdp_w=100.0, logical_cpus=1, clock=clock)  # 100 J per CPU-second
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=clock, off_thread=True)
    meter._poller.manual = True
    before = meter.snapshot()
    clock.advance(0.5)  # idle: no CPU time
    meter._poller.step()
    start = meter.snapshot()
    clock.advance(0.02)  # a 20 ms test phase keeping one CPU busy
    cpu["seconds"] += 0.02
    end = meter.snapshot()
    assert end.energy_j["cpu"] - start.energy_j["cpu"] == pytest.approx(2.0)  # 0.02 CPU-s x 100 J
    assert start.energy_j["cpu"] == before.energy_j["cpu"]
    children["live"] = True  # workers appear: still read at the boundary, their time as last read
    assert not sensor.off_thread and not meter.channels[0].off_thread
    meter.close()
    # getrusage: the same time os.times() counts in 10 ms ticks, waited-for children included
    assert sum(estimate._own_and_waited_cpu_seconds()) == pytest.approx(estimate._own_cpu_seconds(os.times()), abs=0.05)


# -- constant -----------------------------------------------------------------------------------


def test_constant_power_is_watts_times_time():
    clock = FakeClock()
    sensor = ConstantPowerSensor("switch", 12.5, clock=clock)
    assert (sensor.name, sensor.kind, sensor.method) == ("switch", Kind.OTHER, Method.ESTIMATED)
    clock.advance(4.0)
    assert sensor.energy_j() == pytest.approx(50.0)
    clock.advance(2.0)
    assert sensor.energy_j() == pytest.approx(75.0)


# -- argument checks ----------------------------------------------------------------------------


# A flag, and values no socket or device draws (1e308 W overflowed every boundary's sums).
@pytest.mark.parametrize("tdp_w", [0, -5, math.nan, math.inf, "ninety", True, 10_001.0, 1e308])
def test_bad_tdp_is_rejected_by_name(tdp_w):
    with pytest.raises(ValueError, match="tdp_w"):
        CpuEstimateSensor(tdp_w, cpu_seconds=Counter())


@pytest.mark.parametrize("watts", [-0.1, math.nan, math.inf, None, True, False, 1e308])
def test_bad_constant_watts_is_rejected_by_name(watts):
    with pytest.raises(ValueError, match="watts"):
        ConstantPowerSensor("fan", watts)


@pytest.mark.parametrize("w_per_gb", [-0.37, math.nan, math.inf, True, 1e308])
def test_bad_w_per_gb_is_rejected_by_name(w_per_gb):
    with pytest.raises(ValueError, match="w_per_gb"):
        RamEstimateSensor(w_per_gb, memory_bytes=lambda: 0)


def test_other_bad_arguments_are_rejected_by_name():
    with pytest.raises(ValueError, match="share"):
        CpuEstimateSensor(10.0, share=0.0, cpu_seconds=Counter())
    with pytest.raises(ValueError, match="share"):
        RamEstimateSensor(share=1.5, memory_bytes=lambda: 0)
    with pytest.raises(ValueError, match="basis"):
        RamEstimateSensor(basis="swap")
    with pytest.raises(ValueError, match="name"):
        ConstantPowerSensor("", 5.0)
    with pytest.raises(ValueError, match="logical_cpus"):
        CpuEstimateSensor(10.0, logical_cpus=0, cpu_seconds=Counter())


def test_the_largest_sane_values_are_accepted():
    from greencallbacks.sensors.estimate import MAX_CPU_TDP_W, MAX_DECLARED_W

    assert CpuEstimateSensor(MAX_CPU_TDP_W, cpu_seconds=Counter(), sockets=1).tdp_w == MAX_CPU_TDP_W
    assert ConstantPowerSensor("hall", MAX_DECLARED_W).watts == MAX_DECLARED_W
    assert ConstantPowerSensor("fan", 1).watts == 1.0  # an int is a number; a bool is not


def test_zero_is_a_valid_constant_and_ram_rate():
    assert ConstantPowerSensor("off", 0.0).energy_j() == 0.0
    clock = FakeClock()
    sensor = RamEstimateSensor(0.0, memory_bytes=lambda: BYTES_PER_GB, clock=clock)
    clock.advance(3.0)
    assert sensor.energy_j() == 0.0


def test_the_estimates_of_a_hosts_first_rank_say_they_cover_the_other_ranks(tmp_path, monkeypatch):
    """The host's first rank measures the other ranks' CPU and RAM too; its records said "process
    tree", as if the figures were its own."""
    from greencallbacks.distributed import LocalReducer
    from greencallbacks.records import read_records
    from greencallbacks.sensors import estimate
    from greencallbacks.session import EnergySession

    monkeypatch.setattr(estimate, "_TREE", estimate._ProcessTree())

    class FirstRankOfAHostOfThree(LocalReducer):  # as place_on_hosts leaves it, without collectives
        host_pids = [2**22 - 1, 2**22 - 2]  # (ended ranks: nothing to add, the label is the point)

    for run_id, reducer in (("ranks", FirstRankOfAHostOfThree()), ("alone", LocalReducer())):
        session = EnergySession(intensity=100, run_id=run_id, output_dir=tmp_path, gpus=[])
        session.start(reducer=reducer)
        session.stop()
    notes = {(r.run_id, c["kind"]): c.get("note", "") for r in read_records(tmp_path)
             for c in r.components if c["kind"] in ("cpu", "ram")}
    assert notes[("ranks", "cpu")].endswith("; CPU time of the process trees of this host's 3 ranks")
    assert "resident memory of the process trees of this host's 3 ranks" in notes[("ranks", "ram")]
    assert "ranks" not in notes[("alone", "cpu")]
    assert "resident memory of this process tree" in notes[("alone", "ram")]
