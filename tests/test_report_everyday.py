"""Reports of everyday runs add up and say what they lack: here, a call after a finished training
(a ``validate``, ``test`` or ``predict`` of the run, which rewrites its energy-summary.json when it
ends) killed outright. Its run has a write-up, the one of the call before, so it was not called
unfinished, and the report read as a run that ended well, its whole-run figure in a paper's
statement short of that call's end with no word of it."""

from __future__ import annotations

from pathlib import Path

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
