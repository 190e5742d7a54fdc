"""The ledger's invariants as a hypothesis state machine over the core tracker (no framework).

One scripted GPU on a fake clock, its power changed at random, so every joule the meter measured
is known exactly: the integral of power over the time some tracker was running. The machine
drives trackers through random sequences of what frameworks do: phases begun and ended (nested
validation included), samples, checkpoints taken at any moment (phases open), crashes anywhere,
resume from any checkpoint taken so far (into the same or a new output directory), a new run,
and a normal finish. After every step (shared/DESIGN.md section 2a):

1. the records of every run sum to its ledger totals, per phase and in all, and (once finished)
   to its ``energy-summary.json``; the last logged ``energy_kwh_total`` equals what the records
   written up to that point add up to;
2. every joule measured is billed exactly once: the records of all runs add up to the integral;
3. a crashed attempt's records stay in its run's total;
4. a new run never carries another run's energy;
5. samples are what was added to completed phases.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.tracker import SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

REL = 1e-9


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="ledger-machine-"))
        self.clock = FakeClock()
        self.sensor = ScriptedSensor("gpu0", self.clock, power_w=100.0)
        self.measured_j = 0.0  # integral of power while a tracker runs
        self.tracker: Tracker | None = None
        self.open: list[str] = []  # phases the "framework" has open
        self.epoch = 0
        self.checkpoints: list[dict] = []
        self.dirs: list[Path] = []
        self.runs: set[str] = set()
        self.last_logged: dict[str, float] = {}  # run -> last training energy_kwh_total
        self.logged_at_records: dict[str, int] = {}  # run -> records on disk when it was logged

    def teardown(self) -> None:
        if self.tracker is not None and self.tracker.running:
            self.tracker.abort()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------- helpers
    def _new_tracker(self, directory: Path) -> Tracker:
        meter = Meter([self.sensor], fallback=None, clock=self.clock, wall_clock=lambda: self.clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=300.0, pue=1.25), framework="machine")
        tracker.start(meter, output_dir=directory)  # as adapters do: the default directory
        self.dirs.append(directory)
        self.open, self.tracker = [], tracker
        return tracker

    def _records(self, run_id: str) -> list:
        return read_run_records(run_id, set(self.dirs))

    # --------------------------------------------------------------------------- rules
    @precondition(lambda self: self.tracker is None or not self.tracker.running)
    @rule()
    def new_run(self) -> None:
        tracker = self._new_tracker(self.root / f"run{len(self.dirs)}")
        self.runs.add(tracker.run_id)
        self.epoch = 0

    @precondition(lambda self: self.tracker is not None and self.tracker.running)
    @rule(seconds=st.floats(min_value=0.0, max_value=50.0), power=st.floats(min_value=0.0, max_value=700.0))
    def time_passes(self, seconds: float, power: float) -> None:
        self.sensor.set_power(power)
        self.measured_j += power * seconds
        self.clock.advance(seconds)

    @precondition(lambda self: self.tracker is not None and self.tracker.running and not self.open)
    @rule()
    def train_epoch_begins(self) -> None:
        self.tracker.begin("train", self.epoch)
        self.open.append("train")

    @precondition(lambda self: self.tracker is not None and self.tracker.running and self.open[-1:] != ["validation"])
    @rule()
    def validation_begins(self) -> None:
        self.tracker.begin("validation", self.epoch)
        self.open.append("validation")

    @precondition(lambda self: self.tracker is not None and self.tracker.running and bool(self.open))
    @rule(samples=st.integers(min_value=0, max_value=64))
    def batch(self, samples: int) -> None:
        self.tracker.add_samples(samples)

    @precondition(lambda self: self.tracker is not None and self.tracker.running and bool(self.open))
    @rule()
    def innermost_phase_ends(self) -> None:
        phase = self.open.pop()
        record = self.tracker.end(phase)
        assert record is not None and record.phase == phase and not record.partial
        if phase == "train":
            self.last_logged[self.tracker.run_id] = self.tracker.metrics("train")["energy_kwh_total"]
            self.logged_at_records[self.tracker.run_id] = len(read_records(self.tracker.output_dir))
            self.epoch += 1

    @precondition(lambda self: self.tracker is not None and self.tracker.running)
    @rule()
    def checkpoint(self) -> None:
        self.checkpoints.append({"state": json.loads(json.dumps(self.tracker.state_dict())), "epoch": self.epoch})

    @precondition(lambda self: self.tracker is not None and self.tracker.running)
    @rule()
    def crash(self) -> None:
        self.tracker.abort()
        self.open = []

    @precondition(lambda self: self.tracker is not None and self.tracker.running and not self.open)
    @rule()
    def finish(self) -> None:
        self.tracker.finish()

    @precondition(lambda self: self.checkpoints and (self.tracker is None or not self.tracker.running))
    @rule(data=st.data(), same_dir=st.booleans(), load_after_start=st.booleans())
    def resume(self, data, same_dir: bool, load_after_start: bool) -> None:
        saved = data.draw(st.sampled_from(self.checkpoints))
        state = saved["state"]
        home = Path(state["records_path"]).parent
        # A resume in a new directory is Lightning's new `version_N`: the run follows its records home.
        directory = home if same_dir else self.root / f"run{len(self.dirs)}"
        meter = Meter([self.sensor], fallback=None, clock=self.clock, wall_clock=lambda: self.clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=300.0, pue=1.25), framework="machine")
        if load_after_start:  # Lightning restores callbacks after setup
            tracker.start(meter, output_dir=directory)
            tracker.load_state_dict(state)
        else:  # Keras, HF
            tracker.load_state_dict(state)
            tracker.start(meter, output_dir=directory)
        self.dirs.append(directory)
        assert tracker.run_id == state["run_id"] and tracker.output_dir == home
        self.open, self.tracker, self.epoch = [], tracker, saved["epoch"]

    # ---------------------------------------------------------------------- invariants
    @invariant()
    def every_joule_is_billed_once(self) -> None:
        billed = 0.0
        for run_id in self.runs:
            billed += sum(r.it_energy_kwh for r in self._records(run_id)) * 3.6e6
        if self.tracker is not None and self.tracker.running:
            # What the running tracker measured but has not closed into a record yet: the open
            # phases so far, and the interval since its last snapshot.
            # The phases closed but not yet published (a gap, published at the next end) likewise.
            unpublished = [closed[0] for closed in self.tracker._pending] + self.tracker._stack
            billed += sum(sum(c["energy_j"] for c in o.components.values()) for o in unpublished)
            billed += self.sensor.energy_j() - self.tracker._last_snapshot.energy_j["gpu0"]
        assert billed == pytest.approx(self.measured_j, rel=REL, abs=1e-6)

    @invariant()
    def records_sum_to_the_ledger_and_the_summary(self) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        records = self._records(tracker.run_id)
        assert tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in records), rel=REL, abs=1e-9)
        for phase, totals in tracker.totals.items():
            mine = [r for r in records if r.phase == phase]
            assert totals.energy_j == pytest.approx(sum(r.energy_j for r in mine), rel=REL, abs=1e-9)
            assert totals.co2eq_g == pytest.approx(sum(r.co2eq_g for r in mine), rel=REL, abs=1e-12)
            assert totals.samples == sum(r.samples for r in mine)
            assert totals.count == len(mine)
        seqs = [r.seq for r in records]
        assert len(seqs) == len(set(seqs))  # unique within a run, across its attempts
        if not tracker.running and (tracker.output_dir / SUMMARY_FILE).exists():
            summary = json.loads((tracker.output_dir / SUMMARY_FILE).read_text())
            assert summary["run_id"] == tracker.run_id
            assert summary["energy_kwh"] * 3.6e6 == pytest.approx(sum(r.energy_j for r in records), rel=REL, abs=1e-9)

    @invariant()
    def the_last_logged_total_is_what_the_records_then_added_up_to(self) -> None:
        tracker = self.tracker
        if tracker is None or tracker.run_id not in self.last_logged:
            return
        if self.logged_at_records.get(tracker.run_id) is None:
            return
        on_disk = read_records(tracker.output_dir / RECORDS_FILE)
        upto = [r for r in on_disk[: self.logged_at_records[tracker.run_id]] if r.run_id == tracker.run_id]
        assert self.last_logged[tracker.run_id] * 3.6e6 == pytest.approx(sum(r.energy_j for r in upto), rel=REL, abs=1e-9)


LedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
test_ledger_machine = LedgerMachine.TestCase
