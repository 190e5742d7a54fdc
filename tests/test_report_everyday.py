"""Reports of everyday runs add up and say what they lack: here, a call after a finished training
(a ``validate``, ``test`` or ``predict`` of the run, which rewrites its energy-summary.json when it
ends) killed outright. Its run has a write-up, the one of the call before, so it was not called
unfinished, and the report read as a run that ended well, its whole-run figure in a paper's
statement short of that call's end with no word of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from greencallbacks import report
from greencallbacks.carbon import Carbon
from greencallbacks.cli import main
from greencallbacks.meter import Meter
from greencallbacks.runs import load
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.test_heartbeat import killed, steps

POWER_W = 100.0
LEFT = "left no write-up"


def fitted(directory: Path, run_id: str) -> tuple[Tracker, FakeClock]:
    """Two epochs trained and the fit ended normally (its summary written)."""
    clock = FakeClock(1000.0)
    tracker = Tracker(output_dir=directory, run_id=run_id, carbon=Carbon(intensity=200.0))
    start(tracker, clock)
    for epoch in range(2):
        tracker.begin("train", epoch)
        steps(tracker, clock, 20.0)
        tracker.end("train")
        clock.advance(1.0)
    tracker.finish()
    return tracker, clock


def start(tracker: Tracker, clock: FakeClock) -> None:
    """Started, or started again for a later call of its run, as the callbacks do."""
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))


def later_call(tracker: Tracker, clock: FakeClock, phase: str, seconds: float) -> None:
    start(tracker, clock)
    clock.advance(2.0)
    tracker.begin(phase)
    steps(tracker, clock, seconds)


def adds_up(directory: Path) -> dict:
    loaded = load(directory)
    data = report.summary(loaded.records, run_summaries=loaded.summaries, unfinished=loaded.unfinished)
    for phase, totals in data["phases"].items():
        assert totals["energy_kwh"]["mean"] == sum(r.energy_kwh for r in loaded.records if r.phase == phase)
    assert data["total"]["energy_kwh"]["mean"] == sum(r.energy_kwh for r in loaded.records)
    return data


def test_a_prediction_killed_after_a_finished_test_is_said_in_the_report_and_the_statement(tmp_path, capsys):
    tracker, clock = fitted(tmp_path, "predicted")
    later_call(tracker, clock, "test", 10.0)
    tracker.end("test")
    tracker.finish()
    assert not any(LEFT in note for note in adds_up(tmp_path)["provenance"])  # every call ended well

    later_call(tracker, clock, "predict", 20.0)  # under a minute: no heartbeat yet
    killed(tracker)
    data = adds_up(tmp_path)

    (note,) = [note for note in data["provenance"] if LEFT in note]
    assert note.startswith("Run predicted's records hold ") and "What it used after its last record is in no figure" in note
    assert data["statement"].endswith("A call after the training of run predicted left no write-up (killed outright, "
                                      "or still running): the whole run's figures hold it only up to its last record "
                                      "or heartbeat.")
    assert main(["report", str(tmp_path), "--format", "latex"]) == 0
    assert "run predicted left no write-up" in capsys.readouterr().out


def test_a_validation_killed_after_the_fit_is_counted_to_its_heartbeat_and_said_so(tmp_path):
    tracker, clock = fitted(tmp_path, "validated")
    later_call(tracker, clock, "validation", 70.0)  # the heartbeat at 60 s
    killed(tracker)
    loaded = load(tmp_path)
    assert loaded.unfinished == set()  # the fit's summary is the attempt's

    data = adds_up(tmp_path)

    assert [(r.phase, r.carried, r.partial) for r in loaded.records if r.phase == "validation"] == [
        ("validation", True, True)]
    (note,) = [note for note in data["provenance"] if LEFT in note]
    assert "counted up to the last heartbeat" in note


def test_a_one_epoch_run_resumed_inside_its_epoch_is_not_said_to_be_an_epoch_of_its_rest(tmp_path):
    """An HF fine-tune of one epoch (8 steps of 16 samples) preempted after the checkpoint of step
    2 and resumed from it: the resume trains the epoch's other 96 samples. With no other epoch to
    tell a whole one's size, those 96 read as a whole epoch: "1 epoch of 96 samples in 8 steps"."""
    import dataclasses

    from greencallbacks.lifecycle import lifecycle
    from tests.test_report import rec

    records = [dataclasses.replace(rec("ft", "train", 0, 20.0, 32, 0, seconds=0.1), partial=True, carried=True),
               dataclasses.replace(rec("ft", "train", 0, 60.0, 96, 1, seconds=0.2), attempt=1, step=8)]
    config = report.configuration(records)
    assert config["epoch_samples"] == [[0, None]] and config["samples_per_epoch"] is None  # was 96
    assert config["samples_counted"]
    # The resume went on from the checkpoint inside the epoch: its first part was kept, not redone.
    assert report.statement(records).startswith(
        "The training (1 epoch; 1 epoch cut short by a crash and resumed by a later attempt, both attempts counted)")
    assert [report.epoch_status(row) for row in report.epoch_rows(records)] == ["cut short, resumed", "complete"]
    assert "| 0 (attempt 0: cut short, resumed) |" in report.format_epoch_table(records)
    assert report.describe_configuration(config).startswith(
        "unknown, 1 training epoch(s) of samples not known whole (resumed inside an epoch), sensors")
    assert lifecycle(records).samples_per_epoch is None  # D; T per sample stays T over the 128 trained
    assert lifecycle(records).training_j_per_sample == pytest.approx(80.0 / 128)
    # Beside a whole epoch of another attempt, the rest is told apart as before, and a whole
    # training again is whole.
    later = [dataclasses.replace(rec("ft", "train", 1, 80.0, 128, 2, seconds=0.3), attempt=1, step=16)]
    assert report.configuration(records + later)["epoch_samples"] == [[0, None], [1, 128]]
    again = [records[0], dataclasses.replace(records[1], samples=128)] + later
    assert report.configuration(again)["epoch_samples"] == [[0, 128], [1, 128]]
    assert [report.epoch_status(row) for row in report.epoch_rows(again)][0] == "cut short, redone"
    assert "1 epoch cut short by a crash and redone, both counted" in report.statement(again)
