"""The CPU estimate's phases with real DataLoader worker processes and the real meter.

Each boundary is bracketed by reads of the process tree's CPU time (getrusage, and each live
descendant's CPU clock and /proc times): the truth lies between them. The meter's thread is run
by hand at chosen points (as it runs every 0.1 s), mostly not right before a boundary. At
100 J per CPU-second, when boundaries carried the tree's CPU time forward from the meter thread's
latest read at its rate, a 30 ms busy phase after an idle spell read ~0 J of 3 J, and a phase
after the workers' busy spell up to ~2 x its CPU time, held as a floor for the next.
"""

import resource
import sys
import time

import pytest

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

from greencallbacks.meter import Meter  # noqa: E402
from greencallbacks.sensors import estimate  # noqa: E402
from greencallbacks.sensors.estimate import CpuEstimateSensor  # noqa: E402

J_PER_CPU_S = 100.0  # tdp_w=100 on one logical CPU
SLACK_S = 1e-4  # float sums of microsecond figures


def burn(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


class Busy(torch.utils.data.Dataset):
    def __init__(self, items: int, seconds: float) -> None:
        self.items, self.seconds = items, seconds

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int):
        burn(self.seconds)
        return torch.zeros(1)


def child_seconds(child) -> float | None:
    """A child's CPU time: its threads' from the kernel's run time (/proc's utime and stime are
    the same truncated to 10 ms ticks each, too coarse for a 20 ms phase), with the time of its
    own children it waited for."""
    try:
        t = child.cpu_times()
        threads = time.clock_gettime((~child.pid << 3) | 2)  # Linux: the process's CPU clock
    except (psutil.Error, OSError):
        return None
    return threads + t.children_user + t.children_system


def tree_seconds(children) -> float:
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
    return total + sum(s for s in map(child_seconds, children) if s is not None)


class Run:
    def __init__(self, monkeypatch) -> None:
        # A tree of its own, listed afresh (other tests' processes are not this one's).
        monkeypatch.setattr(estimate, "_TREE", estimate._ProcessTree())
        self.sensor = CpuEstimateSensor(tdp_w=J_PER_CPU_S, sockets=1, logical_cpus=1)
        self.meter = Meter([self.sensor], fallback=None, off_thread=True)
        self.meter._poller.manual = True  # its thread's steps are run by `meter_thread`
        self.me = psutil.Process()
        self.marks: list[tuple[str, float, float, float]] = []

    def meter_thread(self) -> None:
        self.meter._poller._due.clear()  # all due now
        self.meter._poller.step()

    def boundary(self, name: str, exact: bool = False) -> None:
        children = self.me.children(recursive=True)
        low = tree_seconds(children)
        joules = self.meter.snapshot(exact=exact).energy_j["cpu"]
        high = tree_seconds(children)
        self.marks.append((name, joules / J_PER_CPU_S, low, high))

    def check(self) -> list[str]:
        _, first, first_low, first_high = self.marks[0]
        rows = []
        for (name, seconds, low, high), (_, before, low_before, high_before) in zip(self.marks[1:], self.marks):
            rows.append(f"{name}: {(seconds - before) * J_PER_CPU_S:.3f} J; the tree used "
                        f"{(low - high_before) * J_PER_CPU_S:.3f}..{(high - low_before) * J_PER_CPU_S:.3f} J")
        print("\n".join(rows))
        for (name, seconds, low, high), row in zip(self.marks[1:], rows):
            used = seconds - first  # since the run's first boundary: each phase's error, added up
            assert used <= high - first_low + SLACK_S, f"more than the tree used: {row}"
            assert used >= low - first_high - SLACK_S, f"less than the tree used: {row}"
        return rows


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the truth reads Linux's per-process CPU clocks")
@pytest.mark.parametrize("persistent", [True, False])
def test_each_phase_gets_its_own_cpu_time_with_dataloader_workers(monkeypatch, persistent):
    run = Run(monkeypatch)
    train = torch.utils.data.DataLoader(Busy(12, 0.01), batch_size=1, num_workers=2, persistent_workers=persistent)
    try:
        run.boundary("start", exact=True)
        for index, _ in enumerate(train):  # workers busy; this process a little
            burn(0.002)
            if index % 4 == 3:
                run.meter_thread()
        run.boundary("epoch 1")
        for _ in range(3):  # idle (persistent workers idle too)
            time.sleep(0.05)
            run.meter_thread()
        run.boundary("idle")
        burn(0.03)
        run.boundary("busy 30 ms")
        validation = torch.utils.data.DataLoader(Busy(8, 0.01), batch_size=1, num_workers=2)
        for index, _ in enumerate(validation):  # its own workers, ended and waited for at its end
            if index % 4 == 3:
                run.meter_thread()
        run.boundary("validation")
        burn(0.02)
        run.boundary("busy 20 ms after its workers ended")
        run.meter_thread()
        for index, _ in enumerate(train):
            burn(0.002)
            if index % 4 == 3:
                run.meter_thread()
            if index == 4:  # a validation check mid-epoch: the workers are still at work
                run.boundary("epoch 2, first 5 batches")
        run.boundary("epoch 2, the rest")
        burn(0.01)
        run.boundary("end", exact=True)
    finally:
        del train
        run.meter.close()
    run.check()  # each boundary within its bracket: each phase its own CPU time, the run's total all of it
