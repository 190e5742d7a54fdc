"""Lightning DDP on real CPU ranks (gloo): one rank killed outright or failing inside an epoch, and
the fit resumed from last.ckpt on another number of processes (2 -> 1, 1 -> 2), then validate and
test on the same Trainer. Each rank counts the samples it really ran
(tests/distributed_paths_script.py); the records must hold every rank's part of every phase once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greencallbacks import runs
from greencallbacks.ledger import read_run_records
from tests.test_distributed_everyday import check_summary, parts_of

pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SCRIPT = Path(__file__).with_name("distributed_paths_script.py")


def launch(out: Path, mode: str, devices: int) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), mode, str(devices)], capture_output=True,
                          text=True, timeout=180, env=env, cwd=out)
    ranks = [json.loads(path.read_text()) for path in sorted(out.glob(f"{mode}.rank*.json"))]
    return done, ranks


def each_ranks_part_once(records) -> None:
    """Every phase holds each rank's part at most once: one summed record, or one part a rank."""
    for key, pieces in parts_of(records).items():
        owners = [k for r in pieces for k in sorted({c["rank"] for c in r.components})]
        assert sorted(set(owners)) == owners and sum(r.ranks for r in pieces) == len(owners), key


def samples_of(records, phase: str, attempt: int, epoch: int) -> int:
    return sum(r.samples for r in records if (r.phase, r.attempt, r.epoch) == (phase, attempt, epoch))


def device_ranks(records, attempt: int, seq: int) -> list[int]:
    return sorted(c["rank"] for r in records if (r.attempt, r.seq) == (attempt, seq) for c in r.components)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Rank 1 alone killed (SIGKILL) in epoch 1's third step, after a checkpoint at its second;
    rank 0 fails in the gradient's all-reduce that follows and writes its part of the run up."""
    out = tmp_path_factory.mktemp("killed")
    done, ran = launch(out, "kill", 2)
    assert done.returncode != 0 and "by peer" in done.stderr  # closed or reset, done.stderr[-3000:]
    assert [d["world_size"] for d in ran] == [2, 2]  # rank 1 wrote what it ran just before its kill
    return out, ran


def test_a_rank_killed_alone_keeps_its_part_of_the_open_epoch_in_a_resume_on_one_process(killed, tmp_path):
    """Rank 1's part of the epoch it was killed in (and of the gap before it) is in the heartbeat it
    wrote at the checkpoint, not in the records: rank 0 wrote its own part of that epoch as it
    failed, and the resume took that phase for carried whole (by its seq alone), dropping rank
    1's: 3 J of its device and its 8 samples here, an hour of 7 GPUs after an OOM kill."""
    shutil.copytree(killed[0], tmp_path, dirs_exist_ok=True)
    ran = killed[1]
    done, ran_after = launch(tmp_path, "resume", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = ran_after[0]["run_id"]
    assert run_id == ran[0]["run_id"] and ran_after[0]["world_size"] == 1
    records = read_run_records(run_id, [tmp_path / "energy"])
    each_ranks_part_once(records)
    check_summary(tmp_path / "energy", records)
    killed_epoch = [r for r in records if (r.phase, r.attempt, r.epoch) == ("train", 0, 1)]
    assert samples_of(records, "train", 0, 1) == sum(d["samples"]["train 1"] for d in ran) == 8 + 8
    assert device_ranks(records, 0, killed_epoch[0].seq) == [0, 1]
    # The resumed epoch on one process, unsharded: what it ran (32 samples on Lightning 2.6, 36 on 2.2).
    assert samples_of(records, "train", 1, 1) == ran_after[0]["samples"]["train 1"]
    assert not list((tmp_path / "energy").glob("energy-open-*"))
    # The report reads the carried part beside rank 0's record of the same phase, once each.
    reported = [r for r in runs.load([tmp_path / "energy"]).records if r.run_id == run_id]
    assert sorted((r.attempt, r.seq, r.energy_j) for r in reported) == sorted((r.attempt, r.seq, r.energy_j) for r in records)


def test_a_report_of_a_run_one_of_whose_ranks_was_killed_counts_that_ranks_heartbeat(killed):
    """Before any resume, the report reads the killed rank's part of its open epoch from its
    heartbeat; it was dropped, as rank 0's record of that epoch has the same seq."""
    out, ran = killed
    records = [r for r in runs.load([out / "energy"]).records if r.run_id == ran[0]["run_id"]]
    assert samples_of(records, "train", 0, 1) == sum(d["samples"]["train 1"] for d in ran) == 8 + 8
    assert sorted(c["rank"] for r in records if (r.phase, r.epoch) == ("train", 1) for c in r.components) == [0, 1]


def test_rank_0_killed_alone_keeps_its_part_of_the_open_epoch_in_a_resume_on_two(tmp_path):
    """Rank 0 alone killed (SIGKILL) in epoch 1's third step, after a checkpoint at its second; rank
    1 fails in the all-reduce that follows and writes its own part of that epoch. Rank 0's part is
    in the checkpoint and its heartbeat: the resume took rank 1's record of the epoch for it and
    dropped it (rank 0's 8 samples and its device's joules up to the checkpoint)."""
    done, ran = launch(tmp_path, "kill-first", 2)
    assert done.returncode == -9 and "by peer" in done.stderr, done.stderr[-3000:]
    assert [d["world_size"] for d in ran] == [2, 2]
    resumed, ran_after = launch(tmp_path, "resume", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_id = ran_after[0]["run_id"]
    assert run_id == ran[0]["run_id"]
    records = read_run_records(run_id, [tmp_path / "energy"])
    each_ranks_part_once(records)
    check_summary(tmp_path / "energy", records)
    killed_epoch = [r for r in records if (r.phase, r.attempt, r.epoch) == ("train", 0, 1)]
    assert device_ranks(records, 0, killed_epoch[0].seq) == [0, 1]
    assert samples_of(records, "train", 0, 1) == sum(d["samples"]["train 1"] for d in ran) == 8 + 8
    assert not list((tmp_path / "energy").glob("energy-open-*"))


def test_a_fit_failing_on_one_process_resumed_on_two_counts_what_each_rank_ran(tmp_path):
    """1 -> 2 processes: a checkpoint inside epoch 1 of a one-process fit (37 samples, 10 batches)
    resumed on two ranks, whose shards are 19 samples each (one padded); then validate and test
    on the same Trainer. Every phase summed over the ranks that ran it, samples as they ran them."""
    done, ran = launch(tmp_path, "crash", 1)
    assert done.returncode != 0 and "rank 0 fails in training" in done.stderr, done.stderr[-3000:]
    done, ran_after = launch(tmp_path, "resume", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {d["run_id"] for d in ran + ran_after} == {ran[0]["run_id"]}
    assert ran_after[0]["records"] == ran_after[1]["records"]  # every rank holds the same summed records
    records = read_run_records(ran[0]["run_id"], [tmp_path / "energy"])
    each_ranks_part_once(records)
    check_summary(tmp_path / "energy", records)
    assert samples_of(records, "train", 0, 1) == ran[0]["samples"]["train 1"] == 8
    assert samples_of(records, "train", 1, 1) == sum(d["samples"]["train 1"] for d in ran_after)
    assert [r.ranks for r in records if r.attempt == 1] == [2] * len([r for r in records if r.attempt == 1])
    fitted = sum(d["samples"]["validation fit"] for d in ran_after)
    validated = sum(d["samples"]["validation validate"] for d in ran_after)
    assert [r.samples for r in records if r.phase == "validation" and r.attempt == 1] == [fitted, validated] == [14, 14]
    assert [r.samples for r in records if r.phase == "test"] == [sum(d["samples"]["test"] for d in ran_after)] == [12]
    assert not list((tmp_path / "energy").glob("energy-open-*"))


def test_a_spawned_fit_failing_on_its_ranks_writes_their_parts_and_the_summary(tmp_path):
    """``ddp_spawn`` and ``ddp_fork`` (here: one launcher, faster to start) run the fit in processes without Lightning's exception handling (only the
    launching process calls ``on_exception``, on a callback that measured nothing): every rank
    failing inside epoch 1 left epoch 0's records alone, no record of the failed epoch or of the
    gap before it, and no summary. Each rank's part is now written as its process ends (the
    launcher may stop a rank still writing once another has ended: at least one part)."""
    done, ran = launch(tmp_path, "spawn-crash", 2)
    assert done.returncode != 0 and "fails in training" in done.stderr, done.stderr[-3000:]
    assert [d["samples"]["train 1"] for d in ran] == [8, 8]
    records = read_run_records(ran[0]["run_id"], [tmp_path / "energy"])
    check_summary(tmp_path / "energy", records)
    failed = [r for r in records if (r.phase, r.epoch) == ("train", 1)]
    assert failed and all(r.partial and r.samples == 8 and r.ranks == 1 for r in failed), failed
    assert [r.samples for r in records if (r.phase, r.epoch) == ("train", 0)] == [38]
