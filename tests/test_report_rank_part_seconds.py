"""A failed distributed run leaves each rank's part of its open phases (``energy-records.rank<r>.jsonl``,
same seq as rank 0's): the ranks ran them side by side, so the report's time is the longest part."""

from __future__ import annotations

import dataclasses
import json

import pytest

from greencallbacks.cli import main
from greencallbacks.records import RECORDS_FILE, RecordWriter

from test_report import rec


def _write_failed_ddp_run(directory, billed=lambda record: record) -> None:
    """The shape of a Lightning DDP run on 2 CPU ranks whose rank 0 raised in epoch 1's validation:
    each rank wrote its part of the open training epoch (0.0492 s each) and validation (rank 1's
    waited 0.602 s at the epoch's sync). ``billed`` applies to the records rank 0 writes."""
    def part(record, seconds, **changes):
        return dataclasses.replace(record, duration_s=seconds, ranks=1, partial=True, **changes)

    whole = [billed(dataclasses.replace(r, ranks=2)) for r in (rec("ddp", "train", 0, 10.0, 50, 0, seconds=0.05),
                                                               rec("ddp", "validation", 0, 2.0, 22, 1, seconds=0.004))]
    rank0 = [billed(part(rec("ddp", "train", 1, 10.0, 25, 2), 0.0492)),
             billed(part(rec("ddp", "validation", 1, 1.0, 8, 3), 0.0014))]
    rank1 = [part(rec("ddp", "train", 1, 0.0, 25, 2), 0.0492, components=[]),
             part(rec("ddp", "validation", 1, 0.0, 11, 3), 0.602, components=[])]
    for name, records in ((RECORDS_FILE, whole + rank0), ("energy-records.rank1.jsonl", rank1)):
        writer = RecordWriter(directory / name)
        for record in records:
            writer.write(record)


def test_the_ranks_parts_of_a_failed_phase_take_the_longest_part_s_time_not_their_sum(tmp_path, capsys):
    # The report said 0.0984 s for epoch 1's training and 0.6035 s for its validation.
    _write_failed_ddp_run(tmp_path)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    config = json.loads(capsys.readouterr().out)["configurations"][0]
    epoch1 = [row for row in config["epochs"] if row["epoch"] == 1]
    assert [row["seconds"]["mean"] for row in epoch1] == [0.0492]
    assert config["phases"]["train"]["seconds"]["mean"] == pytest.approx(0.05 + 0.0492, rel=1e-12)
    assert config["phases"]["validation"]["seconds"]["mean"] == pytest.approx(0.004 + 0.602, rel=1e-12)
    # Samples stay each rank's, summed.
    assert config["phases"]["train"]["samples"]["mean"] == 100
    # And the run's: each phase once, at its longest part (run_totals).
    assert config["total"]["seconds"]["mean"] == pytest.approx(0.05 + 0.004 + 0.0492 + 0.602, rel=1e-12)


def test_a_phase_rank_0_billed_an_embodied_figure_to_is_covered_whole(tmp_path, capsys):
    """Rank 0 bills the host's embodied CO2eq, a CPU rank 1 nothing (no device with a figure): the
    report said the figure "covers 0.105 s of the run's 0.705 s only", and ``lifecycle`` "0.105 s of
    the run's 0.756 s" (the ranks' parts summed), of a run whose every phase carries one."""
    def billed(record):
        return dataclasses.replace(record, embodied_co2eq_g=1.0, embodied_co2eq_g_low=0.5, embodied_co2eq_g_high=2.0)

    _write_failed_ddp_run(tmp_path, billed)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    embodied = json.loads(capsys.readouterr().out)["configurations"][0]["embodied"]
    assert embodied["billed_seconds"] == pytest.approx(embodied["seconds"], rel=1e-12)
    assert embodied["seconds"] == pytest.approx(0.05 + 0.004 + 0.0492 + 0.602, rel=1e-12)
    assert main(["report", str(tmp_path)]) == 0
    assert "covers" not in capsys.readouterr().out
    assert main(["lifecycle", str(tmp_path), "--inferences", "1000"]) == 0
    assert "the embodied figures cover" not in capsys.readouterr().out


def test_a_failed_distributed_epoch_whose_ranks_each_trained_their_half_is_a_whole_epoch(tmp_path, capsys):
    """The 2-rank run above, resumed from a checkpoint at epoch 1's last training step (taken before
    the validation that raised): the resume goes on with epoch 2, and the run ends well. Each rank's
    part of epoch 1 holds its half of the epoch's 50 samples; judged apart, neither had trained a whole
    epoch, and the report said "cut short by an exception or interrupt, 2 completed" (epoch samples
    [[0, 50], [2, 50]]) of a run that trained its 3 epochs."""
    def part(record, **changes):
        return dataclasses.replace(record, ranks=1, partial=True, **changes)

    def whole(record, attempt):
        return dataclasses.replace(record, ranks=2, attempt=attempt)

    first = [whole(rec("ddp", "train", 0, 10.0, 50, 0), 0), whole(rec("ddp", "validation", 0, 2.0, 22, 1), 0)]
    rank0 = [part(rec("ddp", "train", 1, 10.0, 25, 2)), part(rec("ddp", "validation", 1, 1.0, 8, 3))]
    rank1 = [part(rec("ddp", "train", 1, 0.0, 25, 2), components=[]),
             part(rec("ddp", "validation", 1, 0.0, 11, 3), components=[])]
    resumed = [whole(rec("ddp", "train", 2, 10.0, 50, 4), 1), whole(rec("ddp", "validation", 2, 2.0, 22, 5), 1)]
    for name, records in ((RECORDS_FILE, first + rank0 + resumed), ("energy-records.rank1.jsonl", rank1)):
        writer = RecordWriter(tmp_path / name)
        for record in records:
            writer.write(record)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    assert group["configuration"]["completed_epochs"] == 3
    assert group["configuration"]["epoch_samples"] == [[0, 50], [1, 50], [2, 50]]
    assert "cut short" not in group["description"] and "cut short" not in group["statement"], group["statement"]


def test_a_carbon_pause_the_ranks_each_wrote_a_part_of_is_paused_once(tmp_path, capsys):
    """Every rank pauses together (rank 0's decision); a job stopped during the pause before epoch 1
    leaves each rank's part of that gap, each saying 3 s of its 4 s paused. The report said "Training
    was paused 6.00 s" of a run that paused 3 s."""
    def gap(energy_j, **changes):
        return dataclasses.replace(rec("ddp", "other", 1, energy_j, 0, 2, seconds=4.0), ranks=1, partial=True,
                                   paused_s=3.0, **changes)

    whole = [dataclasses.replace(rec("ddp", "train", 0, 10.0, 50, 0), ranks=2)]
    for name, records in ((RECORDS_FILE, whole + [gap(4000.0)]), ("energy-records.rank1.jsonl", [gap(2000.0, components=[])])):
        writer = RecordWriter(tmp_path / name)
        for record in records:
            writer.write(record)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    pause = json.loads(capsys.readouterr().out)["configurations"][0]["carbon_pause"]
    assert pause["seconds"]["mean"] == 3.0
    # 3 s of the 4 s gap, of both ranks' 6 kJ: 4.5 kJ.
    assert pause["energy_kwh"]["mean"] * 3.6e6 == pytest.approx(4500.0, rel=1e-12)
    assert main(["report", str(tmp_path)]) == 0
    assert "Training was paused 3.00 s for a cleaner grid" in capsys.readouterr().out
