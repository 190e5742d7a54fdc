"""What Lightning's ``trainer.callback_metrics`` hold of a fit's energy values, and what reads them.

The callback puts each training epoch's and in-fit validation's values there (for ModelCheckpoint,
EarlyStopping and ``mlflow.pytorch.autolog``, whose callback logs ``callback_metrics`` at each
epoch's end into MLflow, a float64 store). They must be the records' values, as the loggers get
them, not rounded to float32 (a relative 3e-8 off: 7.6275103e-07 kWh read back as 7.6275101e-07).
A standalone ``validate()`` puts float64 there through ``LightningModule.log`` already. An epoch
that counted no sample has no per-sample cost there, as in the loggers (not an earlier epoch's).
"""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from greencallbacks.records import read_records  # noqa: E402
from lightning_models import flavour, loaders, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
EXACT = 1e-12
KEYS = ("energy_kwh", "co2eq_g", "energy_kwh_total", "co2eq_g_total", "energy_j_per_sample", "co2eq_g_per_sample")


def energy_callback(EnergyCallback, output_dir):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=output_dir)


def expected_per_epoch(records) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` of the training epochs and their validations, from the records."""
    out: dict[str, dict[int, float]] = {}
    running = {"train": [0.0, 0.0], "validation": [0.0, 0.0]}  # kWh, g: the run's, validation's
    for r in records:
        for phase in {"train", r.phase} & set(running):
            running[phase][0] += r.energy_kwh
            running[phase][1] += r.co2eq_g
        if r.phase not in running or r.partial:
            continue
        prefix = "" if r.phase == "train" else "val_"
        values = {"energy_kwh": r.energy_kwh, "co2eq_g": r.co2eq_g, "energy_kwh_total": running[r.phase][0],
                  "co2eq_g_total": running[r.phase][1], "energy_j_per_sample": r.energy_j_per_sample,
                  "co2eq_g_per_sample": r.co2eq_g_per_sample}
        for key, value in values.items():
            out.setdefault(prefix + key, {})[r.epoch] = value
    return out


def test_callback_metrics_hold_the_records_values_in_float64(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = energy_callback(EnergyCallback, tmp_path / "energy")
    trainer = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path / "csv"), callbacks=[callback],
                        **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    shown = trainer.callback_metrics
    expected = expected_per_epoch(read_records(tmp_path / "energy"))
    for name in (prefix + stem for prefix in ("", "val_") for stem in KEYS):
        assert shown[name].dtype == torch.float64, (name, shown[name].dtype)
        assert shown[name].item() == pytest.approx(expected[name][1], rel=EXACT), name  # the last epoch's


def test_mlflow_pytorch_autolog_logs_each_epochs_record_values(tmp_path, monkeypatch):
    """``mlflow.pytorch.autolog()``: its callback, after ours, logs ``callback_metrics`` at step = epoch."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("mlflow.pytorch")
    from mlflow.tracking import MlflowClient

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True)
    try:
        callback = energy_callback(EnergyCallback, tmp_path / "energy")
        trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path / "csv"), callbacks=[callback],
                            **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
    finally:
        mlflow.pytorch.autolog(disable=True)
        mlflow.end_run()
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    expected = expected_per_epoch(read_records(tmp_path / "energy"))
    assert set(expected) <= set(run.data.metrics), sorted(run.data.metrics)
    for name, per_epoch in expected.items():
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert sorted(logged) == [0, 1, 2], name
        assert logged == pytest.approx(per_epoch, rel=EXACT), name


class Opaque:
    """A batch the sample counter cannot read: its epoch's per-sample costs are left out."""

    def __init__(self, x, y):
        self.features, self.targets = x, y


def test_an_epoch_that_counted_no_sample_shows_no_per_sample_cost_of_an_earlier_one(tmp_path):
    """Epoch 1's batches cannot be counted (epochs 0 and 2's can): its record has no per-sample
    cost, and neither do the loggers nor ``callback_metrics`` and ``logged_metrics`` at its end (which Lightning keeps over
    the fit: epoch 0's value stood there for epoch 1, to ModelCheckpoint and mlflow.pytorch.autolog)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    def opaque(items):
        return Opaque(torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))

    class OneEpochOpaque(TinyModel):
        def train_dataloader(self):
            data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
            return DataLoader(data, batch_size=4, collate_fn=opaque if self.current_epoch == 1 else None)

        def training_step(self, batch, batch_idx):
            x, y = (batch.features, batch.targets) if isinstance(batch, Opaque) else batch
            return torch.nn.functional.mse_loss(self(x), y)

    class Shown(L.Callback):  # after ours: what ModelCheckpoint and autolog's callback read there
        def __init__(self):
            self.per_sample: dict[int, dict[str, float]] = {}
            self.logged: dict[int, dict[str, float]] = {}

        def on_train_epoch_end(self, trainer, pl_module):
            self.per_sample[trainer.current_epoch] = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_per_sample")}
            self.logged[trainer.current_epoch] = {
                k: float(v) for k, v in trainer.logged_metrics.items() if k.endswith("_per_sample")}

    callback, shown = energy_callback(EnergyCallback, tmp_path / "energy"), Shown()
    trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path / "csv"), callbacks=[callback, shown],
                        reload_dataloaders_every_n_epochs=1, limit_val_batches=0, **trainer_kwargs())
    trainer.fit(OneEpochOpaque())
    train = [r for r in read_records(tmp_path / "energy") if r.phase == "train"]
    assert [r.energy_j_per_sample is None for r in train] == [False, True, False]
    for r in train:
        wanted = {} if r.energy_j_per_sample is None else {
            "energy_j_per_sample": r.energy_j_per_sample, "co2eq_g_per_sample": r.co2eq_g_per_sample}
        assert shown.per_sample[r.epoch] == pytest.approx(wanted, rel=EXACT), r.epoch
        assert shown.logged[r.epoch] == pytest.approx(wanted, rel=EXACT), r.epoch
