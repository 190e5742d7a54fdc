"""Random sequences of what happens to a long training: epochs, checkpoints inside and between
them, logging steps, kills outright (SIGKILL: no handler runs) and exceptions anywhere, resumes
from any checkpoint of the run, and a last attempt that ends normally; on one rank and on four.

After each sequence: the records sum to the summary, to the tracker's total and to what a report
sums; each phase is written once (each rank's part once, where a failure wrote them apart); no
second of any attempt is counted twice; an attempt that failed is counted whole; one killed loses
at most ``HEARTBEAT_S`` (plus one logging interval) of what it measured, also where nothing
resumed it (the report reads its heartbeat). Run more with GC_KILL_SEEDS=200;
a failure names its seed and its steps.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import pytest

from greencallbacks import runs
from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.tracker import HEARTBEAT_S, SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

POWER_W, RUN, LOG_EVERY_S = 100.0, "killed-often", 5.0
SEEDS = range(int(os.environ.get("GC_KILL_SEEDS", "25")))


def attempt(directory, state, start_s: float, rank: int, reducer):
    clock = FakeClock(start_s)
    tracker = Tracker(output_dir=directory, run_id=RUN if state is None else None, carbon=Carbon(intensity=200.0))
    if state is not None:
        tracker.load_state_dict(state)
    tracker.start(Meter([ScriptedSensor(f"gpu{rank}", clock, power_w=POWER_W)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9), reducer=reducer)
    if reducer is not None:
        # Every rank has restored the checkpoint before any trains: the frameworks' first step
        # waits for all of them (DDP's gradient all-reduce). Without it a rank ran a minute
        # ahead here and wrote its new part over its killed one before rank 0 had read that.
        reducer.all_gather(None)
    return tracker, clock


def train(tracker, clock, rng, seconds: float) -> None:
    """Training steps: a logging step (the live values, which write the heartbeat when due) every LOG_EVERY_S."""
    while seconds > 0:
        step = min(LOG_EVERY_S, seconds)
        clock.advance(step)
        seconds -= step
        tracker.add_samples(8)
        tracker.live() if rng.random() < 0.5 else tracker.heartbeat()


def flow(seed: int, directory, rank: int = 0, reducer=None, saved: dict | None = None, asker=None):
    """One rank's part of seed ``seed``'s sequence (every rank draws the same); ``saved``: the
    checkpoints, rank 0's (the file a checkpoint is), shared by the ranks (``reducer.barrier``).
    ``asker``: an ``Asker`` told each attempt's tracker, as the Keras watch thread is."""
    rng = random.Random(seed)
    saved = {} if saved is None else saved
    checkpoints = []  # (its index in saved, the epoch to train next)
    elapsed, ended_by, steps = {}, {}, []  # attempt -> seconds it ran, "killed" or "finished"

    def checkpoint(epoch):
        state = tracker.state_dict()  # on every rank (Lightning dumps it on each; rank 0's is written)
        if rank == 0:
            saved[len(checkpoints)] = state
        if reducer is not None:
            reducer.all_gather(None)  # the others read it only once it is written
        checkpoints.append((len(checkpoints), epoch))

    attempts = rng.randint(2, 5)
    for number in range(attempts):
        index, epoch = rng.choice(checkpoints) if checkpoints and number else (None, 0)
        tracker, clock = attempt(directory, None if index is None else saved[index], 1000.0 * (number + 1), rank, reducer)
        begun = clock()
        if asker is not None:
            asker.ask(tracker)
        last = number == attempts - 1
        steps.append(f"attempt {tracker.ledger.attempt} from checkpoint at epoch {epoch}")
        killed = ""  # or how the attempt ends early: "killed" outright, or "failed" with an exception
        for _ in range(rng.randint(1, 4)):
            tracker.begin("train", epoch)
            cut = rng.random()
            train(tracker, clock, rng, rng.uniform(1.0, 150.0))
            if cut < 0.3:  # a checkpoint inside the epoch (Lightning's every_n_train_steps, HF's save_steps)
                checkpoint(epoch)
                steps.append(f"checkpoint in epoch {epoch}")
                train(tracker, clock, rng, rng.uniform(0.0, 100.0))
            if not last and rng.random() < 0.25:
                killed = "killed" if rng.random() < 0.7 else "failed"
                steps.append(f"{killed} in epoch {epoch}")
                break
            tracker.end("train")
            epoch += 1
            clock.advance(rng.uniform(0.0, 2.0))  # the gap between epochs
            if rng.random() < 0.6:  # the checkpoint at the epoch's end
                checkpoint(epoch)
                steps.append(f"checkpoint before epoch {epoch}")
        if not last and not killed:
            killed = "killed" if rng.random() < 0.7 else "failed"
            steps.append(f"{killed} between epochs")
        if asker is not None:
            asker.ask(None)  # a process killed asks nothing more
        elapsed[tracker.ledger.attempt] = clock() - begun
        ended_by[tracker.ledger.attempt] = killed or "finished"
        if killed == "killed":
            tracker._hold_lock(None, "")  # the process dies: the kernel frees the run's claim
        elif killed == "failed":
            tracker.abort()  # an exception: every rank writes what it measured, without collectives
        else:
            tracker.finish()
        if not checkpoints:  # ended before any checkpoint: a new run, as a user would start again
            break
    return tracker, elapsed, ended_by, f"seed {seed}: " + "; ".join(steps)


def check(directory, tracker, elapsed, ended_by, context) -> None:
    finished = ended_by[tracker.ledger.attempt] != "killed"
    # Killed before any checkpoint, nothing resumes the run: the report reads its heartbeat (none
    # yet, nor any record, within its first minute: nothing to report).
    on_disk = list(directory.glob("energy-*"))
    records = read_run_records(tracker.run_id, [directory]) if finished else runs.load(directory).records if on_disk else []
    # A failed attempt's ranks each wrote their own part of a phase, under its one seq.
    keys = [(r.attempt, r.seq, tuple(c["name"] for c in r.components)) for r in records]
    assert len(keys) == len(set(keys)), context
    joules = sum(r.energy_kwh for r in records) * 3.6e6
    if finished:
        summary = json.loads((directory / SUMMARY_FILE).read_text())
        assert summary["energy_kwh"] * 3.6e6 == pytest.approx(joules, rel=1e-9), context
        if ended_by[tracker.ledger.attempt] == "finished":
            assert tracker.total_energy_j == pytest.approx(joules, rel=1e-9), context
        report = runs.load(directory).records  # what a report sums: the same, no heartbeat left to add
        assert sum(r.energy_kwh for r in report) * 3.6e6 == pytest.approx(joules, rel=1e-9), context
    for number, seconds in elapsed.items():
        durations: dict[int, float] = {}
        for r in records:
            if r.attempt == number:
                durations[r.seq] = max(durations.get(r.seq, 0.0), r.duration_s)
        covered = sum(durations.values())
        assert covered <= seconds + 1e-6, f"{context}: attempt {number} counted {covered} s of {seconds}"
        if ended_by[number] != "killed":  # an exception writes everything up, at once
            assert covered == pytest.approx(seconds), f"{context}: attempt {number} ({ended_by[number]})"
        else:
            assert seconds - covered <= HEARTBEAT_S + LOG_EVERY_S + 2.0 + 1e-6, (
                f"{context}: attempt {number} lost {seconds - covered:.1f} s of {seconds:.1f}")
    # Each second at every rank's device's power: no rank's part lost, none counted twice.
    assert joules == pytest.approx(POWER_W * sum(r.duration_s * len(r.components) for r in records), rel=1e-9), context
    assert not finished or not list(directory.glob("energy-open-*")), context


@pytest.mark.parametrize("seed", SEEDS)
def test_random_kills_and_resumes_keep_every_second_once_and_lose_at_most_a_heartbeat(tmp_path, seed):
    check(tmp_path, *flow(seed, tmp_path))


@pytest.mark.parametrize("seed", SEEDS[:max(1, len(SEEDS) // 5)])
def test_the_same_on_four_ranks(tmp_path, seed):
    from tests.test_ledger_ranks import run_ranks

    saved: dict = {}
    results = run_ranks(lambda rank, reducer: flow(seed, tmp_path, rank, reducer, saved))
    check(tmp_path, *results[0])


class Asker(threading.Thread):
    """Asks the tracker for its heartbeat over and over from another thread, at any moment of the
    training thread's boundaries, as the Keras watch thread does (there: 5 times a second)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.tracker, self.lock, self.done, self.asked = None, threading.Lock(), False, threading.Event()

    def ask(self, tracker) -> None:
        with self.lock:  # (never in the middle of a call to the tracker before)
            self.tracker = tracker
            self.asked.clear()
        if tracker is not None:
            assert self.asked.wait(10)  # asked at least once in each attempt

    def run(self) -> None:
        while not self.done:
            with self.lock:
                if self.tracker is not None:
                    self.tracker.heartbeat()
                    self.asked.set()
            time.sleep(0.0005)  # (the training thread gets the GIL between asks)


@pytest.mark.parametrize("seed", SEEDS[:max(1, len(SEEDS) // 5)])
def test_the_same_with_the_heartbeat_asked_from_another_thread_at_any_moment(tmp_path, seed, monkeypatch):
    """The heartbeat read from another thread mid-boundary held a phase half changed. Races show
    only sometimes: without the tracker's phase lock, 1 run in 4 of 100 seeds failed here; the
    deterministic check of the lock is test_heartbeat's. This one shows the asking never
    deadlocks nor breaks any invariant of the flows."""
    import greencallbacks.checkpoint_state as checkpoint_state  # where the tracker reads HEARTBEAT_S

    monkeypatch.setattr(checkpoint_state, "HEARTBEAT_S", 0.0)  # written at every ask: the phases read mid-boundary if unlocked
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns between almost any two bytecodes
    asker = Asker()
    asker.start()
    try:
        results = flow(seed, tmp_path, asker=asker)
    finally:
        asker.done = True
        asker.join(10)
        sys.setswitchinterval(switching)
    check(tmp_path, *results)
