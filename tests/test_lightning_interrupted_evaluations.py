"""Flows the other Lightning tests leave out, checked end to end with the real Trainer.

- Ctrl-C inside a standalone ``validate`` / ``test`` / ``predict`` (Lightning's graceful shutdown;
  2.5+ then exits, as a script would) and the same calls again on that Trainer, as in a notebook:
  the interrupted call's record is partial with the batches it ran, the next ones are whole, all in
  the fit's run and attempt, and the records still sum to the summary.
- Every checkpoint of a fit with gradient accumulation over a partial last window, a validation
  three times an epoch and checkpoints every 2 optimizer steps: an evaluation of it in a later
  session is labelled with the epoch that a fit resumed from it trains first, and that fit bills
  the batches Lightning runs.
- ``training_step`` returning None (a skipped batch) with accumulation and step metrics: its
  samples still count (the step ran), the step values sit at Lightning's own logging steps, and
  each epoch's logged total is the records summed to its end.
"""

from __future__ import annotations

import collections
import csv
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from lightning_models import BATCH, VAL_SAMPLES, batches_run, flavour, loaders, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0


def energy_callback(EnergyCallback):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)


def data(samples, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(samples, 4, generator=generator),
                                    torch.randn(samples, 1, generator=generator)), batch_size=batch)


def billed(records, attempt):
    counted = collections.Counter()
    for r in records:
        if r.phase != "other" and r.attempt == attempt:
            counted[r.phase, r.epoch] += r.samples
    return +counted


@pytest.mark.parametrize("call", ["validate", "test", "predict"])
def test_ctrl_c_inside_an_evaluation_then_the_evaluations_again(tmp_path, call):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    stage = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}[call]

    class InterruptedOnce(TinyModel):
        interrupted = False

        def _step(self, name, batch, batch_idx):
            if name == stage and batch_idx == 1 and not self.trainer.sanity_checking and not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return getattr(super(), name)(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            return self._step("validation_step", batch, batch_idx)

        def test_step(self, batch, batch_idx):
            return self._step("test_step", batch, batch_idx)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self._step("predict_step", batch, batch_idx)

    callback = energy_callback(EnergyCallback)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback], **trainer_kwargs())
    model = InterruptedOnce()
    model.interrupted = True  # not during the fit
    trainer.fit(model, *loaders())
    run = callback.tracker.run_id
    model.interrupted = False
    try:
        getattr(trainer, call)(model, loaders()[1], **({} if call == "predict" else {"verbose": False}))
    except SystemExit:  # Lightning 2.5+, after its graceful shutdown
        pass
    assert trainer.interrupted
    assert not meter_threads()
    phase = {"validate": "validation", "test": "test", "predict": "predict"}[call]
    records = check_run(run, [logger.log_dir], power_w=POWER_W)
    assert [(r.samples, r.partial) for r in records if r.phase == phase][-1] == (BATCH, True)  # batch 0 of 2 ran
    trainer.validate(model, loaders()[1], verbose=False)
    trainer.test(model, loaders()[1], verbose=False)
    trainer.predict(model, loaders()[1])
    assert not meter_threads()
    assert callback.tracker.run_id == run
    records = check_run(run, [logger.log_dir], power_w=POWER_W)
    assert {r.attempt for r in records} == {0}
    for phase in ("validation", "test", "predict"):
        assert [(r.samples, r.partial) for r in records if r.phase == phase][-1] == (VAL_SAMPLES, False), phase
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, 32), (1, 32)]


def test_every_checkpoint_with_accumulation_is_evaluated_at_the_epoch_a_resume_trains_first(tmp_path):
    """38 samples in batches of 4: 10 batches an epoch, accumulated by 3 (optimizer steps at
    batches 3, 6, 9 and the partial window's 10), validation at every 0.34 of the epoch (every 3
    batches), checkpoints every 2 steps and at every validation, over 2 epochs. Lightning 2.5+
    counts a checkpoint saved at an epoch's last batch as that epoch done (2.2-2.4 run its last
    batch again), so the resumes are compared where the release is 2.5+."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    options = dict(accumulate_grad_batches=3, val_check_interval=0.34)
    savers = [L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2, filename="s-{step}"),
              L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="v-{step}",
                                          save_on_train_epoch_end=False)]
    fitting = energy_callback(EnergyCallback)
    L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path, name="fit"), callbacks=[fitting, *savers],
              **trainer_kwargs(enable_checkpointing=True, **options)).fit(TinyModel(), data(38), data(12, seed=1))
    release = tuple(int(part) for part in L.__version__.split(".")[:2])
    checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert len(checkpoints) >= 8
    labels = []
    for checkpoint in checkpoints:
        later = energy_callback(EnergyCallback)  # a later session: a new callback and Trainer
        evaluation_logs = L.loggers.CSVLogger(tmp_path, name="evaluate")
        L.Trainer(logger=evaluation_logs, callbacks=[later], **trainer_kwargs()).validate(
            TinyModel(), data(12, seed=1), ckpt_path=checkpoint, verbose=False)
        records = check_run(fitting.tracker.run_id, [tmp_path / "fit" / "version_0"], power_w=POWER_W)
        label = [r.epoch for r in records if r.phase == "validation"][-1]
        labels.append(label)
        resumed, ran = energy_callback(EnergyCallback), batches_run(L)
        resume_logs = L.loggers.CSVLogger(tmp_path, name="resume")
        L.Trainer(max_epochs=4, logger=resume_logs, callbacks=[resumed, ran], **trainer_kwargs(**options)).fit(
            TinyModel(), data(38), data(12, seed=1), ckpt_path=checkpoint)
        assert not meter_threads()
        records = check_run(fitting.tracker.run_id, [tmp_path / "fit" / "version_0"], power_w=POWER_W)
        attempt = max(r.attempt for r in records)
        assert billed(records, attempt) == +ran.samples, checkpoint.name
        if release >= (2, 5):
            first = min(epoch for phase, epoch in ran.samples if phase == "train")
            assert label == first, checkpoint.name
    assert labels == sorted(labels) and labels[-1] == 2


def test_skipped_training_steps_with_accumulation_and_step_values(tmp_path):
    """``training_step`` returns None for batches 1 and 4 of each 10-batch epoch, accumulated by 2
    and logged every 3 steps: the skipped batches ran, so they count."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Skipping(TinyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, on_step=True, on_epoch=False)
            return None if batch_idx in (1, 4) else loss

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    L.Trainer(max_epochs=3, logger=logger, callbacks=[callback, ran],
              **trainer_kwargs(accumulate_grad_batches=2, log_every_n_steps=3)).fit(Skipping(), data(38), data(12, seed=1))
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [logger.log_dir], power_w=POWER_W)
    assert billed(records, 0) == +ran.samples
    assert [r.samples for r in records if r.phase == "train"] == [38, 38, 38]
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    steps = [row["step"] for row in rows if row.get("energy_kwh_total") and not row.get("energy_kwh")]
    assert steps and steps == [row["step"] for row in rows if row.get("step_loss")]
    ends, running = [], 0.0
    for r in records:
        running += r.energy_kwh
        if r.phase == "train":
            ends.append(running)
    at_epochs = [float(row["energy_kwh_total"]) for row in rows if row.get("energy_kwh")]
    assert at_epochs == pytest.approx(ends, rel=1e-12)
