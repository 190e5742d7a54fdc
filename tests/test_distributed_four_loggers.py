"""What W&B (offline), MLflow (file store), TensorBoard and CSV received on rank 0 of two CPU ranks
(gloo), read back with their own readers, against the run's records, across a fit of 4 epochs
that fails in epoch 2 (an exception or SIGKILL, on rank 1 alone or on both), resumed in a new
launch from the last checkpoint (inside epoch 2) to its end, then ``validate`` on the same Trainer
(tests/distributed_four_loggers_script.py).

In every logger and attempt: each epoch that ended is logged once (epochs 0 and 1 by the failed
attempt, 2 and 3 by the resume: none twice, none missing), at Lightning's own epoch step; the step
values sit at Lightning's own logging steps; the run's values only grow, the resume going on from
every record of the attempt before (both ranks' parts); each epoch's values are its record summed
over the ranks, with the samples both ranks ran; the last epoch's ``energy_kwh_total`` is the
records up to its end; the validations (the fit's and ``validate``'s) are their records; the
records add up to the summary, which ``greencallbacks report`` gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
pytest.importorskip("tensorboard", reason="tensorboard is not installed: the TensorBoard logger needs it")
pytest.importorskip("mlflow", reason="mlflow is not installed: the MLflow logger needs it")
pytest.importorskip("wandb", reason="wandb is not installed: the W&B logger needs it")

from greencallbacks.ledger import read_run_records  # noqa: E402
from flow_invariants import logged_total_matches, report_total_matches  # noqa: E402
from test_lightning import csv_scalars, mlflow_scalars  # noqa: E402
from test_lightning_logged_totals import tensorboard_scalars  # noqa: E402
from test_live import split_points  # noqa: E402
from tests.test_distributed_everyday import check_summary  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SCRIPT = Path(__file__).with_name("distributed_four_loggers_script.py")
INTENSITY = 300.0
REL = 1e-6  # TensorBoard keeps float32
EPOCHS = 4


def launch(out: Path, mode: str, ckpt: Path | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MLFLOW_ALLOW_FILE_STORE": "true",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), mode, *([str(ckpt)] if ckpt else [])],
                          capture_output=True, text=True, timeout=180, env=env, cwd=out)
    return done, [json.loads(path.read_text()) for path in sorted(out.glob(f"{mode}.rank*.json"))]


def wandb_scalars(wandb_dir: Path, epochs: int) -> dict[str, list[tuple[int, float]]]:
    from wandb_offline import read_history_with, run_files

    out: dict[str, list[tuple[int, float]]] = {}
    files = run_files(wandb_dir)
    if not files and not epochs:  # rank 0 killed before W&B wrote its run
        return out
    (run_file,) = files
    for row in read_history_with(run_file, "energy_kwh", epochs):  # W&B writes from a process of its own
        for key, value in row.items():
            if not key.startswith("_") and key != "trainer/global_step":
                out.setdefault(key, []).append((row["trainer/global_step"], value))
    return out


def read_loggers(out: Path, mode: str, ran: list[dict], epochs: int) -> dict[str, dict]:
    (mlflow_run,) = {d["mlflow_run"] for d in ran if d["mlflow_run"]}
    read_back = {"wandb": wandb_scalars(out / f"wandb-{mode}", epochs),
                 "mlflow": mlflow_scalars(f"file:{out / 'mlruns'}", mlflow_run),
                 "tensorboard": tensorboard_scalars(out / "tb" / mode / "version_0")}
    metrics_csv = out / "csv" / mode / "version_0" / "metrics.csv"
    if metrics_csv.exists():  # rank 0 killed outright never writes it (Lightning's CSV logger writes at its end)
        read_back["csv"] = csv_scalars(metrics_csv)
    return read_back


def whole_epochs_with_running_total(records) -> list:
    """Each whole training epoch's record, with the run's energy up to its end (the records in order)."""
    ends, running = [], 0.0
    for record in records:
        running += record.energy_kwh
        if record.phase == "train" and not record.partial:
            ends.append((record, running))
    return ends


def check_logged(out: Path, run_id: str, attempts: list[tuple[dict, list[dict]]], *, rank_0_killed: bool) -> None:
    """``attempts``: each attempt's loggers read back, and what each of its ranks ran. With
    ``rank_0_killed`` the failed attempt's loggers hold what they wrote before the kill: checked
    for what is there."""
    failed = len(attempts) - 2  # the attempt before the resume
    records = sorted(read_run_records(run_id, [out / "energy"]), key=lambda r: r.attempt)
    check_summary(out / "energy", records)
    assert not list((out / "energy").glob("energy-open-*")), "the killed attempts' parts are carried, their files gone"
    summary_kwh = sum(r.energy_kwh for r in records)
    train_ends = whole_epochs_with_running_total(records)
    # Every epoch once: 0 and 1 by the first attempt, 2 (the failed one) and 3 by the resume.
    assert [(r.attempt, r.epoch) for r, _ in train_ends] == [(0, 0), (0, 1), (failed + 1, 2), (failed + 1, 3)]
    before_attempt = [sum(r.energy_kwh for r in records if r.attempt < a) for a in range(len(attempts))]
    validations = [r for r in records if r.phase == "validation" and not r.partial]
    for where in ("wandb", "mlflow", "tensorboard", "csv"):
        series, epoch_values, logged_validations = [], [], []
        for attempt, (loggers, ran) in enumerate(attempts):
            context = f"{where}, attempt {attempt}"
            whole = not (rank_0_killed and attempt == failed)
            if where not in loggers:
                assert not whole, context
                continue
            scalars = loggers[where]
            points, at_epochs = split_points(scalars, "energy_kwh_total")
            lightnings = [s for s, _ in scalars.get("step_loss", [])]
            steps = [s for s, _ in points]
            if whole:
                assert steps == lightnings, context  # Lightning's own axis
            else:  # a prefix of what was logged, our value of a step perhaps before Lightning's own
                assert steps[: len(lightnings)] == lightnings[: len(steps)] and len(steps) <= len(lightnings) + 1, context
            assert all(v > before_attempt[attempt] for _, v in points), (context, points, before_attempt)
            co2 = [v for _, v in split_points(scalars, "co2eq_g_total")[0]]
            assert co2 == pytest.approx([v * INTENSITY for _, v in points], rel=1e-5), context
            epoch_steps = [s for s, _ in scalars.get("energy_kwh", [])]
            if whole:
                assert epoch_steps == [s for s, _ in scalars.get("train_loss", [])], context  # Lightning's epoch points
            merged = sorted([(s, 0, v) for s, v in points] + [(s, 1, v) for s, v in zip(epoch_steps, at_epochs)])
            series += [v for _, _, v in merged]
            ran_epochs = sorted({int(e) for d in ran for e in d["train"]})
            for k, ((_, kwh), (_, per_sample), total) in enumerate(zip(scalars.get("energy_kwh", []),
                                                                       scalars.get("energy_j_per_sample", []), at_epochs)):
                epoch = ran_epochs[k]
                epoch_values.append((attempt, epoch, sum(d["train"].get(str(epoch), 0) for d in ran), kwh, per_sample, total))
            logged = [v for _, v in scalars.get("val_energy_kwh", [])]
            if whole:
                assert len(logged) == sum(len(d["validation"]) for d in ran[:1]), context  # every validation once
                assert [s for s, _ in scalars.get("val_energy_kwh", [])] == [s for s, _ in scalars.get("val_loss", [])], context
            logged_validations.append((attempt, logged))
        assert series == sorted(series), (where, series)
        assert series[-1] <= summary_kwh * (1 + REL), where
        expected = [(r.attempt, r.epoch, r.samples, r.energy_kwh, r.energy_j / r.samples, total) for r, total in train_ends]
        if not rank_0_killed:
            assert [v[:3] for v in epoch_values] == [e[:3] for e in expected], where  # once each, both ranks' samples
        else:  # the killed attempt's loggers may have lost their last epochs: the resume's are all there
            assert [v[:3] for v in epoch_values] == [e[:3] for e in expected if e[0] == 0][: len(epoch_values) - 2] + [
                e[:3] for e in expected if e[0] == failed + 1], where
        by_epoch = {e[:2]: e for e in expected}
        got = [x for v in epoch_values for x in v[3:]]
        assert got == pytest.approx([x for v in epoch_values for x in by_epoch[v[:2]][3:]], rel=REL), where
        logged_total_matches(records, epoch_values[-1][-1], rel=REL, context=where)
        for attempt, logged in logged_validations:
            mine = [r.energy_kwh for r in validations if r.attempt == attempt]
            assert logged == pytest.approx(mine[: len(logged)], rel=REL), (where, attempt)
    report_total_matches(out / "energy", run_id, summary_kwh)


@pytest.mark.parametrize("mode", ["raise-rank0", "kill-both"])  # rank 1 alone: test_distributed_logged_totals
def test_a_fit_failing_in_epoch_2_resumed_from_its_last_checkpoint_then_validated(tmp_path, mode, monkeypatch):
    """The fit of 4 epochs fails in epoch 2 after the checkpoint of step 12 (``inside/last.ckpt``);
    resumed from it to epoch 3's end, then validated. 37 samples a epoch, padded to 19 a rank."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in (its reader too)
    failed, ran = launch(tmp_path, mode)
    assert failed.returncode != 0, failed.stderr[-3000:]
    assert [d["world_size"] for d in ran] == [2, 2]
    assert [d["train"] for d in ran] == [{"0": 19, "1": 19, "2": 12}] * 2
    assert (tmp_path / "inside" / "step=12.ckpt").exists() and not (tmp_path / "inside" / "step=15.ckpt").exists()
    resumed, ran_after = launch(tmp_path, "resume", tmp_path / "inside" / "last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_id = ran[0]["run_id"]
    assert {d["run_id"] for d in ran + ran_after} == {run_id}
    # Lightning resumes a non-stateful loader from its start for the 3 batches left: 12 samples a
    # rank (2.2 to 2.4 train the checkpoint's last batch again first: 16).
    import lightning

    left = 12 if tuple(int(part) for part in lightning.__version__.split(".")[:2]) >= (2, 5) else 16
    assert [d["train"] for d in ran_after] == [{"2": left, "3": 19}] * 2
    rank_0_killed = mode == "kill-both"
    first = read_loggers(tmp_path, mode, ran, 0 if rank_0_killed else 2)
    check_logged(tmp_path, run_id, [(first, ran), (read_loggers(tmp_path, "resume", ran_after, 2), ran_after)],
                 rank_0_killed=rank_0_killed)


def test_a_finished_fit_of_2_epochs_continued_to_4_failing_in_epoch_2_then_resumed_and_validated(tmp_path, monkeypatch):
    """A fit of 2 epochs ends well; a new launch continues it to 4 from its last epoch's checkpoint
    and fails in epoch 2 on both ranks (after the checkpoint of step 12); a third resumes from
    ``last.ckpt`` to the end, then validates. One run of three attempts."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    done, ran = launch(tmp_path, "fit2")
    assert done.returncode == 0, done.stderr[-3000:]
    failed, ran_failed = launch(tmp_path, "raise-both", tmp_path / "ends" / "epoch=1.ckpt")
    assert failed.returncode != 0, failed.stderr[-3000:]
    assert [d["train"] for d in ran_failed] == [{"2": 12}] * 2
    resumed, ran_after = launch(tmp_path, "resume", tmp_path / "inside" / "last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_id = ran[0]["run_id"]
    assert {d["run_id"] for d in ran + ran_failed + ran_after} == {run_id}
    check_logged(tmp_path, run_id, [(read_loggers(tmp_path, "fit2", ran, 2), ran),
                                    (read_loggers(tmp_path, "raise-both", ran_failed, 0), ran_failed),
                                    (read_loggers(tmp_path, "resume", ran_after, 2), ran_after)], rank_0_killed=False)


# ------------------------------------------------------------------------------ HF Trainer
HF_SCRIPT = Path(__file__).with_name("distributed_four_loggers_hf_script.py")
HF_INTENSITY = 400.0  # the script's
REPO = Path(__file__).resolve().parents[1]


def hf_named(key: str) -> str | None:
    """HF's reporters' names (``train/x``, ``eval/x``) as ``log_history``'s (``x``, ``eval_x``)."""
    group, _, name = key.partition("/")
    return {"train": name, "eval": f"eval_{name}"}.get(group) if name else None


def hf_loggers(out: Path, mode: str, evaluations: int = 0) -> dict[str, dict]:
    """What rank 0's W&B, MLflow (every run of the experiment: HF's reporter ends its run with
    ``train()``, and ``evaluate()`` after it logs to a new one) and TensorBoard received, as
    ``{logger: {name: [(global step, value)]}}``; W&B's once it holds ``evaluations`` of ours."""
    from mlflow.tracking import MlflowClient

    from wandb_offline import read_history_with, run_files

    read_back: dict[str, dict] = {"wandb": {}, "mlflow": {}, "tensorboard": {}}
    for run_file in run_files(out / f"wandb-{mode}"):
        for row in read_history_with(run_file, "eval/energy_kwh", evaluations):  # W&B writes from a process of its own
            for key, value in row.items():
                if hf_named(key) and key != "train/global_step":
                    read_back["wandb"].setdefault(hf_named(key), []).append((row["train/global_step"], value))
    client = MlflowClient(f"file:{out / 'mlruns'}")
    experiment = client.get_experiment_by_name(mode)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []
    for run in runs:
        for key in run.data.metrics:
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.timestamp, m.step))
            read_back["mlflow"].setdefault(key, []).extend((m.step, m.value) for m in history)
    for key, points in tensorboard_scalars(out / f"tb-{mode}").items():
        if hf_named(key):
            read_back["tensorboard"][hf_named(key)] = points
    return read_back


def split_history(scalars: dict, name: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``name``'s values at logging steps, and those logged with an epoch's ``energy_kwh`` (the
    last of its step)."""
    points, at_epochs = list(scalars.get(name, [])), []
    for step, _ in scalars.get("energy_kwh", []):
        last = max(i for i, p in enumerate(points) if p[0] == step)
        at_epochs.append(points.pop(last))
    return points, at_epochs


@pytest.mark.parametrize("mode", ["raise-both", "kill-rank1"])
def test_hf_a_fit_failing_in_epoch_2_resumed_from_its_last_checkpoint_then_evaluated(tmp_path, mode, monkeypatch):
    """4 epochs of 4 steps (30 samples padded by Accelerate to 32); the fit fails at step 11
    (inside epoch 2, before logging it, after the checkpoint of step 10) on both ranks or rank 1
    alone; resumed from checkpoint-10 to step 16, then ``evaluate()``. torchrun stops the other
    rank as one fails: the failed attempt's loggers hold what rank 0 wrote by then."""
    pytest.importorskip("transformers")
    from tests.test_hf_distributed import torchrun as torchrun_two_ranks

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in (its reader too)

    def torchrun(*arguments):
        return torchrun_two_ranks(HF_SCRIPT, tmp_path, tmp_path, *arguments, PYTHONWARNINGS="ignore", WANDB_MODE="offline",
                                  WANDB_SILENT="true", WANDB_CONSOLE="off", TF_CPP_MIN_LOG_LEVEL="3")

    failed = torchrun(mode)
    assert failed.returncode != 0 and (tmp_path / "checkpoint-10").is_dir(), failed.stderr[-3000:]
    assert not (tmp_path / "checkpoint-12").exists()
    resumed = torchrun("resume", str(tmp_path / "checkpoint-10"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    ended = json.loads((tmp_path / "resume.json").read_text())
    history = ended["log_history"]
    records = sorted(read_run_records(ended["run_id"], [tmp_path]), key=lambda r: r.attempt)  # every rank's file
    check_summary(tmp_path, records)
    assert not list(tmp_path.glob("energy-open-*")), "the killed attempts' parts are carried, their files gone"
    summary_kwh = sum(r.energy_kwh for r in records)
    train_ends = whole_epochs_with_running_total(records)
    # Every epoch once, with both ranks' samples: 2 by the failed attempt, 2 by the resume (epoch 2:
    # the 2 steps after the checkpoint; the 3 the failed attempt ran of it are its partial records).
    assert [(r.attempt, r.epoch, r.samples) for r, _ in train_ends] == [(0, 0, 32), (0, 1, 32), (1, 2, 16), (1, 3, 32)]
    validations = [r for r in records if r.phase == "validation"]
    assert [(r.attempt, r.epoch) for r in validations] == [(0, 0), (0, 1), (1, 2), (1, 3), (1, 3)]
    attempt_0 = sum(r.energy_kwh for r in records if r.attempt == 0)
    scalars_history: dict[str, list] = {}
    for entry in history:
        for key, value in entry.items():
            if key not in ("step", "epoch"):
                scalars_history.setdefault(key, []).append((entry["step"], value))
    attempts = {"log_history": [(scalars_history, range(1, 17))]}
    first, again = hf_loggers(tmp_path, mode), hf_loggers(tmp_path, "resume", evaluations=3)
    for where in ("wandb", "mlflow", "tensorboard"):
        attempts[where] = [(first[where], range(1, 11)), (again[where], range(11, 17))]
    for where, parts in attempts.items():
        series, epoch_points, evaluations, per_sample = [], [], [], []
        for attempt, (scalars, steps) in enumerate(parts):
            context = f"{where}, attempt {attempt}"
            whole = attempt == 1 or where == "log_history"
            points, at_epochs = split_history(scalars, "energy_kwh_total")
            losses = [s for s, _ in scalars.get("loss", [])]
            assert [s for s, _ in points] == losses[: len(points)], context  # HF's own axis
            if whole:
                assert [s for s, _ in points] == list(steps), context
            if attempt == 1:  # the resume goes on from both ranks' records of the failed attempt
                assert all(v > attempt_0 for _, v in points), context
            co2_points, co2_at_epochs = split_history(scalars, "co2eq_g_total")
            assert [v for _, v in co2_points + co2_at_epochs] == pytest.approx(
                [v * HF_INTENSITY for _, v in points + at_epochs], rel=1e-5), context
            per_sample += [v for _, v in scalars.get("energy_j_per_sample", [])]
            series += sorted([(s, 0, v) for s, v in points] + [(s, 1, v) for s, v in at_epochs])
            epoch_points += [(s, kwh, total) for (s, kwh), (_, total) in zip(scalars.get("energy_kwh", []), at_epochs)]
            evaluations += scalars.get("eval_energy_kwh", [])
        values = [v for _, _, v in series]
        assert values == sorted(values), (where, series)
        assert values[-1] <= summary_kwh * (1 + REL), where
        # The epochs logged: each once, at its last step, its record's energy and the records' total by then.
        expected = [(4 * (r.epoch + 1), r.energy_kwh, total) for r, total in train_ends]
        assert [s for s, _, _ in epoch_points] == [s for s, _, _ in expected[-len(epoch_points):]], where
        assert [s for s, _, _ in epoch_points][-2:] == [12, 16], where  # the resume's epochs, none twice
        assert [x for p in epoch_points for x in p[1:]] == pytest.approx(
            [x for p in expected[-len(epoch_points):] for x in p[1:]], rel=REL), where
        assert per_sample == pytest.approx([r.energy_j / r.samples for r, _ in train_ends][-len(per_sample):], rel=REL), where
        logged_total_matches(records, epoch_points[-1][-1], rel=REL, context=where)
        assert [s for s, _ in evaluations][-3:] == [12, 16, 16], where
        assert [v for _, v in evaluations] == pytest.approx(
            [r.energy_kwh for r in validations][-len(evaluations):], rel=REL), where
