"""A run crashed in one directory and resumed from its checkpoint in another, where the first
directory's records are not found (the first node's scratch disk, copied back after the resume).

The resume writes the gap its checkpoint was taken in again, as a carried partial record of
attempt 0 under that gap's seq; the first directory holds the same gap whole. README says to give
every directory the run wrote in: that must report the run, each phase once.
"""

from __future__ import annotations

import json

import pytest

from greencallbacks import report
from greencallbacks.cli import main
from greencallbacks.records import read_records
from greencallbacks.runs import load
from tests.test_tracker import setup


def train(tracker, clock, epochs):
    """Epochs of 10 s, 100 samples and 10 steps each, a second apart."""
    for epoch in epochs:
        clock.advance(1.0)
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.add_samples(100)
        tracker.end("train", step=10 * (epoch + 1))


def crash_here_resume_there(tmp_path):
    """10 steps an epoch. Attempt 0 in ``first`` trains epochs 0-1 (checkpoint in the gap after epoch 1) and crashes
    in epoch 2; attempt 1 resumes from the checkpoint in ``second`` and trains epochs 2-3."""
    first, second = tmp_path / "first", tmp_path / "second"
    tracker, clock, _ = setup(first)
    train(tracker, clock, epochs=(0, 1))
    clock.advance(1.0)
    checkpoint = tracker.state_dict()  # in the gap after epoch 1
    clock.advance(1.0)
    tracker.begin("train", 2)
    clock.advance(4.0)
    tracker.abort()  # the crash: epoch 2 partial, the summary written (ended: failed)
    first = first.rename(tmp_path / "first-node")  # out of the resume's sight
    resumed, clock, _ = setup(second)
    resumed.load_state_dict(checkpoint)
    train(resumed, clock, epochs=(2, 3))
    clock.advance(1.0)
    resumed.finish()
    return first, second


def test_a_run_resumed_in_another_directory_is_reported_from_both(tmp_path, capsys):
    """Both directories held record seq 4 of attempt 0: the first its gap whole (2 s), the second
    the resume's carried copy up to the checkpoint (1 s, ``carried``). ``report first second``
    refused the run ("both hold record seq 4 ... with different contents"), exit 2."""
    first, second = crash_here_resume_there(tmp_path)
    held_first, held_second = read_records(first), read_records(second)
    carried = [r for r in held_second if r.carried]
    assert len(carried) == 1 and any((r.attempt, r.seq) == (carried[0].attempt, carried[0].seq) and not r.carried
                                     for r in held_first)
    records = load([first, second]).records
    # Each phase once: the first directory's whole gap, not the carried part of it.
    assert sorted((r.attempt, r.seq) for r in records) == sorted({(r.attempt, r.seq) for r in held_first + held_second})
    assert not any(r.carried for r in records)
    expected = sum(r.energy_kwh for r in held_first) + sum(r.energy_kwh for r in held_second if not r.carried)
    assert sum(r.energy_kwh for r in records) == pytest.approx(expected, rel=1e-12)
    (group,) = json.loads(report.render(records, "json"))["configurations"]
    assert group["total"]["energy_kwh"]["mean"] == pytest.approx(expected, rel=1e-12)
    for order in ([first, second], [second, first]):
        assert main(["report", *map(str, order)]) == 0
        out, err = capsys.readouterr()
        # Nor is it said that a call left no write-up: the records hold more than the resume's
        # summary counts because the resume saw the crashed attempt up to its checkpoint alone.
        assert "Records missing" not in out and "left no write-up" not in out and "both hold" not in err


def test_the_resumed_directory_alone_says_the_steps_of_an_epoch(tmp_path):
    """Reported alone, the second directory's records begin at epoch 2, after the carried gap
    whose step (20) is the checkpoint's. Its first epoch was counted from step 0: "2 epochs of
    100 samples in 30 steps each" (steps 30 and 40 at the ends of epochs 2 and 3), not 10."""
    _, second = crash_here_resume_there(tmp_path)
    (group,) = json.loads(report.render(load(second).records, "json"))["configurations"]
    assert group["configuration"]["steps_per_epoch"] == 10
    assert "in 10 steps each" in group["statement"]
