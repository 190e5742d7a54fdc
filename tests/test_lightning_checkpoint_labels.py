"""The epoch label of an evaluation of a checkpoint saved after an epoch's last batch, before its end.

``ModelCheckpoint`` saves there, not at the training epoch's end, when validation runs more than
once an epoch (``val_check_interval < 1``) or not every epoch (``check_val_every_n_epoch > 1``),
and at the batch's end with ``every_n_train_steps``: then the epoch whose batches have all run is
not counted yet in Lightning's epoch progress. The fit's final ``last.ckpt`` evaluated in a later
session must be labelled as with the default settings, and as the fitting Trainer's own test labels it.
"""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from flow_invariants import check_run, meter_threads  # noqa: E402
from lightning_models import FLAVOURS, VAL_SAMPLES, flavour, loaders, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0


def energy_callback(EnergyCallback):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)


@pytest.mark.parametrize("package", list(FLAVOURS))
@pytest.mark.parametrize("options, saving", [
    ({}, {}), (dict(val_check_interval=0.5), {}), (dict(check_val_every_n_epoch=2), {}), ({}, dict(every_n_train_steps=4)),
], ids=["at-the-epoch-end", "validation-twice-an-epoch", "validation-every-other-epoch", "every-4-steps"])
def test_the_last_checkpoint_of_a_fit_is_evaluated_at_the_epochs_it_ran_wherever_it_was_saved(tmp_path, options, saving,
                                                                                              package):
    """A 2-epoch fit saves ``last.ckpt`` after its last batch; a later session validates, tests and
    predicts it: epoch 2, as the fitting Trainer's test after the fit. Saved at the validation
    after the last batch, or at that batch's end (4-batch epochs), they were labelled 1."""
    L, EnergyCallback, TinyModel = flavour(package)
    fitting = energy_callback(EnergyCallback)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, **saving)
    trainer = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path, name="fit"), callbacks=[fitting, saver],
                        **trainer_kwargs(enable_checkpointing=True, **options))
    model = TinyModel()
    trainer.fit(model, *loaders())
    trainer.test(model, loaders()[1], verbose=False)
    later = energy_callback(EnergyCallback)  # a later session: a new callback and Trainer
    evaluator = L.Trainer(logger=L.loggers.CSVLogger(tmp_path, name="later"), callbacks=[later], **trainer_kwargs())
    last = tmp_path / "ckpt" / "last.ckpt"
    evaluator.validate(TinyModel(), loaders()[1], ckpt_path=last, verbose=False)
    evaluator.test(TinyModel(), loaders()[1], ckpt_path=last, verbose=False)
    evaluator.predict(TinyModel(), loaders()[1], ckpt_path=last)
    assert later.tracker.run_id == fitting.tracker.run_id and not meter_threads()
    records = check_run(fitting.tracker.run_id, [trainer.log_dir, evaluator.log_dir], power_w=POWER_W)
    assert [(r.phase, r.epoch, r.attempt, r.samples) for r in records if r.phase in ("test", "predict")
            or (r.phase == "validation" and r.attempt == 1)] == [
        ("test", 2, 0, VAL_SAMPLES),  # the fitting Trainer's own
        ("validation", 2, 1, VAL_SAMPLES), ("test", 2, 1, VAL_SAMPLES), ("predict", 2, 1, VAL_SAMPLES)]


@pytest.mark.parametrize("package", list(FLAVOURS))
def test_a_checkpoint_inside_an_epochs_last_batch_is_still_inside_it(tmp_path, package):
    """A checkpoint saved as the last batch of epoch 1 starts (before its step) is inside epoch 1:
    labelled 1. Only an epoch whose every batch ran to its end counts."""
    L, EnergyCallback, TinyModel = flavour(package)

    class SaveAtLastBatchStart(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 3:
                trainer.save_checkpoint(tmp_path / "inside.ckpt")

    fitting = energy_callback(EnergyCallback)
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[fitting, SaveAtLastBatchStart()],
                        default_root_dir=tmp_path, **trainer_kwargs(val_check_interval=0.5))
    trainer.fit(TinyModel(), *loaders())
    later = energy_callback(EnergyCallback)
    evaluator = L.Trainer(logger=False, callbacks=[later], default_root_dir=tmp_path, **trainer_kwargs())
    evaluator.test(TinyModel(), loaders()[1], ckpt_path=tmp_path / "inside.ckpt", verbose=False)
    records = check_run(fitting.tracker.run_id, [tmp_path], power_w=POWER_W)
    assert [(r.phase, r.epoch, r.attempt) for r in records if r.phase == "test"] == [("test", 1, 1)]
