"""Everyday Trainer options and call sequences, checked end to end with the real Trainer.

Each flow: the records of the run sum to its summary (one ledger, no seq twice, attempts in
order), every record's energy follows its duration under a scripted constant-power sensor (no
joule twice), the samples billed per (phase, epoch) are those Lightning ran (counted by a second
callback), and the last ``energy_kwh_total`` in the CSV logger's metrics.csv is the run's total at
its last training end.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from lightning_models import (  # noqa: E402
    BATCH, TRAIN_SAMPLES, VAL_SAMPLES, Boom, Stream, batches_run, flavour, last_logged_total, loaders, trainer_kwargs)
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0


def energy_callback(EnergyCallback):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)


def trainer_for(L, tmp_path, callbacks, name="logs", max_epochs=2, **options):
    """A CSV-logging Trainer saving ``last.ckpt`` under ``tmp_path/ckpt-<name>``."""
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / f"ckpt-{name}", save_last=True)
    return L.Trainer(max_epochs=max_epochs, logger=L.loggers.CSVLogger(tmp_path, name=name),
                     callbacks=[*callbacks, saver], **trainer_kwargs(enable_checkpointing=True, **options))


def data(samples, batch=BATCH):
    return DataLoader(TensorDataset(torch.randn(samples, 4), torch.randn(samples, 1)), batch_size=batch)


def billed(records, attempt=None):
    counted = collections.Counter()
    for r in records:
        if r.phase != "other" and (attempt is None or r.attempt == attempt):
            counted[r.phase, r.epoch] += r.samples
    return +counted


def check(run_id, dirs, ran=None, attempt=None, logged_in=None):
    """The invariants of the module docstring for ``run_id``; returns its records."""
    assert not meter_threads()
    records = check_run(run_id, dirs, power_w=POWER_W)
    if ran is not None:
        assert billed(records, attempt) == +ran.samples
    if logged_in is not None:
        logged_total_matches(records, last_logged_total(Path(logged_in)), rel=1e-9)
    return records


def trained(records, attempt=None):
    return [(r.epoch, r.samples) for r in records if r.phase == "train" and attempt in (None, r.attempt)]


def test_fit_with_ckpt_path_last_before_any_checkpoint_and_after_a_crash(tmp_path):
    """``ckpt_path="last"`` with no checkpoint yet is a first run; after a crash inside epoch 1 it
    resumes that run in attempt 1 from the end of epoch 0, which bills epoch 1 again in full."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    first = trainer_for(L, tmp_path, [callback, ran], max_epochs=3)
    with pytest.raises(Boom):
        first.fit(TinyModel(fail_at=(1, 2)), *loaders(), ckpt_path="last")
    run = callback.tracker.run_id
    records = check(run, [first.log_dir], ran)
    assert [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == [
        (0, TRAIN_SAMPLES, False), (1, 2 * BATCH, True)]
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], max_epochs=3)
    second.fit(TinyModel(), *loaders(), ckpt_path="last")
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1) == [(1, TRAIN_SAMPLES), (2, TRAIN_SAMPLES)]


@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "ckpt-last"])
def test_a_second_fit_on_one_trainer_with_more_epochs(tmp_path, resume):
    """The same Trainer fitted again with ``max_epochs`` raised from 2 to 4: a new run of epochs 2
    and 3, or, from ``ckpt_path="last"``, attempt 1 of the first run; a test after it continues
    the run the second fit measured."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, ran = energy_callback(EnergyCallback), batches_run(L, evaluations=True)
    trainer, model = trainer_for(L, tmp_path, [callback, ran]), TinyModel()
    trainer.fit(model, *loaders())
    first = callback.tracker.run_id
    ran.samples.clear()
    trainer.fit_loop.max_epochs = 4
    trainer.fit(model, *loaders(), ckpt_path="last" if resume else None)
    trainer.test(model, loaders()[1], verbose=False)
    assert (callback.tracker.run_id == first) is resume
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, attempt=int(resume), logged_in=trainer.log_dir)
    assert trained(records, attempt=int(resume)) == [(2, TRAIN_SAMPLES), (3, TRAIN_SAMPLES)]
    assert [(r.epoch, r.samples) for r in records if r.phase == "test"] == [(4, VAL_SAMPLES)]


def test_a_timer_ending_the_fit_inside_an_epoch_then_a_resume(tmp_path):
    """``max_time`` (a Timer) ending the fit after 2 batches of epoch 1: that epoch's record bills
    those 2 batches, and a resume from its last checkpoint goes on with epoch 2, as Lightning does."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class TimeUpAfterSixBatches(L.callbacks.Timer):
        batches = 0

        def on_train_batch_end(self, trainer, *args, **kwargs):
            self.batches += 1
            super().on_train_batch_end(trainer, *args, **kwargs)

        def time_elapsed(self, stage="train"):  # no clock: the time is up after 6 batches
            return 1e9 if self.batches >= 6 else 0.0

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    first = trainer_for(L, tmp_path, [callback, ran, TimeUpAfterSixBatches(duration={"days": 1})], max_epochs=5)
    first.fit(TinyModel(), *loaders())
    run = callback.tracker.run_id
    records = check(run, [first.log_dir], ran, logged_in=first.log_dir)
    assert trained(records) == [(0, TRAIN_SAMPLES), (1, 2 * BATCH)] and not any(r.partial for r in records)
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], max_epochs=3)
    second.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt-logs" / "last.ckpt")
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1) == [(2, TRAIN_SAMPLES)]


def test_loaders_reloaded_every_epoch_with_a_changing_size(tmp_path):
    """``reload_dataloaders_every_n_epochs=1`` with 8 * e + 11 training samples and 5 + e
    validation samples in epoch e: each epoch bills its own loaders' samples, last batches short."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Growing(TinyModel):
        def train_dataloader(self):
            return data(8 * self.current_epoch + 11)

        def val_dataloader(self):
            return data(5 + self.current_epoch, batch=4)

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    trainer = trainer_for(L, tmp_path, [callback, ran], max_epochs=3, reload_dataloaders_every_n_epochs=1)
    trainer.fit(Growing())
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert trained(records) == [(0, 11), (1, 19), (2, 27)]
    assert [(r.epoch, r.samples) for r in records if r.phase == "validation"] == [(0, 5), (1, 6), (2, 7)]


@pytest.mark.parametrize("options, samples", [
    (dict(accumulate_grad_batches=3), 36),  # 5 batches: the last accumulation of 2, the last batch of 4
    (dict(limit_train_batches=0.5, limit_val_batches=0.5), 16),
    (dict(overfit_batches=2), 16),
    (dict(check_val_every_n_epoch=2), 36),
], ids=["accumulate-partial", "limit-half", "overfit", "val-every-2"])
def test_batch_limits_and_accumulation_bill_the_batches_run(tmp_path, options, samples):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    trainer = trainer_for(L, tmp_path, [callback, ran], max_epochs=2, **options)
    trainer.fit(TinyModel(), data(36), loaders()[1])
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert trained(records) == [(0, samples), (1, samples)]


def test_two_validation_loaders_in_fit_and_validate_and_two_predict_loaders(tmp_path):
    """Validation over two loaders (16 + 5 samples) is one record per epoch, in fit and in
    ``validate``; ``predict`` over two loaders one record, with every loader's predictions."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class TwoLoaders(TinyModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

    callback, ran = energy_callback(EnergyCallback), batches_run(L, evaluations=True)
    trainer, model = trainer_for(L, tmp_path, [callback, ran]), TwoLoaders()
    train, val = loaders()
    trainer.fit(model, train, [val, data(5, batch=2)])
    trainer.validate(model, [val, data(5, batch=2)], verbose=False)
    predictions = trainer.predict(model, [val, data(5, batch=2)])
    assert [[len(p) for p in loader] for loader in predictions] == [[8, 8], [2, 2, 1]]
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase in ("validation", "predict")] == [
        ("validation", 0, 21), ("validation", 1, 21), ("validation", 2, 21), ("predict", 2, 21)]


def test_a_data_module_whose_training_set_grows_between_fits(tmp_path):
    """A LightningDataModule of 24 training samples, then 40 for the resumed fit: each epoch bills
    the set it ran."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Data(L.LightningDataModule):
        size = 24

        def train_dataloader(self):
            return data(self.size)

        def val_dataloader(self):
            return loaders()[1]

    callback, ran, module, model = energy_callback(EnergyCallback), batches_run(L), Data(), TinyModel()
    first = trainer_for(L, tmp_path, [callback, ran], max_epochs=1)
    first.fit(model, datamodule=module)
    run = callback.tracker.run_id
    module.size, ran.samples = 40, collections.Counter()
    second = trainer_for(L, tmp_path, [callback, ran], max_epochs=2)
    second.fit(model, datamodule=module, ckpt_path="last")
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records) == [(0, 24), (1, 40)]


def test_an_iterable_dataset_without_a_length(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    trainer = trainer_for(L, tmp_path, [callback, ran])
    trainer.fit(TinyModel(), DataLoader(Stream(), batch_size=BATCH), loaders()[1])
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert trained(records) == [(0, 19), (1, 19)]


def test_fast_dev_run_records_its_one_batch_of_each_where_the_records_go(tmp_path):
    """Lightning suppresses its loggers and checkpoints; the callback still writes the run's
    records (one batch of training and of validation) and summary in ``default_root_dir``."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    trainer = L.Trainer(max_epochs=3, callbacks=[callback, ran], default_root_dir=tmp_path,
                        **trainer_kwargs(fast_dev_run=True))
    with pytest.warns(UserWarning, match="fast_dev_run"):
        trainer.fit(TinyModel(), *loaders())
    records = check(callback.tracker.run_id, [tmp_path], ran)
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase != "other"] == [
        ("validation", 0, BATCH), ("train", 0, BATCH)]


def test_a_keyboard_interrupt_in_a_step_then_a_fit_again(tmp_path):
    """Ctrl-C inside a training step: Lightning shuts down gracefully (2.5+ then exits, as a
    script would); the interrupted epoch's record is partial, and the next fit from its last
    checkpoint is attempt 1 of the run, billing that epoch again in full."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class InterruptedOnce(TinyModel):
        interrupted = False

        def training_step(self, batch, batch_idx):
            if (self.current_epoch, batch_idx) == (1, 2) and not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    trainer, model = trainer_for(L, tmp_path, [callback, ran], max_epochs=3), InterruptedOnce()
    try:
        trainer.fit(model, *loaders())
    except SystemExit:  # Lightning 2.5+, after its graceful shutdown
        pass
    assert trainer.interrupted
    run = callback.tracker.run_id
    records = check(run, [trainer.log_dir], ran)
    assert [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == [
        (0, TRAIN_SAMPLES, False), (1, 2 * BATCH, True)]
    ran.samples.clear()
    trainer.fit(model, *loaders(), ckpt_path="last")
    assert callback.tracker.run_id == run
    records = check(run, [trainer.log_dir], ran, attempt=1, logged_in=trainer.log_dir)
    assert trained(records, attempt=1) == [(1, TRAIN_SAMPLES), (2, TRAIN_SAMPLES)]


# ----------------------------------------------- what the loggers received, across options
# TensorBoard and CSV read back after every call: `check_logged` (test_lightning_logged_totals)
# checks the step values at Lightning's own logging steps, an attempt going on from the run's
# total, the epoch totals against the records, and `greencallbacks report` against the summary.

def read_loggers(tensorboard, csv_logger) -> dict[str, dict]:
    from test_lightning import csv_scalars
    from test_lightning_logged_totals import tensorboard_scalars

    return {"tensorboard": tensorboard_scalars(tensorboard.log_dir),
            "csv": csv_scalars(Path(csv_logger.log_dir) / "metrics.csv")}


def logged_fit(L, tmp_path, callbacks, name, max_epochs=3, **options):
    """A Trainer logging to TensorBoard and CSV at every 2nd step, saving ``last.ckpt`` and the
    best ``val_loss`` under ``tmp_path/ckpt``; returns (trainer, its two loggers)."""
    loggers = (L.loggers.TensorBoardLogger(tmp_path / "tb", name=name), L.loggers.CSVLogger(tmp_path / "csv", name=name))
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, **{"monitor": "val_loss", **options.pop("saving", {})})
    trainer = L.Trainer(max_epochs=max_epochs, logger=list(loggers), callbacks=[*callbacks, saver], default_root_dir=tmp_path,
                        **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=2, **options))
    return trainer, loggers


def tunable(L, TinyModel):
    """Logs its loss at every step (Lightning's own logging steps) and takes its batch size and
    learning rate from attributes a Tuner sets; 40 training samples in batches of 4."""
    from lightning_models import step_logging

    class Tunable(step_logging(TinyModel)):
        def __init__(self, fail_at=None):
            super().__init__(fail_at)
            self.batch_size, self.lr = 4, 0.05

        def train_dataloader(self):
            return data(40, self.batch_size)

        def val_dataloader(self):
            return loaders()[1]

        def test_dataloader(self):
            return data(12, 4)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return Tunable


@pytest.mark.parametrize("tune", ["lr_find", "scale_batch_size", "finder_callback"])
def test_a_tuner_then_a_fit_that_crashes_then_a_resume_and_evaluations_of_its_checkpoints(tmp_path, tune):
    """A Tuner's trial fit (a run of its own: its trial steps in one record of no samples, and
    nothing in the loggers) before a fit crashing inside epoch 1, resumed in a new Trainer from
    ``last.ckpt`` (saved every 4 steps: inside epoch 1), then ``test(ckpt_path="best")`` and
    ``validate(ckpt_path="last")``; or the finder as a callback of the fit itself, whose trials
    are no epoch's. The fit's run: samples as Lightning ran them, the loggers' totals go on from
    attempt 0 into attempt 1, the evaluations' values are their records."""
    from lightning.pytorch.tuner import Tuner

    from test_lightning_logged_totals import check_logged
    from test_lightning_logged_totals import energy_callback as logged_callback

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    Tunable, out = tunable(L, TinyModel), tmp_path / "energy"
    callback, ran = logged_callback(EnergyCallback, out), batches_run(L, evaluations=True)
    finder = {"finder_callback": [L.callbacks.BatchSizeFinder(mode="power", max_trials=2, steps_per_trial=2)]}.get(tune, [])
    saving = dict(saving=dict(every_n_train_steps=4))
    first, loggers = logged_fit(L, tmp_path, [callback, ran, *finder], "a", **saving)
    model = Tunable(fail_at=(1, 3))
    if tune == "lr_find":
        Tuner(first).lr_find(model, num_training=5, early_stop_threshold=None)
    elif tune == "scale_batch_size":
        Tuner(first).scale_batch_size(model, mode="power", max_trials=2, steps_per_trial=2)
    tuning = callback.tracker.run_id
    with pytest.raises(Boom):
        first.fit(model)
    run = callback.tracker.run_id
    assert (run != tuning) is (tune != "finder_callback")
    if run != tuning:
        assert [(r.phase, r.samples) for r in check_run(tuning, [out], power_w=POWER_W)] == [("other", 0)]
    attempts = [read_loggers(*loggers)]
    check(run, [out], ran)
    callback, ran = logged_callback(EnergyCallback, out), batches_run(L, evaluations=True)
    second, loggers = logged_fit(L, tmp_path, [callback, ran], "b", **saving)
    resumed = Tunable()
    resumed.batch_size = model.batch_size  # what the tuner found (4; 8 on 2.2, whose max_trials counts one more)
    second.fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")  # saved inside epoch 1
    assert callback.tracker.run_id == run
    records = check(run, [out], ran, attempt=1)  # the rest of epoch 1 as Lightning ran it (2.2: a batch more)
    assert trained(records, attempt=0) == [(0, 40), (1, 3 * model.batch_size)]
    assert trained(records, attempt=1)[-1] == (2, 40)
    ran.samples.clear()
    second.test(ckpt_path="best", verbose=False)
    second.validate(ckpt_path="last", verbose=False)
    assert callback.tracker.run_id == run
    attempts.append(read_loggers(*loggers))
    records = check_logged(attempts, run, out)
    evaluated = {r.phase: r for r in records[-6:] if r.phase in ("test", "validation")}
    assert {phase: r.samples for phase, r in evaluated.items()} == {"test": 12, "validation": VAL_SAMPLES}
    for where, scalars in attempts[-1].items():
        assert scalars["test_energy_kwh"][-1][1] == pytest.approx(evaluated["test"].energy_kwh, rel=1e-6), where
        assert scalars["val_energy_kwh"][-1][1] == pytest.approx(evaluated["validation"].energy_kwh, rel=1e-6), where


def test_early_stopping_at_a_validation_inside_an_epoch_then_a_resume_from_there(tmp_path):
    """``EarlyStopping(check_on_train_epoch_end=False)`` with validation twice an epoch stops at
    the validation halfway through epoch 1 (``val_loss`` grows from the first): that epoch bills its
    5 batches, complete; a resume from ``last.ckpt`` (saved at that validation) bills what Lightning
    runs before the restored EarlyStopping stops it again (2.2: the rest of that validation; 2.5+:
    epoch 1's other 5 batches and its last validation)."""
    from test_lightning_logged_totals import check_logged
    from test_lightning_logged_totals import energy_callback as logged_callback

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Worsening(tunable(L, TinyModel)):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.global_step))

    out, attempts, run = tmp_path / "energy", [], None
    for attempt in range(2):
        callback, ran = logged_callback(EnergyCallback, out), batches_run(L)
        stopping = L.callbacks.EarlyStopping("val_loss", patience=2, check_on_train_epoch_end=False)
        trainer, loggers = logged_fit(L, tmp_path, [callback, ran, stopping], f"a{attempt}", max_epochs=5,
                                      val_check_interval=0.5)
        trainer.fit(Worsening(), ckpt_path=tmp_path / "ckpt" / "last.ckpt" if attempt else None)
        run = run or callback.tracker.run_id
        assert callback.tracker.run_id == run and trainer.should_stop
        records = check(run, [out], ran, attempt=attempt)
        if any(r.phase == "train" and r.attempt == attempt for r in records):  # 2.2 resumes only a validation
            attempts.append(read_loggers(*loggers))
            check_logged(attempts, run, out)
    assert [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train" and r.attempt == 0] == [
        (0, 40, False), (1, 20, False)]


def test_resumes_from_older_checkpoints_inside_an_epoch_branch_the_run_and_keep_what_was_spent(tmp_path):
    """A fit of 3 epochs (checkpoints every 4 steps) crashes in epoch 2; a resume from the one at
    step 8 (inside epoch 0, not the latest: the run branches), then another from step 4. Each
    attempt bills the batches Lightning ran from its checkpoint on (of epoch 0: 2, then 6), the
    energy every earlier attempt spent after that checkpoint stays in the run, and the loggers'
    totals go on from the run's, never back to the checkpoint's."""
    from test_lightning_logged_totals import check_logged
    from test_lightning_logged_totals import energy_callback as logged_callback

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    Tunable, out = tunable(L, TinyModel), tmp_path / "energy"
    saving = dict(saving=dict(every_n_train_steps=4, save_top_k=-1, filename="{epoch}-{step}", monitor=None))
    attempts, spent, run = [], [], None
    for attempt, (fail_at, resume_from) in enumerate([((2, 5), None), (None, "epoch=0-step=8.ckpt"),
                                                      (None, "epoch=0-step=4.ckpt")]):
        callback, ran = logged_callback(EnergyCallback, out), batches_run(L)
        trainer, loggers = logged_fit(L, tmp_path, [callback, ran], f"a{attempt}", **saving)
        try:
            trainer.fit(Tunable(fail_at), ckpt_path=resume_from and tmp_path / "ckpt" / resume_from)
        except Boom:
            assert attempt == 0
        run = run or callback.tracker.run_id
        assert callback.tracker.run_id == run
        attempts.append(read_loggers(*loggers))
        records = check(run, [out], ran, attempt=attempt)
        spent.append(sum(r.energy_kwh for r in records))
        check_logged(attempts, run, out)
    # Epoch 0's batches left, as Lightning ran them (`check`): 2 and 6 (2.2-2.4: 3 and 7, one ahead).
    assert [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "train" and r.epoch > 0] == [
        (0, 1, 40), (0, 2, 20), (1, 1, 40), (1, 2, 40), (2, 1, 40), (2, 2, 40)]
    assert spent == sorted(spent)
