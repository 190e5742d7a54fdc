"""A crashed fit resumed into the SAME loggers: TensorBoard's and the CSV logger's ``version=0`` and
the MLflow run (``MLFlowLogger(run_id=...)``) the crashed attempt wrote to, as a user keeping one
dashboard does (``test_lightning_logged_totals`` resumes into new ones).

What a user reads back there: per step the value written last (TensorBoard and MLflow keep the
crashed attempt's points past the checkpoint; the resume writes those steps again; Lightning's CSV
logger rewrites its file with the resume's rows). Then in every logger each finished epoch's
``energy_kwh``, per-sample costs and ``val_`` values are its record's, once at Lightning's epoch step,
``energy_kwh_total`` at each epoch is the run's records up to that epoch's end (the crashed
attempt's included), and the totals never fall along the steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from greencallbacks.records import read_records  # noqa: E402
from lightning_models import Boom, flavour, loaders, step_logging, trainer_kwargs  # noqa: E402
from test_lightning import csv_scalars  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
FLOAT32 = 1e-6  # TensorBoard keeps float32
BATCHES = 10  # an epoch: 40 samples in batches of 4


def data():
    generator = torch.Generator().manual_seed(40)
    return DataLoader(TensorDataset(torch.randn(40, 4, generator=generator), torch.randn(40, 1, generator=generator)),
                      batch_size=4)


def last_per_step(points) -> dict[int, float]:
    """``{step: value}`` of points in the order written: a step written again keeps its later value."""
    return {step: value for step, value in points}


def written_in_order(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)]
            for tag in accumulator.Tags()["scalars"]}


def mlflow_in_order(uri, run_id) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]
            for key in client.get_run(run_id).data.metrics}


def test_a_resume_into_the_same_logger_versions_and_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    StepLogging = step_logging(TinyModel)
    uri, output_dir = f"file:{tmp_path / 'mlruns'}", tmp_path / "energy"

    def fit(model, mlflow_run=None, ckpt_path=None):
        loggers = [L.loggers.TensorBoardLogger(tmp_path / "tb", name="run", version=0),
                   L.loggers.CSVLogger(tmp_path / "csv", name="run", version=0),
                   L.loggers.MLFlowLogger(experiment_name="run", tracking_uri=uri, run_id=mlflow_run)]
        callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                                  output_dir=output_dir)
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ends", save_top_k=-1, filename="{epoch}")
        trainer = L.Trainer(max_epochs=3, logger=loggers, callbacks=[callback, saver],
                            **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=4))
        try:
            trainer.fit(model, data(), loaders()[1], ckpt_path=ckpt_path)
        except Boom:
            pass
        return callback.tracker.run_id, loggers

    run, (_, _, mlflow_logger) = fit(StepLogging(fail_at=(1, 3)))  # inside epoch 1, past a logging step
    again, (tensorboard, csv_logger, _) = fit(StepLogging(), mlflow_logger.run_id, tmp_path / "ends" / "epoch=0.ckpt")
    assert again == run
    records = read_records(output_dir)
    assert [(r.attempt, r.epoch, r.partial) for r in records if r.phase == "train"] == [
        (0, 0, False), (0, 1, True), (1, 1, False), (1, 2, False)]

    running, validation_running, epochs, validations = 0.0, 0.0, {}, {}
    for r in records:
        running += r.energy_kwh
        if r.phase == "validation":
            validation_running += r.energy_kwh
            validations[r.epoch * BATCHES + BATCHES - 1] = (r, validation_running)
        if r.phase == "train" and not r.partial:
            epochs[r.epoch * BATCHES + BATCHES - 1] = (r, running)  # Lightning's step of the epoch's metrics
    read_back = {"tensorboard": written_in_order(tensorboard.log_dir),
                 "csv": csv_scalars(Path(csv_logger.log_dir) / "metrics.csv"),
                 "mlflow": mlflow_in_order(uri, mlflow_logger.run_id)}
    for where, scalars in read_back.items():
        rel = FLOAT32 if where == "tensorboard" else 1e-9
        # Lightning's CSV logger rewrote its file with the resume's rows: the crashed attempt's epoch 0 is gone.
        kept = {step: value for step, value in epochs.items() if where != "csv" or step > BATCHES}
        kept_validations = {step: value for step, value in validations.items() if where != "csv" or step > BATCHES}
        for prefix, per_epoch in (("", kept), ("val_", kept_validations)):
            for stem, of_record in (("energy_kwh", lambda r: r.energy_kwh), ("co2eq_g", lambda r: r.co2eq_g),
                                    ("energy_j_per_sample", lambda r: r.energy_j_per_sample),
                                    ("co2eq_g_per_sample", lambda r: r.co2eq_g_per_sample)):
                points = scalars[prefix + stem]
                assert [s for s, _ in points] == sorted(per_epoch), (where, prefix + stem, points)  # once an epoch
                wanted = {step: of_record(r) for step, (r, _) in per_epoch.items()}
                assert last_per_step(points) == pytest.approx(wanted, rel=rel), (where, prefix + stem)
            totals = last_per_step(scalars[prefix + "energy_kwh_total"])
            wanted = {step: total for step, (_, total) in per_epoch.items()}
            assert {s: totals[s] for s in wanted} == pytest.approx(wanted, rel=rel), (where, prefix)
        series = [value for _, value in sorted(last_per_step(scalars["energy_kwh_total"]).items())]
        assert series == sorted(series), (where, series)  # the crashed attempt's later points were written again
        assert series[-1] == pytest.approx(epochs[max(epochs)][1], rel=rel), where
