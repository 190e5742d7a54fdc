"""What rank 0's real loggers received on two CPU ranks (gloo), read back from disk, against the
run's records. Lightning DDP with CSV and TensorBoard loggers: one rank failing (or killed) inside an epoch,
then the fit resumed on two ranks from a checkpoint saved inside that epoch or at the end of the
one before (tests/distributed_logged_script.py). The HF Trainer under torchrun logging at every
step to TensorBoard: both ranks killed inside an epoch, resumed from its checkpoint
(tests/distributed_logged_hf_script.py).

In every logger and attempt: the step values sit at Lightning's own logging steps; the run's values
only grow, a resume going on from every record of the attempt before (both ranks' parts); each
epoch's values are its records, summed over the ranks, its samples those both ranks ran (the
DistributedSampler's padding included), and its totals the records written by then; nothing
passes the summary, and ``greencallbacks report`` gives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="tensorboard is not installed: the TensorBoard logger needs it")

from greencallbacks.ledger import read_run_records  # noqa: E402
from flow_invariants import report_total_matches  # noqa: E402
from test_lightning import csv_scalars  # noqa: E402
from test_lightning_logged_totals import tensorboard_scalars  # noqa: E402
from test_live import split_points  # noqa: E402
from tests.test_distributed_everyday import check_summary  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SCRIPT = Path(__file__).with_name("distributed_logged_script.py")
HF_SCRIPT = Path(__file__).with_name("distributed_logged_hf_script.py")
REPO = Path(__file__).resolve().parents[1]
INTENSITY = 300.0
REL = 1e-6  # TensorBoard keeps float32


def launch(out: Path, mode: str, ckpt: Path | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), mode, *([str(ckpt)] if ckpt else [])],
                          capture_output=True, text=True, timeout=180, env=env, cwd=out)
    return done, [json.loads(path.read_text()) for path in sorted(out.glob(f"{mode}.rank*.json"))]


def read_loggers(out: Path, mode: str) -> dict[str, dict]:
    return {"csv": csv_scalars(out / "csv" / mode / "version_0" / "metrics.csv"),
            "tensorboard": tensorboard_scalars(out / "tb" / mode / "version_0")}


def in_written_order(records):
    """The records as the run wrote them: by attempt, rank 0's file before the other ranks' own
    (a rank writes its part there as it fails, before any later attempt)."""
    return sorted(records, key=lambda r: r.attempt)


def check_logged(out: Path, run_id: str, attempts: list[tuple[dict, list[dict]]]) -> None:
    """``attempts``: each attempt's loggers read back, and what each of its ranks ran."""
    records = in_written_order(read_run_records(run_id, [out / "energy"]))
    check_summary(out / "energy", records)
    summary_kwh = sum(r.energy_kwh for r in records)
    train_ends, running = [], 0.0
    for r in records:
        running += r.energy_kwh
        if r.phase == "train" and not r.partial:
            train_ends.append((r, running))
    before_attempt = [sum(r.energy_kwh for r in records if r.attempt < a) for a in range(len(attempts))]
    for where in ("csv", "tensorboard"):
        series, epoch_totals, epoch_values = [], [], []
        for attempt, (loggers, ran) in enumerate(attempts):
            scalars, context = loggers[where], f"{where}, attempt {attempt}"
            points, at_epochs = split_points(scalars, "energy_kwh_total")
            assert [s for s, _ in points] == [s for s, _ in scalars["step_loss"]], context  # Lightning's own axis
            # The run's total so far, going on from every record of the attempts before, both ranks' parts.
            assert all(v > before_attempt[attempt] for _, v in points), (context, points, before_attempt)
            co2 = [v for _, v in split_points(scalars, "co2eq_g_total")[0]]
            assert co2 == pytest.approx([v * INTENSITY for _, v in points], rel=1e-5), context
            epoch_steps = [s for s, _ in scalars.get("energy_kwh", [])]
            assert epoch_steps == [s for s, _ in scalars["train_loss"]], context  # Lightning's epoch points
            merged = sorted([(s, 0, v) for s, v in points] + [(s, 1, v) for s, v in zip(epoch_steps, at_epochs)])
            series += [v for _, _, v in merged]
            epoch_totals += at_epochs
            # The k-th epoch logged is the k-th the ranks ran (the failed one logged none).
            ran_epochs = sorted({int(e) for d in ran for e in d["train"]})
            for k, ((_, kwh), (_, per_sample)) in enumerate(zip(scalars["energy_kwh"], scalars["energy_j_per_sample"])):
                epoch = ran_epochs[k]
                epoch_values.append((attempt, epoch, sum(d["train"].get(str(epoch), 0) for d in ran), kwh, per_sample))
        assert series == sorted(series), (where, series)
        assert series[-1] <= summary_kwh * (1 + REL), where
        assert epoch_totals == pytest.approx([total for _, total in train_ends], rel=REL), where
        expected = [(r.attempt, r.epoch, r.samples, r.energy_kwh, r.energy_j / r.samples) for r, _ in train_ends]
        assert [v[:3] for v in epoch_values] == [e[:3] for e in expected], where  # samples as both ranks ran them
        assert [x for v in epoch_values for x in v[3:]] == pytest.approx([x for e in expected for x in e[3:]], rel=REL), where
        validations = [r.energy_kwh for r in records if r.phase == "validation"]
        logged_validations = [v for loggers, _ in attempts for _, v in loggers[where].get("val_energy_kwh", [])]
        assert logged_validations == pytest.approx(validations[-len(logged_validations):], rel=REL), where
    report_total_matches(out / "energy", run_id, summary_kwh)


@pytest.mark.parametrize("failure, checkpoint", [("crash", "inside/step=6.ckpt"), ("kill", "ends/epoch=0.ckpt")])
def test_a_failure_on_one_rank_then_a_resume_on_two_logs_the_summed_run(tmp_path, failure, checkpoint):
    """Rank 1 alone raises (``crash``) or is killed outright (``kill``: its part of the open epoch
    is in its heartbeat) in epoch 1's fourth step; the fit goes on on two ranks, with new loggers,
    from the checkpoint inside epoch 1 (step 6) or from the end of epoch 0."""
    pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
    done, ran = launch(tmp_path, failure)
    assert done.returncode != 0 and "by peer" in done.stderr, done.stderr[-3000:]  # rank 0, in the all-reduce (closed or reset)
    assert [d["world_size"] for d in ran] == [2, 2]
    done, ran_after = launch(tmp_path, "resume", tmp_path / checkpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = ran[0]["run_id"]
    assert {d["run_id"] for d in ran_after} == {run_id}
    check_logged(tmp_path, run_id, [(read_loggers(tmp_path, failure), ran), (read_loggers(tmp_path, "resume"), ran_after)])


def test_hf_ranks_killed_inside_an_epoch_then_resumed_log_the_summed_run(tmp_path):
    """Both ranks killed at step 7 (before logging it), after the checkpoint of step 6 inside
    epoch 1; resumed from it on two ranks. 30 samples a epoch, padded by Accelerate to 32."""
    pytest.importorskip("transformers")
    from greencallbacks.records import read_records
    from tests.test_hf_distributed import torchrun

    killed = torchrun(HF_SCRIPT, tmp_path, tmp_path, "killed", PYTHONWARNINGS="ignore")
    assert killed.returncode != 0 and (tmp_path / "checkpoint-6").is_dir(), killed.stderr[-3000:]
    resumed = torchrun(HF_SCRIPT, tmp_path, tmp_path, "resumed", tmp_path / "checkpoint-6", PYTHONWARNINGS="ignore")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    history = json.loads((tmp_path / "resumed.json").read_text())["log_history"]
    records = read_records(tmp_path)
    check_summary(tmp_path, records)
    summary_kwh = sum(r.energy_kwh for r in records)
    # HF's own axis: a step value at every step that logged its loss.
    steps = [e["step"] for e in history if "energy_kwh_total" in e and "energy_kwh" not in e]
    assert steps == [e["step"] for e in history if "loss" in e] == list(range(1, 13))
    totals = [e["energy_kwh_total"] for e in history if "energy_kwh_total" in e]
    assert totals == sorted(totals) and totals[-1] <= summary_kwh
    # The resumed attempt goes on from every record before it: both ranks' carried parts.
    attempt_0 = sum(r.energy_kwh for r in records if r.attempt == 0)
    assert all(e["energy_kwh_total"] > attempt_0 for e in history if e["step"] > 6 and "energy_kwh_total" in e)
    # Each epoch's values: its record (the resumed epoch's part in this attempt), summed over the
    # ranks, per sample as the ranks ran them (32 a epoch: 16 carried, 16 after the resume).
    trained, running, ends = [r for r in records if r.phase == "train" and not r.carried], 0.0, []
    for r in records:
        running += r.energy_kwh
        if r.phase == "train" and not r.carried:
            ends.append(running)
    assert [r.samples for r in records if r.phase == "train"] == [32, 16, 16, 32]
    epochs = [e for e in history if "energy_kwh" in e]
    assert [e["energy_kwh"] for e in epochs] == pytest.approx([r.energy_kwh for r in trained], rel=1e-9)
    assert [e["energy_j_per_sample"] for e in epochs] == pytest.approx([r.energy_j / r.samples for r in trained], rel=1e-9)
    assert [e["energy_kwh_total"] for e in epochs] == pytest.approx(ends, rel=1e-9)
    # What TensorBoard received on rank 0, attempt after attempt, is that history.
    logged = [v for mode in ("killed", "resumed")
              for _, v in tensorboard_scalars(tmp_path / f"tb-{mode}").get("train/energy_kwh_total", [])]
    assert logged == pytest.approx(totals, rel=REL)
