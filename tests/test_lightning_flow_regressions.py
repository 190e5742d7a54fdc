"""Regressions the randomized Lightning flows (``test_flows_lightning.py``) found, each made small and deterministic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from greencallbacks import report
from flow_invariants import check_run, meter_threads
from lightning_models import Boom, flavour, loaders, trainer_kwargs
from tests.fakes.scripted import ScriptedSensor

POWER_W = 50.0


def test_a_resume_of_a_finished_run_that_fails_before_training_leaves_the_run_cut_short(tmp_path):
    """GC_FLOW_SEEDS=40, seeds 20 and 25: a run trains all its epochs; a resume from its checkpoint
    saved at the validation end of epoch 1 (before that epoch's end hooks) fails in the epoch-end
    checkpoint write, before any batch: the run's last attempt failed, so the report must not take
    it for a finished training to pool with repeats (as it does for a failure in the trailing gap)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)

    class FailingWrite(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            raise Boom("in the checkpoint write")

    def fit(extra, ckpt_path=None):
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}",
                                            save_on_train_epoch_end=ckpt_path is not None)
        logger = L.loggers.CSVLogger(tmp_path / "logs", name="flow")
        trainer = L.Trainer(max_epochs=3, logger=logger, callbacks=[callback, saver, *extra],
                            **trainer_kwargs(enable_checkpointing=True, check_val_every_n_epoch=2))
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
        return Path(logger.log_dir)

    first = fit([])
    records = check_run(callback.tracker.run_id, [first], power_w=POWER_W)
    assert not report.cut_short(report.configuration(records))
    with pytest.raises(Boom):
        # epoch=1.ckpt was saved at the validation end of epoch 1: the resume runs that epoch's end.
        fit([FailingWrite()], ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [first], power_w=POWER_W)
    last = [r for r in records if r.attempt == 1]
    # The ledger is right: the attempt ends cut short and trains nothing (2.4 and older validate
    # epoch 1 again first, with no batch: no training record, test_lightning_paths_more.py).
    assert last[-1].partial, [(r.phase, r.partial) for r in last]
    assert not any(r.phase == "train" for r in last), [(r.phase, r.partial) for r in last]
    assert report.cut_short(report.configuration(records))


def test_a_resume_that_fails_after_a_validation_inside_an_epoch_leaves_the_run_cut_short(tmp_path):
    """GC_FLOW_SEEDS=80, seed 40: a run trains all its epochs; a resume from epoch 0 validates in the
    middle of epoch 1 and fails in the checkpoint write after that validation. The attempt's last
    record written is the partial epoch, but the validation inside it took the higher seq (a phase
    takes its seq as it begins): the report read the attempt as ended well, the run as finished."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)

    class FailingWrite(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            if trainer.current_epoch == 1:
                raise Boom("in the checkpoint write after the validation inside epoch 1")

    logger = L.loggers.CSVLogger(tmp_path / "logs", name="flow")
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=True)
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback, saver],
                        **trainer_kwargs(enable_checkpointing=True, check_val_every_n_epoch=3))
    trainer.fit(TinyModel(), *loaders())
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "again", save_top_k=-1, filename="{epoch}",
                                        save_on_train_epoch_end=False)
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback, saver, FailingWrite()],
                        **trainer_kwargs(enable_checkpointing=True, val_check_interval=0.5))
    with pytest.raises(Boom):
        trainer.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [Path(logger.log_dir)], power_w=POWER_W)
    resumed = [(r.phase, r.epoch, r.partial) for r in records if r.attempt == 1]
    assert resumed == [("other", None, False), ("validation", 1, False), ("train", 1, True)], resumed  # written in this order
    assert max((r for r in records if r.attempt == 1), key=lambda r: r.seq).phase == "validation"  # begun last
    assert report.cut_short(report.configuration(records))
