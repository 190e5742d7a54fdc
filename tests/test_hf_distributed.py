"""The HF adapter on two real CPU ranks (torchrun, gloo, DDP through Accelerate)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.tracker import METRIC_STEMS  # noqa: E402
from tests.hf_tiny import BATCH, EVAL_SAMPLES, TRAIN_SAMPLES  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, cwd, *arguments, timeout: float = 240, **env_extra) -> subprocess.CompletedProcess:
    """``script`` with ``arguments`` on two CPU ranks under torchrun (gloo), from ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # A PYTHONPATH given first: the tests run against a copy of src too.
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "src"), str(REPO)])),
           **env_extra}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(script), *map(str, arguments)]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_sum_their_devices_count_the_host_once_and_log_the_same_values(tmp_path):
    done = torchrun(REPO / "tests" / "hf_tiny.py", tmp_path, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"log_history.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["parallel_mode"] == "ParallelMode.DISTRIBUTED"  # DDP over gloo, not two single runs

    # Every rank logs the same (summed) values, for training and evaluation.
    def energy(history):
        return [{k: v for k, v in e.items() if any(k.endswith(stem) for stem in METRIC_STEMS)} for e in history
                if "energy_kwh" in e or "eval_energy_kwh" in e]

    logged = [energy(r["log_history"]) for r in ranks]
    assert len(logged[0]) == 4  # train and eval for 2 epochs
    assert logged[0] == logged[1]

    records = read_records(tmp_path)
    assert all(r.ranks == 2 and r.hosts == 1 for r in records)
    train = [r for r in records if r.phase == "train"]
    # Each rank counts what it trained on, summed: Accelerate deals batches of 8 (8, 8, 8, 6) to the
    # two ranks in turn and pads the last to 8 so the ranks stay in step: 32 samples were computed.
    assert TRAIN_SAMPLES == 30 and BATCH == 8
    assert [r.samples for r in train] == [32, 32]
    assert [r.samples for r in records if r.phase == "validation"] == [EVAL_SAMPLES, EVAL_SAMPLES]
    assert [r.energy_kwh for r in train] == [e["energy_kwh"] for e in logged[0] if "energy_kwh" in e]
    for record in records:
        by_kind: dict[str, list[int]] = {}
        for component in record.components:
            by_kind.setdefault(component["kind"], []).append(component["rank"])
        # The host (CPU, RAM) is measured once, by rank 0; each rank measures its own device.
        assert by_kind.get("cpu") == [0] and by_kind.get("ram") == [0], record.components
        assert sorted(by_kind["gpu"]) == [0, 1]
        assert record.it_energy_kwh * 3.6e6 == pytest.approx(sum(c["energy_j"] for c in record.components), rel=1e-9)
    # Rank 0's estimate of the host takes in rank 1, torchrun's sibling of it, not its child (it
    # missed rank 1's 1 CPU-s of 1.5 before): the CPU energy is both ranks' CPU time at the
    # estimate's watts per busy CPU, within what the two ranks' windows differ by.
    from greencallbacks.sensors.estimate import CpuEstimateSensor

    cpu_j = sum(c["energy_j"] for r in records for c in r.components if c["kind"] == "cpu")
    cpu_s = sum(r["cpu_seconds_measured"] for r in ranks)
    assert ranks[1]["cpu_seconds_measured"] >= 1.0
    assert cpu_j / CpuEstimateSensor().joules_per_cpu_second == pytest.approx(cpu_s, rel=0.2), (cpu_j, cpu_s)


def test_two_ranks_killed_inside_an_epoch_carry_both_parts_of_it_on_resume(tmp_path):
    """Preempted (SIGKILL on both ranks) after the checkpoint of step 2, then resumed from it: the
    open epoch is carried with both ranks' parts. The Trainer saves the callback's state on the
    main process alone; rank 1 writes its part as the checkpoint is saved (``on_save``)."""
    killed = torchrun(REPO / "tests" / "hf_tiny.py", tmp_path, tmp_path, "killed")
    assert killed.returncode != 0 and (tmp_path / "checkpoint-2").is_dir(), killed.stderr[-3000:]
    assert not (tmp_path / "checkpoint-4").exists()
    resumed = torchrun(REPO / "tests" / "hf_tiny.py", tmp_path, tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    records = read_records(tmp_path)
    carried = [r for r in records if r.carried and r.phase == "train"]
    assert [(r.epoch, r.attempt, r.ranks) for r in carried] == [(0, 0, 2)]
    parts = {c["name"]: c["energy_j"] for c in carried[0].components if c["kind"] == "gpu"}
    assert sorted(parts) == ["device0", "device1"] and all(j > 0 for j in parts.values())
    assert {r.attempt for r in records if not r.carried} == {1}
