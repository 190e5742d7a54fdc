"""Everyday distributed paths on two real CPU ranks (Lightning DDP over gloo): a step failing on one
rank alone, inside validation or test, and the resume that follows; and the same failure on two
trackers in threads, where the gather that ends a phase fails because the other rank is gone.

Each rank also counts the samples it really ran (tests/distributed_everyday_script.py); the
records must hold every rank's part of every phase once, whatever rank failed first.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from greencallbacks.ledger import read_run_records
from greencallbacks.tracker import SUMMARY_FILE
from tests.test_ledger_ranks import CPU_W, GPU_W, PHASE_S, rank_tracker, run_ranks

SCRIPT = Path(__file__).with_name("distributed_everyday_script.py")
WORLD = 2


def launch(out: Path, mode: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), mode], capture_output=True, text=True,
                          timeout=180, env=env, cwd=out)
    ranks = [json.loads((out / f"{mode}.rank{r}.json").read_text()) for r in range(WORLD)]
    return done, ranks


def parts_of(records) -> dict:
    """Each phase's records by (attempt, seq): one summed record, or one part a rank where a
    failure wrote them apart (rank 1's in its own file)."""
    parts = defaultdict(list)
    for record in records:
        parts[record.attempt, record.seq].append(record)
    return parts


def check_every_ranks_part_once(parts) -> None:
    """Each phase holds every rank's part once; a rank's part is missing only from the phases
    begun after its last one (it had failed)."""
    owners = {key: [k for r in pieces for k in sorted({c["rank"] for c in r.components})] for key, pieces in parts.items()}
    for key, pieces in parts.items():
        assert sorted(set(owners[key])) == owners[key] and sum(r.ranks for r in pieces) == len(owners[key]), key
        for rank in set(range(WORLD)) - set(owners[key]):
            last = max((k for k, ranks in owners.items() if rank in ranks and k[0] == key[0]), default=key)
            assert key > last, f"rank {rank}'s part of {key} ({pieces[0].phase}, epoch {pieces[0].epoch}) is missing"


def check_summary(directory: Path, records) -> None:
    """The summary is the records' sum, whole and phase by phase (energy and samples)."""
    summary = json.loads((directory / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(sum(r.energy_j for r in records), rel=1e-9)
    for phase, totals in summary["phases"].items():
        mine = [r for r in records if r.phase == phase]
        assert totals["energy_j"] == pytest.approx(sum(r.energy_j for r in mine), rel=1e-9), phase
        assert totals["samples"] == sum(r.samples for r in mine), phase


@pytest.mark.slow
@pytest.mark.distributed
def test_a_validation_failing_on_one_rank_keeps_both_ranks_parts_and_the_resume_goes_on(tmp_path):
    """Rank 1 alone raises in epoch 1's mid-epoch validation (val_check_interval=0.5); rank 0 has
    finished its validation batches and waits in the gather that ends the phase, which fails. Its
    part of that validation, and of the gap before the epoch (written with it), were lost: taken
    from the pending records before the gather, they were neither summed nor written by the abort
    (about 1 J of 108 J here; the record said 4 validation samples of the 11 run)."""
    crashed, ran = launch(tmp_path, "crash-val")
    assert crashed.returncode != 0 and "rank 1 alone fails in validation" in crashed.stderr, crashed.stderr[-3000:]
    run_id = ran[0]["run_id"]
    records = read_run_records(run_id, [tmp_path / "energy"])
    check_every_ranks_part_once(parts_of(records))
    cut_short = [r for r in records if r.phase == "validation" and r.epoch == 1]
    assert sum(r.samples for r in cut_short) == sum(d["validation"][-1] for d in ran) == 7 + 4
    # 37 samples padded by the DistributedSampler to 19 a rank: counted as run, as documented.
    assert [r.samples for r in records if r.phase == "train" and not r.partial] == [38]
    check_summary(tmp_path / "energy", records)

    resumed, ran_after = launch(tmp_path, "resumed-val")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ran_after[0]["run_id"] == run_id
    records = read_run_records(run_id, [tmp_path / "energy"])
    check_every_ranks_part_once(parts_of(records))
    check_summary(tmp_path / "energy", records)
    whole_epochs = [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "train" and not r.partial]
    assert whole_epochs == [(0, 0, 38), (1, 1, sum(d["train"]["1"] for d in ran_after))]
    # The last logged total is everything up to the resumed epoch's end: all but the gap after it.
    last_train = [r for r in records if r.phase == "train" and r.attempt == 1][-1]
    after = [r for r in records if r.attempt == 1 and r.phase == "other" and r.seq > last_train.seq]
    logged = [row["energy_kwh_total"] for row in ran_after[0]["logged"] if "energy_kwh_total" in row][-1]
    assert logged == pytest.approx(sum(r.energy_kwh for r in records) - sum(r.energy_kwh for r in after), rel=1e-9)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_test_failing_on_one_rank_after_the_fit_keeps_the_other_ranks_part(tmp_path):
    """``trainer.test`` after a DDP fit (accumulate_grad_batches=2, val_check_interval=0.5, padded
    shards), rank 1 alone failing in test_step: rank 0's part of the test (6 samples) and of the
    gaps around it were lost in the failed gathers that end the test and, at teardown, the run."""
    crashed, ran = launch(tmp_path, "crash-test")
    # Rank 0's test ends without an error of its own (a test has no collective of Lightning's), and
    # with it the launch; only rank 1 failed.
    assert "rank 1 alone fails in test" in crashed.stderr, crashed.stderr[-3000:]
    records = read_run_records(ran[0]["run_id"], [tmp_path / "energy"])
    check_every_ranks_part_once(parts_of(records))
    # The fit before it: every phase summed over both ranks, samples as each rank ran them.
    assert [r.samples for r in records if r.phase == "train"] == [sum(d["train"][e] for d in ran) for e in ("0", "1")]
    assert [r.samples for r in records if r.phase == "validation"] == [14] * 4
    assert sum(r.samples for r in records if r.phase == "test") == sum(d["test"][-1] for d in ran) == 6 + 4
    check_summary(tmp_path / "energy", records)


class PeerGoneReducer:
    """Two ranks in threads; once the other rank's process is gone, a gather fails at once, as
    gloo's does ("Connection closed by peer")."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.world_size, self._shared = rank, WORLD, shared
        self.measures_host, self.hosts = rank == 0, 1

    def all_gather(self, obj):
        if self._shared["gone"].is_set():
            raise RuntimeError("Connection closed by peer")
        self._shared["slots"][self.rank] = obj
        self._shared["barrier"].wait()
        out = list(self._shared["slots"])
        self._shared["barrier"].wait()
        return out


@pytest.mark.parametrize("ending", ["abort", "finish"])
def test_a_gather_failing_as_the_other_rank_is_gone_keeps_this_ranks_part(tmp_path, ending):
    """Rank 1 fails inside a validation (its abort writes its own part); rank 0 ends that
    validation with a gather that fails, then its run: failing at the framework's next collective
    (Lightning's on_exception: ``abort``), or normally (a test has no collective of Lightning's:
    ``finish`` at teardown, gathering again). Every joule each rank measured is in the records
    once, and the summary is theirs: rank 0's validation and the gap before it were lost (taken
    from the pending records before the gather), and so were they where the run then finished."""
    shared = {"slots": [None] * WORLD, "barrier": threading.Barrier(WORLD, timeout=30), "gone": threading.Event()}
    measured_s, failed_at = [0.0] * WORLD, [0.0]

    def rank(r: int, reducer: PeerGoneReducer) -> str:
        tracker, clock = rank_tracker(r, reducer, tmp_path)
        start = clock()
        tracker.begin("train", 0)
        clock.advance(PHASE_S)
        tracker.end("train")
        clock.advance(1.0)  # the gap before the next epoch, written with its first record
        tracker.begin("train", 1)
        tracker.begin("validation", 1)
        clock.advance(2.0)
        tracker.add_samples(7 - 3 * r)
        if r == 1:
            tracker.abort()  # its validation_step raised: Lightning's on_exception
            shared["gone"].set()
        else:
            shared["gone"].wait(30)
            failed_at[0] = clock() - start
            # Each a hook's failure, said and swallowed by the callback: training goes on.
            with contextlib.suppress(RuntimeError):
                tracker.end("validation")
            clock.advance(0.5)  # measured or not: the run may end at its failed gather
            with contextlib.suppress(RuntimeError):
                getattr(tracker, ending)()
        measured_s[r] = clock() - start
        return tracker.run_id

    results = run_ranks(rank, PeerGoneReducer, shared, world=WORLD)
    records = read_run_records(results[0], [tmp_path])
    check_every_ranks_part_once(parts_of(records))
    by_rank = [sum(c["energy_j"] for r in records for c in r.components if c["rank"] == k) for k in range(WORLD)]
    assert by_rank[1] == pytest.approx(GPU_W * measured_s[1], rel=1e-9)
    assert (GPU_W + CPU_W) * failed_at[0] * (1 - 1e-9) <= by_rank[0] <= (GPU_W + CPU_W) * measured_s[0] * (1 + 1e-9)
    assert sum(r.samples for r in records if r.phase == "validation") == 7 + 4
    check_summary(tmp_path, records)
