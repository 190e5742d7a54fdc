"""Lightning flows where the user's own code fails outside a step (another callback's epoch end,
``configure_optimizers`` of a resumed fit), and a data module's per-stage hooks with a full sanity
check: the invariants of test_lightning_trainer_options.py after every call."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from lightning_models import TRAIN_SAMPLES, VAL_SAMPLES, Boom, batches_run, flavour, loaders  # noqa: E402
from test_lightning_trainer_options import check, data, energy_callback, trained, trainer_for  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("raiser_first", [True, False], ids=["before-ours", "after-ours"])
def test_an_error_in_another_callbacks_epoch_end_then_a_resume(tmp_path, raiser_first):
    """Another callback raising in ``on_train_epoch_end`` of epoch 1: before ours, that epoch is
    written up partial with all its samples; after ours, it is complete and the failure is billed
    to ``other``. ModelCheckpoint (saving at epoch ends, after both) kept epoch 0: the resume
    trains epoch 1 again in attempt 1, and every joule of both attempts is in the run."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class FailsAtEpochEnd(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Boom("in another callback's epoch end")

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    raiser = FailsAtEpochEnd()
    first = trainer_for(L, tmp_path, [raiser, callback, ran] if raiser_first else [callback, ran, raiser], max_epochs=3)
    with pytest.raises(Boom):
        first.fit(TinyModel(), *loaders())
    run = callback.tracker.run_id
    records = check(run, [first.log_dir], ran)
    assert [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == [
        (0, TRAIN_SAMPLES, False), (1, TRAIN_SAMPLES, raiser_first)]
    assert any(r.partial for r in records if r.phase == ("train" if raiser_first else "other"))
    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    second = trainer_for(L, tmp_path, [callback, ran], name="again", max_epochs=3)
    second.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt-logs" / "last.ckpt")
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, second.log_dir], ran, attempt=1, logged_in=second.log_dir)
    assert trained(records, attempt=1) == [(1, TRAIN_SAMPLES), (2, TRAIN_SAMPLES)]


def test_configure_optimizers_failing_in_a_resumed_fit_then_a_fixed_resume(tmp_path):
    """Lightning restores the callbacks' states before it calls ``configure_optimizers``: a resume
    that fails there is an attempt of the run with only a partial ``other`` record, and the
    fixed resume after it the next attempt, training the epochs left."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class BadOptimizer(TinyModel):
        def configure_optimizers(self):
            raise Boom("a typo in configure_optimizers")

    callback, ran = energy_callback(EnergyCallback), batches_run(L)
    first = trainer_for(L, tmp_path, [callback, ran], max_epochs=2)
    first.fit(TinyModel(), *loaders())
    run, last = callback.tracker.run_id, tmp_path / "ckpt-logs" / "last.ckpt"
    callback, ran = energy_callback(EnergyCallback), batches_run(L)  # one callback for both resumes
    failed = trainer_for(L, tmp_path, [callback, ran], name="failed", max_epochs=4)
    with pytest.raises(Boom):
        failed.fit(BadOptimizer(), *loaders(), ckpt_path=last)
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, failed.log_dir], ran, attempt=1)
    assert [(r.phase, r.partial) for r in records if r.attempt == 1] == [("other", True)]
    fixed = trainer_for(L, tmp_path, [callback, ran], name="fixed", max_epochs=4)
    fixed.fit(TinyModel(), *loaders(), ckpt_path=last)
    assert callback.tracker.run_id == run
    records = check(run, [first.log_dir, failed.log_dir, fixed.log_dir], ran, attempt=2, logged_in=fixed.log_dir)
    assert trained(records, attempt=2) == [(2, TRAIN_SAMPLES), (3, TRAIN_SAMPLES)]


def test_a_data_module_per_stage_with_a_full_sanity_check_and_validation_every_other_epoch(tmp_path):
    """A LightningDataModule building its sets in ``setup(stage)`` and dropping them in
    ``teardown``; ``num_sanity_val_steps=-1`` runs all of validation before training (billed to
    ``other``), ``check_val_every_n_epoch=2`` validates after epochs 1 and 3; then validate, test
    and predict of other sizes continue the run, each billing the batches it ran."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    stages = []

    class PerStage(L.LightningDataModule):
        def setup(self, stage):
            stages.append(("setup", str(getattr(stage, "value", stage))))
            self.sets = dict(zip(("train", "val"), loaders())) | {"test": data(12, batch=5), "predict": data(7, batch=3)}

        def teardown(self, stage):
            stages.append(("teardown", str(getattr(stage, "value", stage))))
            del self.sets

        def train_dataloader(self):
            return self.sets["train"]

        def val_dataloader(self):
            return self.sets["val"]

        def test_dataloader(self):
            return self.sets["test"]

        def predict_dataloader(self):
            return self.sets["predict"]

    callback, ran = energy_callback(EnergyCallback), batches_run(L, evaluations=True)
    trainer = trainer_for(L, tmp_path, [callback, ran], max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=-1)
    model, module = TinyModel(), PerStage()
    trainer.fit(model, datamodule=module)
    trainer.validate(model, datamodule=module, verbose=False)
    trainer.test(model, datamodule=module, verbose=False)
    trainer.predict(model, datamodule=module)
    assert [call for call, _ in stages] == ["setup", "teardown"] * 4
    records = check(callback.tracker.run_id, [trainer.log_dir], ran, logged_in=trainer.log_dir)
    assert trained(records) == [(epoch, TRAIN_SAMPLES) for epoch in range(4)]
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase not in ("train", "other")] == [
        ("validation", 1, VAL_SAMPLES), ("validation", 3, VAL_SAMPLES), ("validation", 4, VAL_SAMPLES),
        ("test", 4, 12), ("predict", 4, 7)]
