"""The CPU estimate bills a child process's CPU time to when it ran, not to when it was reaped.

A fake host on a fake clock: this process's CPU time (with its reaped children's, as getrusage
gives it), its child processes as psutil lists them, the newest pid of /proc/loadavg and each
pid's parent as /proc/<pid>/status gives it.
"""

import contextlib
import os
from collections import namedtuple

import psutil
import pytest

from greencallbacks.meter import Meter
from greencallbacks.sensors import estimate
from greencallbacks.sensors.estimate import CpuEstimateSensor
from tests.fakes.scripted import FakeClock

Times = namedtuple("Times", "user system children_user children_system")
TDP_W, CPUS = 20.0, 2  # 10 J per CPU-second; 20 W at most


class FakeChild:
    def __init__(self, pid: int, parent: int) -> None:
        self.pid, self.parent, self.cpu_s, self.reaped = pid, parent, 0.0, False

        self.waited_s = 0.0  # its own children's, once it waited for them

    def cpu_times(self) -> Times:
        if self.reaped:
            raise psutil.NoSuchProcess(self.pid)
        return Times(self.cpu_s, 0.0, self.waited_s, 0.0)  # a zombie's time is still readable

    def ppid(self) -> int:
        return self.parent

    def oneshot(self):
        return contextlib.nullcontext()


class FakeHost:
    def __init__(self, clock: FakeClock, listing_s: float = 0.0) -> None:
        self.clock, self.listing_s = clock, listing_s
        self.own_s = self.reaped_s = 0.0
        self.live: list[FakeChild] = []
        self.parents: dict[int, int | None] = {}
        self.newest_pid = 1000
        self.listings = 0

    def children(self, recursive: bool = False) -> list[FakeChild]:  # psutil.Process().children
        self.listings += 1
        self.clock.advance(self.listing_s)
        return list(self.live)

    def born(self, parent: int | None) -> int:  # a process (parent None: a thread, or gone)
        self.newest_pid += 1
        self.parents[self.newest_pid] = parent
        return self.newest_pid

    def spawn(self, parent: int | None = None) -> FakeChild:
        parent = parent or os.getpid()
        child = FakeChild(self.born(parent), parent)
        self.live.append(child)
        return child

    def process(self, pid: int) -> FakeChild:  # psutil.Process(pid)
        return next(child for child in self.live if child.pid == pid)

    def reap(self, child: FakeChild, by: FakeChild | None = None) -> None:  # waited for by this process, or `by`
        child.reaped = True
        self.live.remove(child)
        if by is None:
            self.reaped_s += child.cpu_s + child.waited_s
        else:
            by.waited_s += child.cpu_s + child.waited_s


def fake_tree(monkeypatch, host: FakeHost) -> estimate._ProcessTree:
    tree = estimate._ProcessTree(newest_pid=lambda: host.newest_pid, parent_pid=host.parents.get, clock=host.clock)
    tree._pid, tree._process = os.getpid(), host  # as if this process were listed already
    monkeypatch.setattr(psutil, "Process", host.process)
    monkeypatch.setattr(estimate, "_TREE", tree)
    monkeypatch.setattr(estimate, "_own_and_waited_cpu_seconds", lambda: (host.own_s, host.reaped_s))
    monkeypatch.setattr(estimate, "_pid_exists", lambda pid: any(child.pid == pid for child in host.live))
    # The CPU clock of a live (or zombie) child; None once waited for.
    monkeypatch.setattr(estimate, "_process_cpu_seconds",
                        lambda pid: next((child.cpu_s for child in host.live if child.pid == pid), None))
    return tree


def test_a_child_is_billed_to_the_epoch_it_ran_in_not_the_one_that_reaps_it(monkeypatch):
    """The probe's fire-and-forget Popen: 0.3 CPU-s in epoch 1, a zombie until epoch 3 reaps it.
    Listed every 2 s, the tree never showed it: epoch 1 got this process's own time only and a
    30 ms epoch 3 the child's 3 J (over 100 W on a 20 W CPU)."""
    clock = FakeClock()
    host = FakeHost(clock)
    fake_tree(monkeypatch, host)
    sensor = CpuEstimateSensor(TDP_W, sockets=1, logical_cpus=CPUS, clock=clock)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=clock, off_thread=True)
    meter._poller.manual = True  # the test runs the meter thread's steps on the fake clock
    child = None

    def run(seconds: float) -> None:  # this process keeps half a CPU busy; the child a whole one
        for _ in range(round(seconds / 0.01)):
            clock.advance(0.01)
            host.own_s += 0.005
            if child is not None and not child.reaped and child.cpu_s < 0.3 - 1e-9:
                child.cpu_s += 0.01
            meter._poller.step()

    marks = [meter.snapshot(exact=True)]
    run(0.5)  # epoch 0
    marks.append(meter.snapshot())
    child = host.spawn()
    run(1.0)  # epoch 1: the child runs 0.3 s, then exits unreaped
    marks.append(meter.snapshot())
    run(0.5)  # epoch 2
    marks.append(meter.snapshot())
    host.reap(child)  # epoch 3: 30 ms, reaps it (the next Popen)
    run(0.03)
    marks.append(meter.snapshot())
    run(0.5)  # epoch 4
    marks.append(meter.snapshot(exact=True))
    meter.close()
    epochs = [meter.between(a, b).energy_j for a, b in zip(marks, marks[1:])]
    own = [0.5 * 0.5 * 10, 0.5 * 1.0 * 10, 0.5 * 0.5 * 10, 0.5 * 0.03 * 10, 0.5 * 0.5 * 10]
    assert epochs[1] == pytest.approx(own[1] + 3.0, abs=0.1)  # the child's 0.3 CPU-s x 10 J
    assert epochs[3] == pytest.approx(own[3], abs=0.01)  # not the child's time again
    assert sum(epochs) == pytest.approx(sum(own) + 3.0)  # every joule once


def test_cpu_time_seen_late_at_the_runs_last_read_is_billed(monkeypatch):
    """A child born and reaped between two polls is seen only when reaped; seen at the run's last
    read, its time is billed there: the run's total stays exact (a cap on the pace of billing,
    tried for a short phase's sake, left it unbilled)."""
    clock = FakeClock()
    cpu = {"s": 0.0}
    monkeypatch.setattr(estimate, "process_tree_cpu_seconds", lambda process=None: cpu["s"])
    monkeypatch.setattr(estimate._TREE, "has_live_children", lambda: False)  # read at boundaries
    sensor = CpuEstimateSensor(TDP_W, sockets=1, logical_cpus=CPUS, clock=clock)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=clock, off_thread=True)
    meter._poller.manual = True
    first = meter.snapshot(exact=True)
    clock.advance(0.03)
    cpu["s"] += 0.3 + 0.015  # the reaped child's 0.3 CPU-s, and this process's half CPU
    last = meter.snapshot(exact=True)
    meter.close()
    assert meter.between(first, last).energy_j == pytest.approx(0.315 * 10)


def test_the_meter_thread_finds_the_processes_born_in_the_tree_by_their_pids(monkeypatch):
    """Listing walks all of /proc (12-20 ms for ~150 processes on the benchmark VM, 180 ms while
    training held the GIL): the poll lists the tree every 2 s, and in between looks only at the
    pids handed out since, taking in those whose parent is in the tree; where too many were
    handed out to look at, it lists the tree, at most 1 % of the time."""
    clock = FakeClock()
    host = FakeHost(clock)
    tree = fake_tree(monkeypatch, host)
    tree.watch()
    assert host.listings == 1
    for _ in range(19):  # 1.9 s, nothing born: no listing
        clock.advance(0.1)
        tree.watch()
    assert host.listings == 1
    clock.advance(0.15)
    tree.watch()  # 2 s old: listed again
    assert host.listings == 2
    host.born(None)  # a thread of this process
    child = host.spawn()
    host.born(12345)  # a process of someone else's
    clock.advance(0.1)
    tree.watch()
    assert tree.members()[1] == [child] and host.listings == 2  # found without listing the tree
    grandchild = host.spawn(parent=child.pid)
    clock.advance(0.1)
    tree.watch()
    assert tree.members()[1] == [child, grandchild] and host.listings == 2
    host.live = []
    host.listing_s = 0.01  # a busy host: each listing takes 10 ms, and processes are born all the time
    for _ in range(30):
        host.newest_pid += 1000
        clock.advance(0.1)
        tree.watch()
    assert host.listings == 2 + 3  # every ~1 s (10 ms x 100), not every 0.1 s
    assert not tree.has_live_children()


def test_a_boundary_counts_each_childs_time_once_without_a_proc_read(monkeypatch):
    """A boundary adds to this process's CPU time (getrusage) each child's CPU clock now, with the
    time it waited for as the meter's thread last read it: no /proc read. A child this process
    waited for since that read is in its own waited-for time, and counted there only, with what
    it had waited for itself; a grandchild its live parent waited for keeps its read (the
    parent's read does not hold it); a pid taken by a new process (its clock below the read) is
    not the child read."""
    clock = FakeClock()
    host = FakeHost(clock)
    fake_tree(monkeypatch, host)
    monkeypatch.setattr(estimate, "PROCESS_CPU_CLOCKS", True)
    sensor = CpuEstimateSensor(TDP_W, sockets=1, logical_cpus=CPUS, clock=clock)  # 10 J per CPU-second
    worker, other = host.spawn(), host.spawn()
    helper, assistant = host.spawn(parent=worker.pid), host.spawn(parent=other.pid)
    worker.cpu_s, other.cpu_s, helper.cpu_s, assistant.cpu_s = 1.0, 0.5, 0.2, 0.1
    sensor.poll()  # the meter's thread reads them (/proc)
    worker.cpu_s += 0.1
    host.own_s += 0.03
    assert sensor.energy_j() == pytest.approx(19.3)  # the worker's 0.1 CPU-s since the read, at once
    # (This process keeps working: a read short of the tree's time would show, not be held.)
    host.reap(helper, by=worker)
    host.own_s += 0.01
    assert sensor.energy_j() == pytest.approx(19.4)  # not lost until the next read
    host.reap(assistant, by=other)
    host.reap(other)
    host.own_s += 0.01
    assert sensor.energy_j() == pytest.approx(19.5)  # in this process's waited-for time, not twice
    sensor.poll()
    host.own_s += 0.01
    assert sensor.energy_j() == pytest.approx(19.6)
    host.reap(worker)
    newcomer = FakeChild(worker.pid, os.getpid())  # its pid, taken again at once
    newcomer.cpu_s = 0.01
    host.live.append(newcomer)
    host.own_s += 0.01
    assert sensor.energy_j() == pytest.approx(19.7)
