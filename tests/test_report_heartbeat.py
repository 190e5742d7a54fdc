"""The after-the-run tools count what a run killed outright measured in its open phase, from the
heartbeat it left beside its records (``energy-open-<run id>.<session>.json``, ``Tracker.heartbeat``).

A run killed (SIGKILL, the OOM killer, a preemption) and never resumed, started again as a new
run, left its last phase in its heartbeat alone: the report showed it unfinished with none of that
phase (hours of GPU in a long epoch). ``runs.load`` now adds the heartbeat's phases that no record
holds, marked as a resume marks them, each phase once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greencallbacks import report
from greencallbacks.carbon import Carbon
from greencallbacks.cli import main
from greencallbacks.meter import Meter
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.runs import load
from greencallbacks.heartbeat import heartbeat_path
from greencallbacks.tracker import HEARTBEAT_S, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.killed import killed_after_line
from tests.test_heartbeat import KILLED_CHILD, POWER_W, REPO, RUN, killed, started, steps, the_heartbeat

J_PER_KWH = 3.6e6



@pytest.fixture
def killed_run(tmp_path) -> Path:
    """The directory of a real process killed with SIGKILL 40 s after its heartbeat, in epoch 1."""
    script, out = tmp_path / "child.py", tmp_path / "out"
    script.write_text(KILLED_CHILD.format(repo=str(REPO), run=RUN, power=POWER_W))
    killed_after_line([str(script), str(out), "next-epoch"], "at 100 s\n")
    return out


def finished_run(directory: Path, run_id: str) -> None:
    """A run of its own that trained an epoch and ended normally."""
    clock = FakeClock()
    tracker = Tracker(output_dir=directory, run_id=run_id, carbon=Carbon(intensity=200.0))
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock))
    tracker.begin("train", 0)
    clock.advance(10.0)
    tracker.end("train")
    tracker.finish()


def open_records(directory: Path, run: str = RUN) -> list[dict]:
    return json.loads(the_heartbeat(directory, run).read_text())["open_records"]


def energy_kwh(records) -> float:
    return sum(r.energy_kwh for r in records)


def test_a_run_killed_outright_is_counted_up_to_its_last_heartbeat(killed_run):
    written = read_records(killed_run / RECORDS_FILE)
    assert [(r.phase, r.epoch) for r in written if r.phase == "train"] == [("train", 0)]
    beat = open_records(killed_run)
    assert [(r["phase"], r["epoch"], r["partial"]) for r in beat] == [("train", 1, True)]

    loaded = load(killed_run)

    assert loaded.unfinished == {RUN}
    (epoch_1,) = [r for r in loaded.records if r.phase == "train" and r.epoch == 1]
    assert epoch_1.carried and epoch_1.partial
    # Begun at 10 s, measured to the heartbeat at 60 s: 40 s of the 90 s it ran are lost, not all 90.
    assert epoch_1.duration_s == pytest.approx(50.0)
    assert epoch_1.energy_kwh * J_PER_KWH == pytest.approx(50.0 * POWER_W)
    assert energy_kwh(loaded.records) == pytest.approx(energy_kwh(written) + sum(r["energy_kwh"] for r in beat))
    assert the_heartbeat(killed_run) in loaded.run_files[RUN]
    totals = report.summary(loaded.records, run_summaries=loaded.summaries, unfinished=loaded.unfinished)
    assert totals["run_totals"][RUN]["energy_kwh"] == pytest.approx(energy_kwh(loaded.records))
    assert totals["run_totals"][RUN]["train_energy_kwh"] * J_PER_KWH == pytest.approx((10.0 + 50.0) * POWER_W)


def test_the_cli_report_prints_the_killed_run_with_its_heartbeat(killed_run, capsys):
    expected = energy_kwh(read_records(killed_run / RECORDS_FILE)) + sum(r["energy_kwh"] for r in open_records(killed_run))

    assert main(["report", str(killed_run.parent), "--format", "json"]) == 0  # found by walking the root

    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    assert group["runs"] == [RUN] and group["configuration"]["unfinished"]
    assert group["run_totals"][RUN]["energy_kwh"] == pytest.approx(expected)
    (note,) = [n for n in group["provenance"] if n.startswith("No write-up")]
    assert f"counted up to the last heartbeat (energy-open-<run id>.*.json beside the records, written every " \
           f"{HEARTBEAT_S:g} s while a run trains)" in note
    assert "What it used after its last record is in no figure here" not in note
    assert "Phases marked partial were cut short by an exception or interrupt, or by a kill (measured up to the " \
           "checkpoint or heartbeat they were carried from); their energy is in the totals." in group["provenance"]
    assert main(["report", str(killed_run)]) == 0
    out = capsys.readouterr().out
    assert "counted up to the last heartbeat" in out and f"(1 run: {RUN})" in out


def test_a_resumed_run_counts_the_heartbeats_phases_once(tmp_path):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    clock.advance(10.0)
    state = tracker.state_dict()
    steps(tracker, clock, 90.0)  # the heartbeat at 60 s
    killed(tracker)
    first_beat = open_records(tmp_path)

    # The resume carries the heartbeat's phase into the records (same attempt and seq) while the
    # killed attempt's heartbeat is still there, until its own first heartbeat replaces it.
    resumed, clock = started(tmp_path, state, start=5000.0)
    resumed.begin("train", 0)
    clock.advance(5.0)
    loaded = load(tmp_path)  # neither twice nor "two histories of one run"
    written = read_records(tmp_path / RECORDS_FILE)
    assert [r["attempt"] for r in open_records(tmp_path)] == [r["attempt"] for r in first_beat] == [0]
    assert [(r.attempt, r.duration_s) for r in written if r.carried] == [(0, 60.0)]
    assert energy_kwh(loaded.records) == pytest.approx(energy_kwh(written))
    assert sorted((r.attempt, r.seq) for r in loaded.records) == sorted((r.attempt, r.seq) for r in written)

    steps(resumed, clock, 60.0)  # its own heartbeat (beside the killed one's): attempt 1's open epoch, in no record yet
    second_beat = json.loads(resumed._heartbeat_written.read_text())["open_records"]
    assert {r["attempt"] for r in second_beat} == {1}
    loaded = load(tmp_path)
    assert energy_kwh(loaded.records) == pytest.approx(energy_kwh(written) + sum(r["energy_kwh"] for r in second_beat))
    assert len({(r.attempt, r.seq) for r in loaded.records}) == len(loaded.records)
    assert loaded.unfinished == {RUN}

    resumed.end("train")
    resumed.finish()
    loaded = load(tmp_path)
    assert energy_kwh(loaded.records) == pytest.approx(energy_kwh(read_records(tmp_path / RECORDS_FILE)))
    assert loaded.unfinished == set()
    assert not list(tmp_path.glob("energy-open-*"))  # its own and the killed attempt's it carried: removed


def test_a_heartbeat_of_phases_written_since_is_counted_once(tmp_path):
    """A run still training: its heartbeat holds a phase that has been written since, longer."""
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    steps(tracker, clock, 70.0)  # the heartbeat at 60 s
    tracker.end("train")  # written: 70 s
    tracker.begin("train", 1)
    clock.advance(5.0)
    killed(tracker)

    loaded = load(tmp_path)

    assert [(r.epoch, r.duration_s) for r in loaded.records if r.phase == "train"] == [(0, 70.0)]
    assert not any(r.carried for r in loaded.records)


def test_a_run_killed_before_its_first_record_is_found_by_its_heartbeat_alone(tmp_path):
    finished_run(tmp_path / "finished", "finished")
    tracker, clock = started(tmp_path / "killed")
    tracker.begin("train", 0)  # at its start: no gap to write
    steps(tracker, clock, 90.0)
    killed(tracker)
    records_file = tmp_path / "killed" / RECORDS_FILE
    assert not records_file.exists() or not read_records(records_file)

    alone = load(tmp_path / "killed")
    assert [(r.phase, r.epoch, r.duration_s, r.carried, r.partial) for r in alone.records] == [
        ("train", 0, 60.0, True, True)]
    assert alone.unfinished == {RUN} and alone.run_files == {RUN: [the_heartbeat(tmp_path / "killed")]}

    both = load(tmp_path)  # a root walked: the finished run and the one with a heartbeat alone
    assert sorted(both.run_files) == sorted(["finished", RUN])
    assert both.unfinished == {RUN}
    assert main(["report", str(tmp_path / "killed"), "--format", "json"]) == 0


def test_the_note_names_which_unfinished_runs_are_counted_to_a_heartbeat(tmp_path):
    _kill_in_epoch(tmp_path)
    clock = FakeClock()
    short = Tracker(output_dir=tmp_path, run_id="short", carbon=Carbon(intensity=200.0))
    short.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock))
    short.begin("train", 0)
    steps(short, clock, 30.0)  # killed before its first heartbeat
    short.end("train")
    killed(short)
    loaded = load(tmp_path)
    assert loaded.unfinished == {RUN, "short"}

    (note,) = [n for n in report.summary(loaded.records, unfinished=loaded.unfinished)["provenance"]
               if n.startswith("No write-up")]

    assert (f"The phases run {RUN} had open are counted up to the last heartbeat (energy-open-<run id>.*.json beside "
            f"the records, written every {HEARTBEAT_S:g} s while a run trains), as partial: what was used after that, "
            f"at most {HEARTBEAT_S:g} s, is in no figure here; what short used after its last record is in none") in note


def _kill_in_epoch(directory: Path) -> None:
    tracker, clock = started(directory)
    tracker.begin("train", 0)
    clock.advance(10.0)
    tracker.end("train")
    tracker.begin("train", 1)
    steps(tracker, clock, 90.0)  # the heartbeat at 60 s: epoch 1, 50 s
    killed(tracker)


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # torn (not written by an atomic replace)
    lambda text: text.replace('"energy_kwh": ', '"energy_kwh": null, "x": ', 1),  # edited: null
    lambda text: text.replace('"energy_kwh": ', '"energy_kwh": NaN, "x": ', 1),  # edited: not a number
    lambda text: text.replace('"energy_kwh": ', '"energy_kwh": "0.1", "x": ', 1),  # edited: a string
    lambda text: text.replace(f'"run_id": "{RUN}"', '"run_id": "another"'),  # of another run
    lambda text: "\udcff",  # not UTF-8
], ids=["torn", "null", "nan", "string", "another-run", "not-utf8"])
def test_a_damaged_heartbeat_is_left_out_and_the_records_stand(tmp_path, damage, capsys):
    _kill_in_epoch(tmp_path)
    path = the_heartbeat(tmp_path)
    path.write_bytes(damage(path.read_text()).encode("utf-8", "surrogateescape"))
    written = read_records(tmp_path / RECORDS_FILE)

    loaded = load(tmp_path)

    assert energy_kwh(loaded.records) == pytest.approx(energy_kwh(written))
    assert not any(r.carried for r in loaded.records) and loaded.run_files == {RUN: [tmp_path / RECORDS_FILE]}
    assert loaded.unfinished == {RUN}
    assert main(["report", str(tmp_path)]) == 0
    assert "What it used after its last record is in no figure here" in capsys.readouterr().out


def test_another_runs_heartbeat_under_this_runs_name_is_left_out(tmp_path):
    """A heartbeat copied under another run's name (its content names its own run): not that run's."""
    _kill_in_epoch(tmp_path / "a")
    finished_run(tmp_path / "b", "other")
    heartbeat_path(tmp_path / "b", "other").write_text(the_heartbeat(tmp_path / "a").read_text())

    assert load(tmp_path / "b").records == read_records(tmp_path / "b" / RECORDS_FILE)
    loaded = load(tmp_path)
    assert [r.run_id for r in loaded.records if r.carried] == [RUN]  # a's own heartbeat, once
    assert loaded.unfinished == {RUN}


def test_a_heartbeat_alone_and_torn_is_one_line_not_a_traceback(tmp_path, capsys):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    steps(tracker, clock, 90.0)
    killed(tracker)
    path = the_heartbeat(tmp_path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(SystemExit) as exited:
        main(["report", str(tmp_path)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (f"greencallbacks report: error: no energy-records.jsonl under {tmp_path} (looked "
                                       f"in every subdirectory), and no heartbeat of a run there could be read ({path})\n")


def test_lifecycle_and_whatif_say_a_killed_run_is_counted_up_to_its_heartbeat(killed_run, tmp_path, capsys):
    """lifecycle's note said T was what the records hold "up to its last record", beside a T that
    holds the heartbeat's 50 s of epoch 1; whatif did not say the run was unfinished at all."""
    assert main(["lifecycle", str(killed_run), "--inferences", "1000"]) == 0
    out = capsys.readouterr().out
    assert "T is what its records hold, its open phases up to its last heartbeat" in out
    assert "up to its last record" not in out
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n1970-01-01T00:00:00Z,100\n2100-01-01T00:00:00Z,100\n")
    said = "The run has no write-up (killed outright, or still training): every scenario prices what its records " \
           "hold, its open phases up to its last heartbeat."
    assert main(["whatif", str(killed_run), "--intensity", str(series)]) == 0
    assert said in capsys.readouterr().out
    assert main(["whatif", str(killed_run), "--intensity", str(series), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unfinished_note"] == said
