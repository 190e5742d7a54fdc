"""More everyday Lightning paths, end to end with the real Trainer: resumes from checkpoints saved
at an epoch's last validation, with batch limits changed, with manual optimization, several
training loaders or a stream without a length.

Each flow checks what test_lightning_trainer_options.py checks: the run's records sum to its
summary (one ledger, no seq twice, attempts in order), every record's energy follows its duration
under a scripted constant-power sensor, the samples billed per (phase, epoch) are those Lightning
ran (counted by a second callback), the last logged ``energy_kwh_total`` is the run's total at its
last training end, and no meter thread is left.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from torch.utils.data import DataLoader  # noqa: E402

from lightning_models import BATCH, TRAIN_SAMPLES, Boom, Stream, batches_run, flavour, loaders, step_logging  # noqa: E402
from test_lightning_trainer_options import check, data, energy_callback, trained, trainer_for  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("options", [dict(val_check_interval=0.5), dict(check_val_every_n_epoch=2)],
                         ids=["val-twice-an-epoch", "val-every-2"])
def test_a_resume_from_a_checkpoint_of_an_epochs_last_validation_trains_no_empty_epoch(tmp_path, options):
    """Regression (Lightning 2.2-2.4): ModelCheckpoint saves at the validation that ends an epoch
    when validation runs more than once an epoch or not every epoch, inside the epoch. A resume
    from it calls on_train_epoch_start for that finished epoch, runs none of its batches and ends
    it: the new attempt wrote a training record of that epoch with no samples, which the report
    called the epoch "trained again". 2.5+ skip the hook there."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    last_validated = 0 if "val_check_interval" in options else 1
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    first = trainer_for(L, tmp_path, [callback, ran], max_epochs=4, **options)
    with pytest.raises(Boom):  # the first batch after the checkpoint
        first.fit(TinyModel(fail_at=(last_validated + 1, 0)), *loaders())
    run = callback.tracker.run_id
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=4, **options)
    second.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt-logs" / "last.ckpt")
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1) == [(epoch, TRAIN_SAMPLES) for epoch in range(last_validated + 1, 4)]


def test_a_resume_inside_an_epoch_with_other_batch_limits_bills_what_lightning_runs(tmp_path):
    """``limit_train_batches=0.5`` then 1.0 for the resume from a checkpoint inside epoch 1: the
    resumed epoch runs to the new limit, each epoch bills the batches it ran."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    inside = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, every_n_train_steps=1,
                                         filename="{step}")
    first = trainer_for(L, tmp_path, [callback, ran, inside], max_epochs=3, limit_train_batches=0.5)
    with pytest.raises(Boom):
        first.fit(TinyModel(fail_at=(2, 1)), data(64), loaders()[1])
    run = callback.tracker.run_id
    check(run, [first.log_dir], ran)
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=3, limit_train_batches=1.0)
    second.fit(TinyModel(), data(64), loaders()[1], ckpt_path=tmp_path / "inside" / "step=6.ckpt")
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert [epoch for epoch, _ in trained(records, attempt=1)] == [1, 2]
    assert trained(records, attempt=1)[-1] == (2, 64)


def test_manual_optimization_of_two_optimizers_accumulating_resumed_inside_an_epoch(tmp_path):
    """``automatic_optimization=False``, two optimizers stepped every 2 batches (global_step counts
    each), step values logged every 2 steps: a crash inside epoch 1 and a resume from its last
    checkpoint (every_n_train_steps) bill each batch once."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class TwoOptimizers(TinyModel):
        def __init__(self, fail_at=None):
            super().__init__(fail_at)
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if self.fail_at == (self.current_epoch, batch_idx):
                raise Boom("inside epoch 1")
            x, y = batch
            self.manual_backward(torch.nn.functional.mse_loss(self(x), y) + torch.nn.functional.mse_loss(self.other(x), y))
            if batch_idx % 2 == 1:
                for optimizer in self.optimizers():
                    optimizer.step()
                    optimizer.zero_grad()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.layer.parameters(), lr=0.05), torch.optim.SGD(self.other.parameters(), lr=0.05)]

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    inside = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, every_n_train_steps=2,
                                         filename="{step}")
    first = trainer_for(L, tmp_path, [callback, ran, inside], max_epochs=3, log_every_n_steps=2)
    with pytest.raises(Boom):
        first.fit(TwoOptimizers(fail_at=(1, 3)), data(48), loaders()[1])
    run = callback.tracker.run_id
    check(run, [first.log_dir], ran)
    latest = max((tmp_path / "inside").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=3, log_every_n_steps=2)
    second.fit(TwoOptimizers(), data(48), loaders()[1], ckpt_path=latest)
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1)[-1] == (2, 48)


def test_two_training_loaders_cycled_resumed_inside_an_epoch(tmp_path):
    """A dict of two training loaders (32 and 20 samples, Lightning's max_size_cycle: 5 steps of
    8 + 4): a crash inside epoch 1 and a resume from a checkpoint inside it count both parts of
    every step, once."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class TwoStreams(TinyModel):
        def training_step(self, batch, batch_idx):
            if self.fail_at == (self.current_epoch, batch_idx):
                raise Boom("inside epoch 1")
            return sum(torch.nn.functional.mse_loss(self(x), y) for x, y in batch.values())

    class Ran(L.Callback):  # the samples of both parts, per epoch
        def __init__(self):
            self.samples = collections.Counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.samples["train", trainer.current_epoch] += sum(len(x) for x, _ in batch.values())

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.samples["validation", trainer.current_epoch] += len(batch[0])

    def streams():
        return {"a": data(32, 8), "b": data(20, 4)}

    callback, ran = energy_callback(EnergyCallback), Ran()
    inside = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, every_n_train_steps=2,
                                         filename="{step}")
    first = trainer_for(L, tmp_path, [callback, ran, inside], max_epochs=3)
    with pytest.raises(Boom):
        first.fit(TwoStreams(fail_at=(1, 3)), streams(), loaders()[1])
    run = callback.tracker.run_id
    assert trained(check(run, [first.log_dir], ran)) == [(0, 5 * 12), (1, 3 * 12)]
    callback, ran = energy_callback(EnergyCallback), Ran()
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=3)
    second.fit(TwoStreams(), streams(), loaders()[1], ckpt_path=tmp_path / "inside" / "step=8.ckpt")
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1)[-1] == (2, 5 * 12)


def test_a_stream_without_a_length_stopped_by_max_steps_then_given_more(tmp_path):
    """An IterableDataset of 19 samples (3 batches) with ``max_steps=4``: epoch 1 stops after one
    batch; the fit from ``last.ckpt`` with ``max_steps=9`` trains the stream's epoch 1 again from
    its start (a stream cannot skip its first batches), then 2 batches of epoch 2."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    first = trainer_for(L, tmp_path, [callback, ran], max_epochs=-1, max_steps=4)
    first.fit(TinyModel(), DataLoader(Stream(), batch_size=BATCH), loaders()[1])
    run = callback.tracker.run_id
    assert trained(check(run, [first.log_dir], ran, logged_in=first.log_dir)) == [(0, 19), (1, 8)]
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=-1, max_steps=9)
    second.fit(TinyModel(), DataLoader(Stream(), batch_size=BATCH), loaders()[1],
               ckpt_path=Path(tmp_path) / "ckpt-logs" / "last.ckpt")
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1) == [(1, 19), (2, 16)]


@pytest.mark.parametrize("accumulate", [1, 3])
def test_step_values_of_a_fit_resumed_inside_an_epoch_land_on_lightnings_own_logging_steps(tmp_path, accumulate):
    """Regression (Lightning 2.2-2.4): a checkpoint saved inside an epoch holds its batch's
    optimizer step but not yet its count of batches that stepped, by which Lightning logs; the fit
    resumed from it has global_step one ahead, and its step values landed at 10, 12, ... while
    Lightning's own went to 11, 13, ..."""
    from test_lightning import csv_scalars
    from test_live import step_points

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    StepLogging = step_logging(TinyModel)

    def fit(name, callbacks=(), **fit_kwargs):
        trainer = trainer_for(L, tmp_path, [energy_callback(EnergyCallback), *callbacks], name=name, max_epochs=3,
                              log_every_n_steps=2, accumulate_grad_batches=accumulate)
        trainer.fit(StepLogging(), data(56, batch=8 // accumulate or 1), loaders()[1], **fit_kwargs)
        scalars = csv_scalars(Path(trainer.log_dir) / "metrics.csv")
        return [s for s, _ in scalars["step_loss"]], [s for s, _ in step_points(scalars, "energy_kwh_total")]

    inside = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, every_n_train_steps=3,
                                         filename="{step}")
    fit("first", [inside], ckpt_path=None)
    lightnings, ours = fit("again", ckpt_path=tmp_path / "inside" / "step=9.ckpt")
    assert len(lightnings) >= 4 and ours == lightnings


def test_a_training_loader_added_by_a_reload_is_counted(tmp_path):
    """Regression: with ``reload_dataloaders_every_n_epochs=1`` a model trains on one loader,
    then on a dict of it and a second one (12 samples more an epoch). How batches are counted
    was read once, as the fit started: the second loader's part went uncounted."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Curriculum(TinyModel):
        def train_dataloader(self):
            return data(24) if self.current_epoch == 0 else {"a": data(24), "b": data(12, 4)}

        def val_dataloader(self):
            return data(8)

        def training_step(self, batch, batch_idx):
            parts = batch.values() if isinstance(batch, dict) else [batch]
            return sum(torch.nn.functional.mse_loss(self(x), y) for x, y in parts)

    class Ran(L.Callback):  # the samples of every part, per epoch
        def __init__(self):
            self.samples = collections.Counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            parts = batch.values() if isinstance(batch, dict) else [batch]
            self.samples["train", trainer.current_epoch] += sum(len(x) for x, _ in parts)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.samples["validation", trainer.current_epoch] += len(batch[0])

    callback, ran = energy_callback(EnergyCallback), Ran()
    trainer = trainer_for(L, tmp_path, [callback, ran], max_epochs=3, reload_dataloaders_every_n_epochs=1)
    trainer.fit(Curriculum())
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert trained(records) == [(0, 24), (1, 36), (2, 36)]
