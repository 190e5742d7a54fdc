"""Life-cycle figures a paper quotes, checked against the report of the same records: each epoch's
cost, the epochs counted, and the counts the command line prints."""

from __future__ import annotations

import dataclasses

import pytest

from greencallbacks.cli import main
from greencallbacks.lifecycle import lifecycle
from greencallbacks.records import RecordWriter
from greencallbacks.report.data import epoch_rows

from test_lifecycle import KWH, rec, trained_run


def crashed_in_epoch_2_and_redone():
    """Attempt 0 crashed 400 samples into epoch 2 (2000 J, its checkpoint the end of epoch 1);
    attempt 1 trained epoch 2 again from its first batch, whole (5000 J)."""
    crashed = dataclasses.replace(rec("model", "train", 2, 2000.0, 400, 90), partial=True)
    return [dataclasses.replace(r, attempt=1) if r.epoch == 2 else r for r in trained_run()] + [crashed]


def test_an_epoch_cut_short_and_redone_costs_its_redone_training_as_the_report_says():
    records = crashed_in_epoch_2_and_redone()
    lc = lifecycle(records)
    # The report's row of epoch 2 is the training the model kept; the crash's part is its own row.
    kept = [row for row in epoch_rows(records) if row["epoch"] == 2 and not row["redone"]]
    assert [row["energy_kwh"] * KWH for row in kept] == pytest.approx([5000.0])
    assert lc.training_j_per_epoch == pytest.approx((5000.0, 5000.0, 5000.0))  # was (5000, 5000, 7000)
    assert lc.training_j == pytest.approx(17000.0)  # the crash's 2000 J were spent: in T still
    assert any("costs its redone training per epoch" in note for note in lc.notes)


def test_an_epoch_cut_short_and_resumed_inside_keeps_both_parts():
    """A resume from a checkpoint inside the epoch trains its rest alone: the epoch's cost is both parts."""
    records = [r for r in trained_run() if not (r.phase == "train" and r.epoch == 1)]
    records += [rec("model", "train", 1, 3000.0, 600, 90, partial=True),
                dataclasses.replace(rec("model", "train", 1, 2000.0, 400, 91), attempt=1)]
    assert lifecycle(records).training_j_per_epoch == pytest.approx((5000.0, 5000.0, 5000.0))


def test_training_outside_any_epoch_is_in_t_but_no_epoch():
    """A loop of one's own that trains in steps (``tracker.phase("train")``, no epoch): the report says
    2 epochs; the life cycle said 3, and listed the steps' 600 J first as an epoch's cost."""
    records = trained_run()[:-1] + [rec("model", "train", None, 600.0, 120, 50), rec("model", "test", None, 250.0, 500, 51)]
    lc = lifecycle(records)
    assert lc.epochs == 3 and lc.training_j_per_epoch == pytest.approx((5000.0,) * 3)  # was 4 and (600, 5000, ...)
    assert lc.training_j == pytest.approx(15600.0) and lc.samples_trained == 3120
    assert any("outside any epoch" in note for note in lc.notes)
    steps_only = [rec("s", "train", None, 600.0, 120, 0), rec("s", "train", None, 600.0, 120, 2),
                  rec("s", "test", None, 50.0, 100, 3)]
    lc = lifecycle(steps_only)
    assert lc.epochs == 0 and lc.training_j_per_epoch == () and lc.training_j_per_sample == pytest.approx(5.0)
    assert not any("D is unknown" in note for note in lc.notes)  # no epoch to have a D


def test_the_command_line_prints_counts_whole(tmp_path, capsys):
    """12345 samples per epoch read "1.234e+04", 1234567 inferences "1.23457e+06"."""
    records = [dataclasses.replace(r, samples=12345) if r.phase == "train" else r for r in trained_run()]
    writer = RecordWriter(tmp_path / "energy-records.jsonl")
    for r in records:
        writer.write(r)
    assert main(["lifecycle", str(tmp_path / "energy-records.jsonl"), "--inferences", "1234567"]) == 0
    out = capsys.readouterr().out
    assert "over 3 epochs x 12345 samples" in out and "LC for 1234567 inferences:" in out
    assert main(["lifecycle", str(tmp_path / "energy-records.jsonl"), "--inferences", "1e6"]) == 0
    assert "LC for 1e+06 inferences:" in capsys.readouterr().out  # as given, exactly
    steps = tmp_path / "steps" / "energy-records.jsonl"
    steps.parent.mkdir()
    writer = RecordWriter(steps)
    for r in (rec("s", "train", None, 600.0, 120, 0), rec("s", "test", None, 50.0, 100, 1)):
        writer.write(r)
    assert main(["lifecycle", str(steps), "--inferences", "0"]) == 0
    out = capsys.readouterr().out
    assert "over no epoch (120 samples trained)" in out and "per epoch: none (no training epoch)" in out


def test_the_reports_statement_of_a_training_outside_any_epoch_says_so():
    """It read "The training (0 epochs) used 1.20 Wh", a paper's sentence for a training that ran."""
    from greencallbacks import report

    records = [rec("s", "train", None, 600.0, 120, 0), rec("s", "train", None, 600.0, 120, 2),
               rec("s", "test", None, 50.0, 100, 3)]
    text = report.render(records, "md")
    assert "The training (outside any epoch) used 333 mWh" in text and "0 epochs" not in text
