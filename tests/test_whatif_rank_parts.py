"""What-if of a failed distributed run: each rank wrote its own part of the phases open at the
failure (same run, attempt and seq; ranks > 0 in ``energy-records.rank<r>.jsonl``). The ranks ran
them side by side, so the run's timeline holds each such phase once (``ledger.each_phase_once``),
its energy every rank's: laid by start time, one part was taken for nested in the other and they
were laid end to end, a longer run whose later part was priced at a later hour's intensity."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records, wall_seconds
from greencallbacks.meter import Meter
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH
from greencallbacks.whatif import main, whatif
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.test_ledger_ranks import ThreadReducer, run_ranks
from tests.test_whatif import T0, write_series

WORLD, GPU_W, EPOCH_S = 2, 100.0, 10.0


class TwoRanks(ThreadReducer):
    def __init__(self, rank: int, shared: dict) -> None:
        super().__init__(rank, shared)
        self.world_size, self.measures_host, self.hosts = WORLD, rank == 0, 1


def failed_in_epoch_1(directory, series):
    """2 ranks, each a 100 W device on its own clock from T0, priced with ``series``: epoch 0 whole
    (summed at its end), then epoch 1 fails 10 s in on both ranks, which write their parts apart."""
    def rank(rank, reducer):
        clock = FakeClock(0.0)
        tracker = Tracker(carbon=Carbon(series=series), run_id="ddp")
        tracker.start(Meter([ScriptedSensor(f"gpu{rank}", clock, power_w=GPU_W)], fallback=None, clock=clock,
                            wall_clock=lambda: clock() + T0), reducer=reducer, output_dir=directory)
        for epoch in range(2):
            tracker.begin("train", epoch)
            clock.advance(EPOCH_S)
            if epoch == 1:
                tracker.abort()
                return
            tracker.end("train")

    run_ranks(rank, reducer=TwoRanks, world=WORLD,
              shared={"slots": [None] * WORLD, "barrier": threading.Barrier(WORLD, timeout=30)})
    return read_run_records("ddp", [directory])


@pytest.fixture
def series(tmp_path):
    # 100 g/kWh in epoch 0's 10 s, 200 in epoch 1's, 400 after: a part laid after the other is dearer.
    return write_series(tmp_path / "steps.csv", [(T0, 100), (T0 + 10, 200)] + [(T0 + s, 400) for s in range(20, 70, 10)])


def test_whatif_lays_the_ranks_parts_of_a_failed_phase_side_by_side(tmp_path, series):
    records = failed_in_epoch_1(tmp_path / "energy", series)
    parts = [r for r in records if r.epoch == 1]
    assert (tmp_path / "energy" / "energy-records.rank1.jsonl").exists()
    assert [(r.seq, r.ranks, r.partial, r.duration_s, r.start_time) for r in parts] == [
        (parts[0].seq, 1, True, EPOCH_S, parts[0].start_time)] * 2
    # Every joule once: epoch 0 summed (2 kJ at 100 g/kWh), epoch 1 one part a rank (1 kJ each, at 200).
    assert sum(r.energy_kwh for r in records) * J_PER_KWH == pytest.approx(2 * 2 * GPU_W * EPOCH_S)
    recorded_g = (2000 * 100 + 2000 * 200) / J_PER_KWH  # 0.1667 g
    assert sum(r.co2eq_g for r in records) == pytest.approx(recorded_g, rel=1e-9)

    result = whatif(records, series, window_h=0)
    # Got 30 s and 0.2222 g: rank 0's part laid after rank 1's, from 20 s to 30 s, at 400 g/kWh.
    assert result.run_duration_s == pytest.approx(2 * EPOCH_S) == pytest.approx(wall_seconds(records))
    assert result.as_recorded.end_unix == pytest.approx(T0 + 2 * EPOCH_S)
    assert result.as_recorded.co2eq_g == pytest.approx(recorded_g, rel=1e-9)
    assert result.energy_kwh * J_PER_KWH == pytest.approx(4000.0)
    assert result.recorded_note == ""  # the series the tracker priced with prices the run as its records say


def test_the_cli_reads_the_rank_files_and_times_the_run_once(tmp_path, series, capsys):
    failed_in_epoch_1(tmp_path / "energy", series)
    assert main([str(tmp_path / "energy"), "--intensity", str(series), "--window-h", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_duration_s"] == pytest.approx(20.0)  # got 30.0
    assert out["as_recorded"]["co2eq_g"] == pytest.approx(out["recorded_co2eq_g"], rel=1e-9)
    assert main([str(tmp_path / "energy"), "--intensity", str(series), "--window-h", "0"]) == 0
    assert " over 20 s starting " in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.distributed
def test_a_real_two_rank_failure_is_timed_as_the_report_times_it(tmp_path, capsys):
    """Lightning DDP on 2 CPU ranks (gloo), rank 1 alone raising in epoch 1's mid-epoch validation:
    both ranks wrote their parts of epoch 1's training and validation. The what-if said the run took
    1.453 s where the report (each phase once) said 1.406 s: rank 1's 0.047 s of training laid after
    rank 0's part instead of beside it."""
    from tests.test_distributed_everyday import launch

    crashed, ran = launch(tmp_path, "crash-val")
    assert crashed.returncode != 0 and "rank 1 alone fails in validation" in crashed.stderr, crashed.stderr[-3000:]
    records = read_run_records(ran[0]["run_id"], [tmp_path / "energy"])
    assert (tmp_path / "energy" / "energy-records.rank1.jsonl").exists()
    series = write_series(tmp_path / "flat.csv", [(min(_unix(r.start_time) for r in records) // 3600 * 3600 + h * 3600, 300)
                                                  for h in range(3)])
    assert main([str(tmp_path / "energy"), "--intensity", str(series), "--window-h", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # Start times are written to the millisecond: the timeline's span is the longest rank's own seconds
    # to a few; the report's sum of each phase's longest part (``wall_seconds``) may take the training's
    # from one rank and its nested validation's from the other, so it is no shorter.
    assert out["run_duration_s"] == pytest.approx(_longest_rank_seconds(records), abs=0.005)
    assert out["run_duration_s"] <= wall_seconds(records) + 0.005
    assert out["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    # One intensity all along: each joule priced at 300 g/kWh, whatever the layout.
    assert out["as_recorded"]["co2eq_g"] == pytest.approx(300 * out["energy_kwh"], rel=1e-9)


def _longest_rank_seconds(records) -> float:
    """The seconds of the phases written as one, and of the slowest rank's own parts of the others."""
    by_seq = {}
    for record in records:
        by_seq.setdefault(record.seq, []).append(record)
    per_rank = {}
    for parts in (group for group in by_seq.values() if len(group) > 1):
        for part in parts:
            (rank,) = {c["rank"] for c in part.components}
            per_rank[rank] = per_rank.get(rank, 0.0) + part.duration_s
    return sum(group[0].duration_s for group in by_seq.values() if len(group) == 1) + max(per_rank.values(), default=0.0)


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def two_ranks_failing_in_epoch_1(tmp_path, sensors_of) -> Path:
    """Two ranks (threads) of run "ddp" measured by ``sensors_of(rank, clock)`` write to tmp_path/energy:
    epoch 0 of EPOCH_S, then epoch 1, where rank 1 fails after 3 s and rank 0 is stopped after
    EPOCH_S. The carbon series they were priced at (100, 200, then 400 g/kWh)."""
    series = write_series(tmp_path / "steps.csv", [(T0, 100), (T0 + 10, 200)] + [(T0 + s, 400) for s in range(13, 70, 10)])

    def rank(rank, reducer):
        clock = FakeClock(0.0)
        tracker = Tracker(carbon=Carbon(series=series), run_id="ddp")
        tracker.start(Meter(sensors_of(rank, clock), fallback=None, clock=clock, wall_clock=lambda: clock() + T0),
                      reducer=reducer, output_dir=tmp_path / "energy")
        tracker.begin("train", 0)
        clock.advance(EPOCH_S)
        tracker.end("train")
        tracker.begin("train", 1)
        clock.advance(3.0 if rank == 1 else EPOCH_S)
        tracker.abort()

    run_ranks(rank, reducer=TwoRanks, world=WORLD,
              shared={"slots": [None] * WORLD, "barrier": threading.Barrier(WORLD, timeout=30)})
    return series


def test_a_rank_whose_part_ended_first_is_priced_over_its_own_seconds(tmp_path):
    """Rank 1 failed 3 s into epoch 1, rank 0 went on 10 s (until it was stopped): each rank priced
    its own part over its own seconds, at the series the what-if is given. The what-if spread both
    parts' 1.3 kJ over the longest part's 10 s, and said the run "as recorded" emitted 0.1783 g
    where its records say 0.1667 g, blaming the intensity it was priced at when it ran."""
    series = two_ranks_failing_in_epoch_1(tmp_path, lambda rank, clock: [ScriptedSensor(f"gpu{rank}", clock, power_w=GPU_W)])
    records = read_run_records("ddp", [tmp_path / "energy"])
    assert sorted(r.duration_s for r in records if r.epoch == 1) == [3.0, EPOCH_S]
    # Epoch 0: 2 kJ at 100 g/kWh; epoch 1: rank 0's 300 J at 200 and 700 J at 400, rank 1's 300 J at 200.
    recorded_g = (2000 * 100 + 300 * 200 + 700 * 400 + 300 * 200) / J_PER_KWH
    assert sum(r.co2eq_g for r in records) == pytest.approx(recorded_g, rel=1e-9)

    result = whatif(records, series, window_h=0)
    assert result.as_recorded.co2eq_g == pytest.approx(recorded_g, rel=1e-9)
    assert result.recorded_note == ""
    assert result.run_duration_s == pytest.approx(2 * EPOCH_S) and result.energy_kwh * J_PER_KWH == pytest.approx(3300.0)


def test_a_rank_that_measured_nothing_is_laid_on_its_own_timeline_in_any_file_order(tmp_path, capsys):
    """A CPU-only DDP's rank 1 measures nothing of its own (rank 0 measures the host): its parts of a
    failed phase name no rank. Its file given first, its part took the timeline of rank 0's, which
    names rank 0, and was laid after it: a run of 20 s was timed 23 s (the real gloo run: 0.930 s
    for 0.894 s, and 0.5879 mg as recorded for the records' 0.5836)."""
    series = two_ranks_failing_in_epoch_1(
        tmp_path, lambda rank, clock: [ScriptedSensor("gpu0", clock, power_w=GPU_W)] if rank == 0 else [])
    energy = tmp_path / "energy"
    parts = [r for r in read_run_records("ddp", [energy]) if r.epoch == 1]
    assert sorted((r.duration_s, [c.get("rank") for c in r.components]) for r in parts) == [(3.0, []), (EPOCH_S, [0])]
    for files in (["energy-records.jsonl", "energy-records.rank1.jsonl"],
                  ["energy-records.rank1.jsonl", "energy-records.jsonl"]):  # rank 1's part read first
        assert main([*(str(energy / f) for f in files), "--intensity", str(series), "--window-h", "0", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["run_duration_s"] == pytest.approx(2 * EPOCH_S), files
        assert out["as_recorded"]["co2eq_g"] == pytest.approx(out["recorded_co2eq_g"], rel=1e-9)
