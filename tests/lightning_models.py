"""Tiny Lightning models and data for the adapter tests, for either Lightning flavour."""

from __future__ import annotations

import collections
import csv
import importlib
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

FLAVOURS = {
    # Lightning package -> the module that holds its EnergyCallback
    "lightning.pytorch": "greencallbacks.lightning",
    "pytorch_lightning": "greencallbacks.lightning.pl",
}

TRAIN_SAMPLES, VAL_SAMPLES, BATCH = 32, 16, 8


def flavour(name: str):
    """(the Lightning package, its EnergyCallback class, a tiny LightningModule class)."""
    # A flavour that is not installed skips its tests, saying which (pytest is there under the
    # DDP script too).
    L = pytest.importorskip(name, reason=f"{name} is not installed: its Lightning flavour is not tested")
    EnergyCallback = importlib.import_module(FLAVOURS[name]).EnergyCallback

    class TinyModel(L.LightningModule):
        def __init__(self, fail_at: tuple[int, int] | None = None):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.fail_at = fail_at  # (epoch, batch) where training_step raises

        def forward(self, x):
            return self.layer(x)

        def training_step(self, batch, batch_idx):
            if self.fail_at == (self.current_epoch, batch_idx):
                raise Boom(f"boom at epoch {self.current_epoch} batch {batch_idx}")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return L, EnergyCallback, TinyModel


class Boom(RuntimeError):
    pass


def loaders(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    train = TensorDataset(torch.randn(TRAIN_SAMPLES, 4, generator=generator), torch.randn(TRAIN_SAMPLES, 1, generator=generator))
    val = TensorDataset(torch.randn(VAL_SAMPLES, 4, generator=generator), torch.randn(VAL_SAMPLES, 1, generator=generator))
    return DataLoader(train, batch_size=BATCH), DataLoader(val, batch_size=BATCH)


def trainer_kwargs(**overrides):
    """Quiet, fast, CPU-only Trainer settings."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        # No step-level logging: these tests check the per-epoch values, one per epoch; the
        # values at logging steps are tested in test_live.py.
        log_every_n_steps=0,
    )
    kwargs.update(overrides)
    return kwargs


def batches_run(L, evaluations: bool = False):
    """A callback counting the samples Lightning ran per (phase, epoch), apart from the one under
    test: of training and validation, and with ``evaluations`` of test and predict too."""

    class BatchesRun(L.Callback):
        def __init__(self):
            self.samples = collections.Counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.samples["train", trainer.current_epoch] += len(batch[0])

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.samples["validation", trainer.current_epoch] += len(batch[0])

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if evaluations:
                self.samples["test", trainer.current_epoch] += len(batch[0])

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if evaluations:
                self.samples["predict", trainer.current_epoch] += len(batch[0])

    return BatchesRun()


def state_probe(L):
    """A callback with a state: whether this Lightning restores callbacks' states in ``validate`` /
    ``test`` (2.5 and later) or only in ``fit`` (2.4 and earlier), where an evaluation of another
    run's checkpoint simply goes on in the Trainer's own run."""

    class StateProbe(L.Callback):
        restored = False

        def state_dict(self):
            return {"saved": True}

        def load_state_dict(self, state_dict):
            self.restored = True

    return StateProbe()


def last_logged_total(log_dir: Path) -> float | None:
    """The last ``energy_kwh_total`` in a CSVLogger's metrics.csv; None without one."""
    path = Path(log_dir) / "metrics.csv"
    if not path.exists():
        return None
    values = [float(row["energy_kwh_total"]) for row in csv.DictReader(path.open()) if row.get("energy_kwh_total")]
    return values[-1] if values else None


class Stream(IterableDataset):
    """19 samples (batches of 8: two whole and one of 3) with no ``__len__``: an epoch of unknown length."""

    def __iter__(self):
        for _ in range(19):
            yield torch.randn(4), torch.randn(1)


def step_logging(TinyModel):
    """TinyModel logging its loss at every step: Lightning's own step points, to compare with ours."""

    class StepLogging(TinyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, on_step=True, on_epoch=False)
            return loss

    return StepLogging
