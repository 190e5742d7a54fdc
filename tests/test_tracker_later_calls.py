"""A later call of a run (an evaluation after the training) once another session has continued
that run: it goes on after the other's records, as the run's next attempt, not from its own stale
view (seq numbers billed twice, a summary without the other's epochs). The adapters' flows:
tests/test_hf_paths_more.py; here the tracker's rule, on a fake clock."""

import json
import os

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.tracker import SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

POWER_W = 100.0


def meter(clock):
    return Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock,
                 wall_clock=lambda: clock() + 1.7e9)


def started(tmp_path, clock, **kwargs):
    return Tracker(carbon=Carbon(intensity=300.0), output_dir=tmp_path, **kwargs).start(meter(clock))


def train(tracker, clock, epochs, samples=10):
    for epoch in epochs:
        tracker.begin("train", epoch)
        clock.advance(2.0)
        tracker.add_samples(samples)
        tracker.end("train")
        clock.advance(0.5)


def evaluate(tracker, clock, samples=4):
    tracker.begin("validation")
    clock.advance(1.0)
    tracker.add_samples(samples)
    tracker.end("validation")


def check_ledger(directory, run_id):
    records = [r for r in read_records(directory) if r.run_id == run_id]
    assert len({r.seq for r in records}) == len(records), sorted(r.seq for r in records)
    summary = json.loads((directory / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(sum(r.energy_j for r in records), rel=1e-9)
    return records, summary


def test_a_later_call_after_another_session_continued_the_run_goes_on_after_it(tmp_path):
    clock = FakeClock()
    first = started(tmp_path, clock)
    train(first, clock, [0, 1])
    checkpoint = first.state_dict()
    first.finish()
    second = Tracker(carbon=Carbon(intensity=300.0), output_dir=tmp_path)
    second.load_state_dict(checkpoint)
    second.start(meter(clock))
    train(second, clock, [2])
    second.finish()
    assert second.run_id == first.run_id and second.ledger.attempt == 1

    started_again = first.start(meter(clock))
    evaluate(started_again, clock)
    first.finish()
    records, summary = check_ledger(tmp_path, first.run_id)
    assert summary["phases"]["train"]["samples"] == 30  # the second session's epoch is the run's
    assert {r.attempt for r in records if r.phase == "validation"} == {2}


def test_a_later_call_in_a_run_nobody_else_continued_stays_in_its_attempt(tmp_path):
    """The common path: one stat of the records file, unchanged since this session stopped."""
    clock = FakeClock()
    tracker = started(tmp_path, clock)
    train(tracker, clock, [0, 1])
    tracker.finish()
    tracker.start(meter(clock))
    evaluate(tracker, clock)
    tracker.finish()
    records, _ = check_ledger(tmp_path, tracker.run_id)
    assert {r.attempt for r in records} == {0}


def test_other_runs_written_in_the_same_file_leave_a_later_call_in_its_attempt(tmp_path):
    """A sweep: several runs in one directory change its records file; only this run's records decide."""
    clock = FakeClock()
    tracker = started(tmp_path, clock)
    train(tracker, clock, [0])
    tracker.finish()
    other = started(tmp_path, clock)
    train(other, clock, [0, 1, 2])
    other.finish()
    size = os.path.getsize(tmp_path / RECORDS_FILE)
    tracker.start(meter(clock))
    evaluate(tracker, clock)
    tracker.finish()
    assert os.path.getsize(tmp_path / RECORDS_FILE) > size
    records = [r for r in read_records(tmp_path) if r.run_id == tracker.run_id]
    assert {r.attempt for r in records} == {0} and len({r.seq for r in records}) == len(records)
