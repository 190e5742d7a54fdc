"""What W&B's and MLflow's own Keras integrations log of ``EnergyCallback`` (``test_keras_loggers.py``),
on one backend, in a process of its own:

    python tests/keras_loggers_runner.py <backend> <out_dir> <scenario,...>

``wandb.integration.keras.WandbMetricsLogger`` writes an offline run (read back from its
``.wandb`` file), ``mlflow.keras.callback.MlflowCallback`` and ``mlflow.keras.autolog`` a file
store (read back with ``MlflowClient``). On a fake clock that only batches advance (one second
each at 50 W), every epoch's value they logged must be that epoch's in the run's records: the
phase's own, the run's total up to its end (earlier attempts included), per sample; each epoch
logged once. No network: W&B offline, MLflow on files.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from keras_runner_common import BATCH, X, XV, Y, YV, run_scenarios  # first: it picks the backend

# Before W&B and MLflow read them: offline, quiet, and MLflow's file store (deprecated, still read).
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", MLFLOW_ALLOW_FILE_STORE="true")

import keras  # noqa: E402
import mlflow  # noqa: E402
import pytest  # noqa: E402
import wandb  # noqa: E402
from mlflow.keras.callback import MlflowCallback  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.integration.keras import WandbMetricsLogger  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from keras_logged_runner import Boom, Clocked, new_callback, tiny_model  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from tests.fakes.scripted import FakeClock  # noqa: E402
from wandb_offline import read_history_with, run_files  # noqa: E402

EPOCHS = 3
# The values an epoch's logs carry that the records say exactly (power_w divides by wall time,
# which the fake clock does not drive; the predictions are NaN until the run has a trend).
STEMS = ["energy_kwh", "co2eq_g", "energy_kwh_total", "co2eq_g_total", "energy_j_per_sample", "co2eq_g_per_sample"]


def expected_by_epoch(run_id: str, out: Path, context: str) -> dict[str, dict[int, float]]:
    """Key -> epoch -> its value from the run's records (checked against its summary): the last
    whole training / validation record of each epoch, and the run's sums up to its end."""
    records = check_run(run_id, [out / "energy"], context=context)  # in the order their phases ended
    expected: dict[str, dict[int, float]] = {}
    for phase, prefix in (("train", ""), ("validation", "val_")):
        for index, record in enumerate(records):
            if record.phase != phase or record.partial:
                continue
            # Training's totals: everything the run used up to the epoch's end, its validation and
            # the gaps included; validation's: the run's validations so far.
            before = [r for r in records[:index + 1] if phase == "train" or r.phase == phase]
            values = {"energy_kwh": record.energy_kwh, "co2eq_g": record.co2eq_g,
                      "energy_kwh_total": sum(r.energy_kwh for r in before),
                      "co2eq_g_total": sum(r.co2eq_g for r in before),
                      "energy_j_per_sample": record.energy_j_per_sample,
                      "co2eq_g_per_sample": record.co2eq_g_per_sample}
            for stem, value in values.items():
                expected.setdefault(prefix + stem, {})[record.epoch] = value
    return expected


def check_logged(logged: dict[str, list[tuple[int, float]]], run_id: str, out: Path, context: str,
                 epochs: list[int] | None = None) -> None:
    """``logged``: key -> (epoch, value) as a logger wrote them, in order. Each epoch's value once,
    and the records' (every epoch the records have, or ``epochs``)."""
    expected = expected_by_epoch(run_id, out, context)
    for key in [prefix + stem for prefix in ("", "val_") for stem in STEMS]:
        points = logged.get(key, [])
        written = [epoch for epoch, _ in points]
        assert len(written) == len(set(written)), (key, "an epoch logged twice", points, context)
        wanted = expected[key] if epochs is None else {e: v for e, v in expected[key].items() if e in epochs}
        assert dict(points) == pytest.approx(wanted, rel=1e-9), (key, points, wanted, context)


def wandb_logged(wandb_dir: Path, epochs: int, prefix: str = "epoch/") -> tuple[dict, list[dict]]:
    """W&B's offline run in ``wandb_dir`` (finished): key -> (epoch, value) of its epoch rows, and its batch rows."""
    wandb.finish()
    (run_file,) = run_files(wandb_dir)
    history = read_history_with(run_file, "epoch/energy_kwh_total", epochs)  # its service writes it a moment later
    logged: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        if "epoch/epoch" in row:
            for key, value in row.items():
                if key.startswith(prefix):
                    logged.setdefault(key[len(prefix):], []).append((row["epoch/epoch"], value))
    return logged, [row for row in history if "batch/batch_step" in row]


def mlflow_logged(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """key -> (step, value) of an MLflow run, in the order logged (MlflowCallback's step: the epoch)."""
    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]
            for key in keys}


def start_wandb(out: Path, name: str) -> Path:
    wandb.finish()  # an earlier scenario's run, left open by its failure
    wandb_dir = out / f"wandb-{name}"
    wandb_dir.mkdir()
    wandb.init(project="energy", dir=str(wandb_dir), mode="offline")
    return wandb_dir


def fit(model, clock, callbacks, crash=None, **kwargs):
    """``model.fit`` with the fake clock last; None where it raised ``Boom`` as told."""
    try:
        return model.fit(X, Y, batch_size=BATCH, verbose=0, validation_data=(XV, YV),
                         callbacks=[*callbacks, Clocked(clock, crash)], **kwargs)
    except Boom:
        assert crash is not None
        return None


# ------------------------------------------------------------------------------ scenarios
def each_epoch(out: Path) -> None:
    """EnergyCallback first, then WandbMetricsLogger and MlflowCallback: every epoch's values, as
    the records have them, once each."""
    clock, model, wandb_dir, uri = FakeClock(), tiny_model(), start_wandb(out, "fit"), f"file:{out / 'mlruns'}"
    callback = new_callback(out, clock)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        fit(model, clock, [callback, WandbMetricsLogger(), MlflowCallback()], epochs=EPOCHS)
    run_id = callback.tracker.run_id
    check_logged(mlflow_logged(uri, run.info.run_id), run_id, out, "MlflowCallback")
    check_logged(wandb_logged(wandb_dir, EPOCHS)[0], run_id, out, "WandbMetricsLogger")
    assert not meter_threads()


def step_values(out: Path) -> None:
    """Step values go into the batch logs where a keras.callbacks.TensorBoard logs batches (an
    integer update_freq); W&B's and MLflow's batch logging write them at their own steps that are
    also TensorBoard's: the run's total so far, never falling, and at or below the epoch's total.
    Without such a TensorBoard their batch rows carry none (README: the framework's logging steps)."""
    for with_tensorboard in (True, False):
        name = "tb" if with_tensorboard else "alone"
        clock, model, wandb_dir, uri = FakeClock(), tiny_model(), start_wandb(out, name), f"file:{out / ('mlruns-' + name)}"
        callback = new_callback(out / name, clock)
        batch_loggers = [WandbMetricsLogger(log_freq=2), MlflowCallback(log_every_epoch=False, log_every_n_steps=1)]
        tensorboard = [keras.callbacks.TensorBoard(str(out / name / "tb"), update_freq=1)] if with_tensorboard else []
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run() as run:
            fit(model, clock, [callback, *tensorboard, *batch_loggers], epochs=EPOCHS)
        epoch_logged, batch_rows = wandb_logged(wandb_dir, EPOCHS)
        check_logged(epoch_logged, callback.tracker.run_id, out / name, f"WandbMetricsLogger {name}")
        # WandbMetricsLogger(log_freq=2) logs batches 0 and 2 of each epoch's 4 (batch % 2 == 0).
        assert len(batch_rows) == 2 * EPOCHS, batch_rows
        live = [row.get("batch/energy_kwh_total") for row in batch_rows]
        mlflow_live = mlflow_logged(uri, run.info.run_id).get("energy_kwh_total", [])
        if not with_tensorboard:
            assert live == [None] * len(live) and mlflow_live == [], (name, live, mlflow_live)
            continue
        totals = [0.0] + [v for _, v in sorted(epoch_logged["energy_kwh_total"])]
        for logger, values in (("WandbMetricsLogger", live), ("MlflowCallback", [v for _, v in mlflow_live])):
            assert None not in values and len(values) >= 2 * EPOCHS, (logger, values)
            assert values == sorted(values), (logger, "a step value fell", values)
        for epoch in range(EPOCHS):  # W&B's rows of each epoch lie between the totals of the epochs around it
            for value in live[2 * epoch: 2 * epoch + 2]:
                assert totals[epoch] <= value <= totals[epoch + 1], (epoch, value, totals)
        # MLflow logs at the optimizer's iterations 1..12, each TensorBoard's: one step value each.
        assert [step for step, _ in mlflow_live] == list(range(1, 4 * EPOCHS + 1)), mlflow_live
        assert mlflow_live[-1][1] <= totals[-1], (mlflow_live[-1], totals)
    assert not meter_threads()


def backup_resume(out: Path) -> None:
    """A fit raising in epoch 1 with BackupAndRestore, fit again with a new EnergyCallback (a new
    process) and new loggers into the same W&B and MLflow runs: epoch 1 and 2's totals continue
    the run's (the failed attempt's joules included), and no epoch is logged twice."""
    clock, model, wandb_dir, uri = FakeClock(), tiny_model(), start_wandb(out, "resume"), f"file:{out / 'mlruns'}"
    backup = str(out / "backup")
    mlflow.set_tracking_uri(uri)
    run_ids = []
    with mlflow.start_run() as run:
        for crash in ((1, 2), None):
            callback = new_callback(out, clock)
            history = fit(model, clock, [callback, WandbMetricsLogger(), MlflowCallback(),
                                         keras.callbacks.BackupAndRestore(backup)], crash=crash, epochs=EPOCHS)
            assert (history is None) == (crash is not None)
            run_ids.append(callback.tracker.run_id)
    assert run_ids[0] == run_ids[1], ("the resume is a new run", run_ids)
    records = check_run(run_ids[0], [out / "energy"])
    assert {r.attempt for r in records} == {0, 1} and any(r.partial and r.phase == "train" for r in records)
    check_logged(mlflow_logged(uri, run.info.run_id), run_ids[0], out, "MlflowCallback resumed")
    check_logged(wandb_logged(wandb_dir, EPOCHS)[0], run_ids[0], out, "WandbMetricsLogger resumed")
    assert not meter_threads()


def energy_after_loggers(out: Path) -> None:
    """EnergyCallback given after WandbMetricsLogger and MlflowCallback moves itself first and
    warns once, naming them: they still log every epoch's values."""
    clock, model, wandb_dir, uri = FakeClock(), tiny_model(), start_wandb(out, "after"), f"file:{out / 'mlruns'}"
    callback = new_callback(out, clock)
    mlflow.set_tracking_uri(uri)
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run() as run:
        warnings.simplefilter("always", EnergyWarning)
        fit(model, clock, [WandbMetricsLogger(), MlflowCallback(), callback], epochs=EPOCHS)
    moved = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "moved itself" in str(w.message)]
    assert len(moved) == 1 and "WandbMetricsLogger, MlflowCallback" in moved[0], moved
    check_logged(mlflow_logged(uri, run.info.run_id), callback.tracker.run_id, out, "MlflowCallback before")
    check_logged(wandb_logged(wandb_dir, EPOCHS)[0], callback.tracker.run_id, out, "WandbMetricsLogger before")
    assert not meter_threads()


def mlflow_autolog(out: Path) -> None:
    """mlflow.keras.autolog appends its MlflowCallback to the fit's callbacks: after EnergyCallback,
    so its run has every epoch's values."""
    clock, model, uri = FakeClock(), tiny_model(), f"file:{out / 'mlruns'}"
    callback = new_callback(out, clock)
    mlflow.set_tracking_uri(uri)
    mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        fit(model, clock, [callback], epochs=EPOCHS)
    finally:
        mlflow.keras.autolog(disable=True)
    run = mlflow.last_active_run()
    logged = mlflow_logged(uri, run.info.run_id)
    assert not any(math.isnan(v) for _, v in logged["energy_kwh_total"]), logged["energy_kwh_total"]
    check_logged(logged, callback.tracker.run_id, out, "mlflow.keras.autolog")
    assert not meter_threads()


if __name__ == "__main__":
    run_scenarios(globals())
