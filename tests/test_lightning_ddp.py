"""Lightning DDP with two real CPU processes over gloo: host energy counted once, same numbers on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed: the Lightning DDP test needs it")
pytest.importorskip("lightning", reason="lightning is not installed: the Lightning DDP test needs it")

from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.tracker import METRIC_STEMS  # noqa: E402

from lightning_models import TRAIN_SAMPLES, VAL_SAMPLES  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SCRIPT = Path(__file__).with_name("lightning_ddp_script.py")
ENERGY_METRICS = {prefix + stem for prefix in ("", "val_") for stem in METRIC_STEMS}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=180, env=env, cwd=out
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def energy_rows(dump):
    return [{k: v for k, v in row.items() if k in ENERGY_METRICS or k == "step"} for row in dump["logged"] if ENERGY_METRICS & row.keys()]


def test_two_processes_ran(ddp_run):
    _, ranks = ddp_run
    assert [d["rank"] for d in ranks] == [0, 1]
    assert all(d["world_size"] == 2 for d in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]


def test_every_rank_logs_the_same_numbers(ddp_run):
    _, (rank0, rank1) = ddp_run
    rows0, rows1 = energy_rows(rank0), energy_rows(rank1)
    assert rows0 == rows1  # exactly equal: summed once, then shared
    for name in ENERGY_METRICS:
        values = [row[name] for row in rows0 if name in row]
        assert len(values) == 2 and all(v > 0 for v in values), name
    callback_metrics = [{k: v for k, v in d["callback_metrics"].items() if k in ENERGY_METRICS} for d in (rank0, rank1)]
    assert callback_metrics[0] == callback_metrics[1] and len(callback_metrics[0]) == len(ENERGY_METRICS)
    assert rank0["records"] == rank1["records"]


def test_host_energy_counted_once_and_ranks_summed(ddp_run):
    out, (rank0, _) = ddp_run
    records = read_records(out / "energy")
    assert not list((out / "energy").glob("energy-records.rank*.jsonl"))  # only rank 0 writes
    assert records and all(r.ranks == 2 for r in records)
    for record in records:
        host_parts = [c for c in record.components if c["kind"] in ("cpu", "ram", "dram")]
        assert host_parts, record
        # One rank per host measures CPU and RAM; the other rank has no device of its own here.
        assert {c["rank"] for c in host_parts} == {0}
        assert len([c for c in host_parts if c["kind"] == "cpu"]) == 1
    train = [r for r in records if r.phase == "train"]
    assert [r.samples for r in train] == [TRAIN_SAMPLES, TRAIN_SAMPLES]  # half on each rank, summed
    assert [r.samples for r in records if r.phase == "validation"] == [VAL_SAMPLES, VAL_SAMPLES]
    logged = [row["energy_kwh"] for row in energy_rows(rank0) if "energy_kwh" in row]
    assert logged == pytest.approx([r.energy_kwh for r in train], rel=1e-5)


def test_a_single_device_test_on_rank_0_after_the_fit_is_measured(ddp_run):
    out, (rank0, _) = ddp_run
    assert rank0["test_on_rank_0"] > 0
    assert [r.phase for r in read_records(out / "test") if r.phase != "other"] == ["test"]


def test_ddp_spawn_pickles_the_callback_into_its_ranks_and_counts_alike(tmp_path):
    """``strategy="ddp_spawn"`` pickles the Trainer, this callback included, into two new
    processes: the callback must survive that, and they measure as the ``ddp`` ranks do."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "ddp_spawn"],
                            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_records(tmp_path / "energy")
    assert records and all(r.ranks == 2 for r in records)
    train = [r for r in records if r.phase == "train"]
    assert [r.samples for r in train] == [TRAIN_SAMPLES, TRAIN_SAMPLES]
    assert [r.samples for r in records if r.phase == "validation"] == [VAL_SAMPLES, VAL_SAMPLES]
    # Lightning hands rank 0's callback_metrics back to this (parent) process.
    parent = json.loads((tmp_path / "rank0.json").read_text())
    assert parent["callback_metrics"]["energy_kwh"] == pytest.approx(train[-1].energy_kwh, rel=1e-6)


def test_a_fit_killed_on_every_rank_carries_every_ranks_part_of_its_open_epoch(tmp_path):
    """Preempted (SIGKILL on both ranks) inside an epoch, after a checkpoint saved there, then
    resumed from it: the open epoch is carried with both ranks' parts, rank 1's from the
    heartbeat it wrote as the checkpoint was taken (the checkpoint holds rank 0's part alone)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    killed = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "killed"],
                            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == ["epoch=0-step=2.ckpt"]
    resumed = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "resumed"],
                             capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = read_records(tmp_path / "energy")
    # The gap before the epoch (closed by its begin, written with the epoch's end) and the epoch itself.
    carried = [r for r in records if r.carried]
    assert [(r.phase, r.epoch, r.attempt, r.ranks) for r in carried] == [("other", None, 0, 2), ("train", 0, 0, 2)]
    parts = {c["name"]: c["energy_j"] for c in carried[1].components if c["kind"] == "gpu"}
    assert sorted(parts) == ["device0", "device1"] and all(j > 0 for j in parts.values())
    assert {r.attempt for r in records if not r.carried} == {1}
    assert not list((tmp_path / "energy").glob("energy-open-*"))
