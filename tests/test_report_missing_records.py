"""A report of records that visibly lack some of their run says so: seq numbers that no run leaves
out, or less energy than the run's energy-summary.json beside them counts. A run's normal gaps
(the placeholder seq of each phase begun between phases, a resume, a killed attempt, carried
records) are no such thing.

Found by a probe: the records file deleted mid-run, the writer (keeping only its last lines)
refilled 13 of 33 records; ``greencallbacks report`` showed them as the whole run (epochs 5-7,
"The training (3 epochs ...)"), 2.09e-7 kWh against the summary's 1.81e-6, without a word.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest

from greencallbacks import record_writer
from greencallbacks import report
from greencallbacks.cli import main
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.runs import load
from tests.test_tracker import run_epochs, setup

NOTE = "Records missing from run"


def _lightning():
    pytest.importorskip("torch")  # the core's own runs have no torch
    pytest.importorskip("lightning")
    from tests.lightning_models import flavour

    return flavour("lightning.pytorch")


def notes_of(directory) -> dict:
    """What a report of ``directory`` says of missing records, in each format that shows notes."""
    loaded = load(directory)
    records, summaries = loaded.records, loaded.summaries
    (group,) = json.loads(report.render(records, "json", run_summaries=summaries))["configurations"]
    markdown = report.render(records, "md", run_summaries=summaries)
    latex = report.render(records, "latex", run_summaries=summaries)
    return {"json": group["records_missing"],
            "provenance": [n for n in group["provenance"] if n.startswith(NOTE)],
            "md": [line[2:] for line in markdown.splitlines() if line.startswith(f"- {NOTE}")],
            "latex": [line[2:] for line in latex.splitlines() if line.startswith(f"% {NOTE}")]}


def the_note(directory) -> str:
    said = notes_of(directory)
    assert len(said["json"]) == 1, said
    assert said["provenance"] == said["md"] == said["latex"] == said["json"], said
    return said["json"][0]


def lightning_fit(tmp_path, epochs=3, callbacks=(), **kwargs):
    L, EnergyCallback, TinyModel = _lightning()
    from tests.lightning_models import loaders, trainer_kwargs

    energy = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=epochs, logger=False, callbacks=[energy, *callbacks], **trainer_kwargs(**kwargs))
    trainer.fit(TinyModel(), *loaders())
    return energy.tracker.run_id


def test_a_records_file_deleted_mid_run_is_said_with_what_its_remnant_lacks(tmp_path, monkeypatch, capsys):
    """The probe's case, in a real fit: the writer keeps 4 kB of synced lines; the file is
    deleted at the end of epoch 4 of 6, and the next write refills only the lines kept."""
    L, _, _ = _lightning()
    monkeypatch.setattr(record_writer, "LINES_KEPT_BYTES", 4096)

    trackers = []

    class Vandal(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trackers.append(trainer.callbacks[0].tracker)
            writer = trainer.callbacks[0].tracker._writer
            assert writer.flush() and writer._sync(writer._generation)  # synced: the oldest lines forgotten
            if trainer.current_epoch == 3:
                (tmp_path / RECORDS_FILE).unlink()

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        run = lightning_fit(tmp_path, epochs=6, callbacks=[Vandal()])
    assert any("lost" in str(w.message) for w in said)  # said at run time, as before
    records = read_records(tmp_path)
    held = sum(r.energy_kwh for r in records)
    counted = json.loads((tmp_path / "energy-summary.json").read_text())["energy_kwh"]
    first = min(r.seq for r in records)
    # A remnant: the first epochs' records are gone, and with them exactly their energy (how much
    # that is depends on how long each epoch took: counted against the tracker's own records).
    lost = sum(r.energy_kwh for r in trackers[-1].records if r.seq < first)
    assert first > 2 and lost > 0 and held == pytest.approx(counted - lost, rel=1e-9)
    note = the_note(tmp_path)
    assert note.startswith(f"{NOTE} {run}: seq 0-{first - 1} of attempt 0 (up to epoch ")
    share = re.search(r"its records hold ([\d.]+) (\w+) of the ([\d.]+) (\w+) its energy-summary.json counts \((\d+)%\)", note)
    assert share and share.group(2) == share.group(4), note
    assert int(share.group(5)) == round(100 * held / counted)
    assert note.endswith("the totals shown are only what its records hold.")
    # The command line reads the summary beside the records, and still reports (exit 0).
    assert main(["report", str(tmp_path)]) == 0
    assert f"- {note}" in capsys.readouterr().out


@pytest.mark.parametrize("phase, epoch, missing", [
    ("train", 1, "seq 5-6 of attempt 0 (epochs 0-1)"),  # with its placeholder, after the gap of epoch 0
    ("validation", 1, "seq 7 of attempt 0 (epoch 1)"),  # inside its training, before the gap after
])
def test_a_record_removed_from_inside_an_attempt_is_named_by_seq_and_epoch(tmp_path, phase, epoch, missing):
    """A finished 3-epoch fit (one attempt) with one line removed from the middle of its file.
    The summary is removed too: the seq numbers alone tell it."""
    run = lightning_fit(tmp_path)
    path = tmp_path / RECORDS_FILE
    lines = path.read_text().splitlines(keepends=True)
    cut = [line for line in lines if (json.loads(line)["phase"], json.loads(line)["epoch"]) == (phase, epoch)]
    assert len(cut) == 1
    path.write_text("".join(line for line in lines if line not in cut))
    (tmp_path / "energy-summary.json").unlink()
    note = the_note(tmp_path)
    assert note.startswith(f"{NOTE} {run}: {missing} are not in these records, though no run leaves such a gap")
    assert "energy-summary.json" not in note


def test_records_removed_all_through_a_file_are_said_in_one_sentence(tmp_path):
    """Every validation line of a 5-epoch run gone: three gaps named, the rest counted."""
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=5)
    path = tmp_path / RECORDS_FILE
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if json.loads(line)["phase"] != "validation"))
    (tmp_path / "energy-summary.json").unlink()
    assert the_note(tmp_path).startswith(
        f"{NOTE} {tracker.run_id}: seq 3 of attempt 0 (epoch 0); seq 7 of attempt 0 (epoch 1); seq 11 of attempt 0 "
        "(epoch 2); and 2 more gap(s) of 2 seq(s) are not in these records")


def test_a_gap_record_removed_is_said_by_the_summary_it_falls_short_of(tmp_path):
    """A gap between epochs and the placeholder after it leave the seq numbers a run of zero-length
    gaps leaves: the summary tells what is missing (a gap's kWh, rounded away by the formats)."""
    run = lightning_fit(tmp_path)
    path = tmp_path / RECORDS_FILE
    lines = path.read_text().splitlines(keepends=True)
    gaps = [line for line in lines if json.loads(line)["phase"] == "other" and json.loads(line)["epoch"] == 0]
    path.write_text("".join(line for line in lines if line not in gaps[:1]))
    note = the_note(tmp_path)
    assert note.startswith(f"{NOTE} {run}: its records hold ")
    assert "seq" not in note
    # The summary alone: reported without it (the records are read as they are), no note.
    (tmp_path / "energy-summary.json").unlink()
    assert notes_of(tmp_path)["json"] == []


def resume_and_train(directory, checkpoint: dict, epoch: int) -> list:
    """A new process resumed from ``checkpoint`` trains ``epoch`` and ends: the records then."""
    resumed, clock, _ = setup(directory)
    resumed.load_state_dict(checkpoint)
    clock.advance(1.0)
    resumed.begin("train", epoch)
    clock.advance(10.0)
    resumed.end("train")
    clock.advance(1.0)
    resumed.finish()
    return read_records(directory)


def assert_no_note(directory, attempts: int):
    records = load(directory).records
    assert len({r.attempt for r in records}) == attempts
    seqs = {(r.attempt, r.seq) for r in records}
    skipped = [(a, s) for a, s in {(r.attempt, r.seq - 1) for r in records} if s >= 0 and (a, s) not in seqs]
    assert skipped  # the run has gaps in its seq numbers, all of them normal ones
    said = notes_of(directory)
    assert said == {"json": [], "provenance": [], "md": [], "latex": []}
    summary = json.loads((directory / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


def test_a_fit_resumed_from_an_earlier_checkpoint_after_a_crash_has_no_note(tmp_path):
    """Crashed in epoch 2, resumed from the checkpoint of epoch 0 (epochs 1 and 2 trained again),
    then validated: two attempts whose seq numbers skip the placeholders and jump at the resume."""
    L, EnergyCallback, TinyModel = _lightning()
    from tests.lightning_models import Boom, loaders, trainer_kwargs

    energy, ckpt = tmp_path / "energy", tmp_path / "ckpt"

    def trainer():
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=ckpt, save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=True)
        return L.Trainer(max_epochs=3, logger=False, callbacks=[EnergyCallback(output_dir=energy, intensity=100.0),
                                                                checkpoint], **trainer_kwargs(enable_checkpointing=True))

    with pytest.raises(Boom):
        trainer().fit(TinyModel(fail_at=(2, 1)), *loaders())
    resumed, model = trainer(), TinyModel()
    resumed.fit(model, *loaders(), ckpt_path=ckpt / "epoch=0.ckpt")
    resumed.validate(model, loaders()[1], verbose=False)
    assert_no_note(energy, attempts=2)


def test_an_attempt_killed_inside_an_epoch_after_its_validation_has_no_note(tmp_path):
    """SIGKILL (no handler runs) inside epoch 1's training, after its validation was written: the
    training's record and its placeholder are lost, the checkpoint (in the gap before) carries
    nothing of them, and the resume goes on. Every record after them is inside that training."""
    first, clock, _ = setup(tmp_path)
    for epoch in range(2):
        clock.advance(1.0)
        first.begin("train", epoch)
        clock.advance(5.0)
        first.begin("validation", epoch)
        clock.advance(2.0)
        first.end("validation")
        if epoch == 1:
            break
        clock.advance(5.0)
        first.end("train")
        clock.advance(1.0)
        checkpoint = first.state_dict()  # at epoch 0's end, in the gap after it
    first._stop()  # killed: nothing more written
    records = resume_and_train(tmp_path, checkpoint, epoch=1)
    assert [(r.attempt, r.phase, r.epoch) for r in records if r.attempt == 0][-1] == (0, "validation", 1)
    assert not any(r.carried for r in records)
    assert_no_note(tmp_path, attempts=2)


def test_a_resume_that_writes_the_killed_attempts_carried_phase_has_no_note(tmp_path):
    """Killed inside an epoch after a checkpoint saved in it: the resume writes the phase the
    checkpoint counted as a carried record of attempt 0, in the seq it had. The gaps before
    epochs 0 and 1 took no time (not written): with their placeholders, two seqs each."""
    first, clock, _ = setup(tmp_path)
    for epoch in range(2):
        first.begin("train", epoch)
        clock.advance(10.0)
        first.end("train")
    clock.advance(1.0)
    first.begin("train", 2)
    clock.advance(5.0)
    checkpoint = first.state_dict()  # inside epoch 2
    clock.advance(3.0)
    first._stop()  # killed
    records = resume_and_train(tmp_path, checkpoint, epoch=2)
    assert [(r.attempt, r.epoch) for r in records if r.carried] == [(0, 2)]
    assert [(r.seq, r.phase) for r in records if r.attempt == 0] == [(2, "train"), (5, "train"), (6, "other"), (8, "train")]
    assert_no_note(tmp_path, attempts=2)


def test_an_earlier_runs_loss_is_said_by_the_summary_kept_under_its_id(tmp_path):
    """In a directory of several runs energy-summary.json is the latest's; an earlier run's is kept
    as energy-summary-<id>.json. Only the former was read: a loss from the earlier run went unsaid."""
    runs = []
    for _ in range(2):
        tracker, clock, _ = setup(tmp_path)
        run_epochs(tracker, clock, epochs=2)
        tracker.finish()
        runs.append(tracker.run_id)
    path = tmp_path / RECORDS_FILE
    lines = path.read_text().splitlines()
    last_of_first = max(i for i, line in enumerate(lines) if json.loads(line)["run_id"] == runs[0])
    path.write_text("\n".join(lines[:last_of_first] + lines[last_of_first + 1:]) + "\n")
    said = notes_of(tmp_path)["json"]
    assert len(said) == 1 and said[0].startswith(f"{NOTE} {runs[0]}: its records hold "), said


def killed_outright(directory, epochs_done: int):
    """A run killed by SIGKILL (or the out-of-memory killer) after ``epochs_done`` whole epochs, in
    the next: no handler runs, so it leaves neither a partial record nor its summary."""
    tracker, clock, _ = setup(directory)
    for epoch in range(epochs_done + 1):
        clock.advance(1.0)
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.add_samples(100)
        if epoch < epochs_done:
            tracker.end("train")
    kill(tracker, directory)
    return tracker.run_id


def kill(tracker, directory):
    """Stop ``tracker`` as SIGKILL does: its meter gone, no write-up (``_stop`` writes one)."""
    summary = directory / "energy-summary.json"
    before = summary.read_bytes() if summary.exists() else None
    tracker._stop()
    summary.unlink()
    if before is not None:
        summary.write_bytes(before)


def test_a_sweep_trial_killed_outright_is_unfinished_not_pooled_with_the_finished(tmp_path, capsys):
    """Three trials of one sweep in one directory, the third killed in epoch 2 of 3. Its records
    read like a 2-epoch training: the report pooled it with the two finished 2-epoch trials
    ("Over 3 runs of one configuration") as a complete one. The missing write-up is the sign."""
    finished = []
    for _ in range(2):
        tracker, clock, _ = setup(tmp_path)
        run_epochs(tracker, clock, epochs=2)
        finished.append(tracker.run_id)
    killed = killed_outright(tmp_path, epochs_done=2)
    assert load(tmp_path).unfinished == {killed}
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    groups = json.loads(out)["configurations"]
    assert [g["runs"] for g in groups] == [finished, [killed]]
    assert not groups[0]["configuration"]["unfinished"] and groups[1]["configuration"]["unfinished"]
    assert "unfinished (no write-up: killed outright, or still training) (2 completed)" in groups[1]["description"]
    assert "unfinished, its process killed outright or still training, 2 completed" in groups[1]["statement"]
    assert [n for n in groups[1]["provenance"] if n.startswith("No write-up")] == [
        f"No write-up (energy-summary.json) beside the records of run {killed} for its last attempt, which a run "
        "writes when it ends, an exception or Ctrl-C included: killed outright (SIGKILL, the out-of-memory killer, a "
        "preemption, a SIGTERM outside Lightning), or still training. What it used after its last record is in no figure here, and it is "
        "reported as cut short, apart from runs that finished."]
    assert not any(n.startswith("No write-up") for n in groups[0]["provenance"])
    assert f"{killed}: unknown framework, 2 training epoch(s), no write-up (killed, or still training)" in err
    assert main(["report", str(tmp_path)]) == 0
    assert "- No write-up (energy-summary.json) beside the records of run" in capsys.readouterr().out
    assert main(["lifecycle", str(tmp_path), "--run-id", killed, "--inferences", "10"]) == 0
    assert "the run has no write-up (killed outright, or still training)" in capsys.readouterr().out
    assert main(["lifecycle", str(tmp_path), "--run-id", finished[0], "--inferences", "10"]) == 0
    assert "no write-up" not in capsys.readouterr().out


def test_a_run_whose_last_attempt_was_killed_outright_after_a_summary_is_unfinished(tmp_path):
    """The first attempt ended (its summary written, 1 attempt), the resume was
    killed outright: the summary there is the first attempt's only."""
    first, clock, _ = setup(tmp_path)
    first.begin("train", 0)
    clock.advance(10.0)
    first.end("train")
    checkpoint = first.state_dict()
    first.finish()
    resumed, clock, _ = setup(tmp_path)
    resumed.load_state_dict(checkpoint)
    clock.advance(1.0)
    resumed.begin("train", 1)
    clock.advance(10.0)
    resumed.end("train")
    kill(resumed, tmp_path)
    assert json.loads((tmp_path / "energy-summary.json").read_text())["attempts"] == 1
    assert load(tmp_path).unfinished == {resumed.run_id}
    resume_and_train(tmp_path, resumed.state_dict(), epoch=2)  # resumed again, and finished
    assert load(tmp_path).unfinished == set()


def test_records_copied_under_another_name_are_not_judged(tmp_path):
    """A records file copied alone under another name has no summary beside it to look for."""
    killed_outright(tmp_path / "run", epochs_done=1)
    (tmp_path / "run" / RECORDS_FILE).rename(tmp_path / "run" / "trial-3.jsonl")
    assert load(tmp_path / "run" / "trial-3.jsonl").unfinished == set()


def test_a_damaged_write_up_is_said_not_taken_for_a_killed_run(tmp_path, capsys):
    """A summary is written whole (write_json_atomic), so one that is no JSON is damaged (a disk
    full, an edit), not half-written. It was passed over in silence, and the run it belongs to was
    reported as killed outright; the report now says which file it could not read, and why."""
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=2)
    (tmp_path / "energy-summary.json").write_text('{"run_id": "' + tracker.run_id + '", "energ', encoding="utf-8")
    with pytest.warns(UserWarning, match=r"could not read .*energy-summary\.json \(not JSON: .*\): the runs whose "
                                         r"records are beside it are reported without that write-up"):
        assert load(tmp_path).unfinished == {tracker.run_id}
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("energy-summary.json (not JSON") == 1, err
    # A directory without a summary at all (a run still training) gives no such warning.
    (tmp_path / "energy-summary.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(tmp_path)


@pytest.mark.parametrize("content", ["[]", '"x"', '{"run_id": 7}'])
def test_a_write_up_that_is_json_but_no_summary_is_said(tmp_path, content):
    """Valid JSON that is no summary (``[]``, a string, a numeric ``run_id``) was passed over in
    silence, the run then reported as killed outright; it is now said, as a damaged one is."""
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=2)
    (tmp_path / "energy-summary.json").write_text(content, encoding="utf-8")
    with pytest.warns(UserWarning, match=r"energy-summary\.json \(JSON, but not an energy summary: no run_id\)"):
        assert load(tmp_path).unfinished == {tracker.run_id}


def test_a_write_up_saved_with_a_byte_order_mark_is_read(tmp_path):
    """An editor that saves the summary again with a BOM: records are read allowing one, and the
    summary was refused as not JSON."""
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=2)
    tracker.finish()
    summary = tmp_path / "energy-summary.json"
    summary.write_text(summary.read_text(encoding="utf-8"), encoding="utf-8-sig")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(tmp_path).unfinished == set()
