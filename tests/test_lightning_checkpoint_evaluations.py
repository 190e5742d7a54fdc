"""``validate`` / ``test`` / ``predict`` of a checkpoint (``ckpt_path=``) in any Lightning release:
the evaluation goes on in the checkpoint's run, labelled with the epochs that checkpoint had run.

Lightning 2.4 and earlier restore no callback's state in an evaluation: the callback reads the
checkpoint where Lightning holds it (see ``EnergyCallbackBase._watch_restore``), so these hold at
the Lightning floor too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from flow_invariants import check_run, meter_threads  # noqa: E402
from lightning_models import VAL_SAMPLES, flavour, loaders, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0
EVALUATIONS = ("validation", "test", "predict")


def energy_callback(EnergyCallback, **settings):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, **settings)


def fitted_elsewhere(L, TinyModel, tmp_path, *callbacks):
    """A 2-epoch fit of 4-batch epochs by ``callbacks`` (as in another process), saving a
    checkpoint inside epoch 1 (``inside/epoch=1-step=6.ckpt``) and ``ckpt/last.ckpt`` at its end."""
    savers = [L.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", save_top_k=-1, filename="{epoch}-{step}",
                                          every_n_train_steps=6),
              L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
    trainer = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path, name="other"), callbacks=[*callbacks, *savers],
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(TinyModel(), *loaders())
    return Path(trainer.log_dir)


def fresh_trainer(L, tmp_path, callbacks, name="fresh"):
    return L.Trainer(logger=L.loggers.CSVLogger(tmp_path, name=name), callbacks=callbacks, **trainer_kwargs())


def test_an_evaluation_of_a_checkpoint_is_labelled_with_the_epochs_it_had_run(tmp_path):
    """A Trainer that never fitted validates the checkpoint saved inside epoch 1, tests the one
    saved at the end of the 2-epoch fit and predicts from the first again: epochs 1, 2 and 1, as
    the fit's own Trainer reads them, in the checkpoint's run. They were all labelled 0, the new
    Trainer's epoch (and, in Lightning 2.4 and earlier, billed to the callback's own run)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    elsewhere = energy_callback(EnergyCallback)
    other_dir = fitted_elsewhere(L, TinyModel, tmp_path, elsewhere)
    callback = energy_callback(EnergyCallback)
    trainer, val = fresh_trainer(L, tmp_path, [callback]), loaders()[1]
    inside, last = tmp_path / "inside" / "epoch=1-step=6.ckpt", tmp_path / "ckpt" / "last.ckpt"
    trainer.validate(TinyModel(), val, ckpt_path=inside, verbose=False)
    trainer.test(TinyModel(), val, ckpt_path=last, verbose=False)
    trainer.predict(TinyModel(), val, ckpt_path=inside)
    assert callback.tracker.run_id == elsewhere.tracker.run_id and not meter_threads()
    records = check_run(elsewhere.tracker.run_id, [other_dir, Path(trainer.log_dir)], power_w=POWER_W)
    assert [(r.phase, r.epoch, r.attempt, r.samples) for r in records if r.phase in EVALUATIONS] == [
        ("validation", 0, 0, VAL_SAMPLES), ("validation", 1, 0, VAL_SAMPLES),  # the fit's own
        ("validation", 1, 1, VAL_SAMPLES), ("test", 2, 1, VAL_SAMPLES), ("predict", 1, 1, VAL_SAMPLES)]


def test_a_trainer_that_never_fitted_evaluates_a_checkpoint_in_its_run_not_the_callbacks_latest(tmp_path):
    """The callback fitted run "mine" in one Trainer; a second Trainer, which never fitted,
    validates another run's checkpoint: that run goes on (attempt 1), and "mine" gets no record
    of it. In Lightning 2.4 and earlier the validation was billed to "mine", the callback's latest
    run, at epoch 0. A test of the Trainer that fitted goes on in "mine" after it."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    elsewhere = energy_callback(EnergyCallback)
    other_dir = fitted_elsewhere(L, TinyModel, tmp_path, elsewhere)
    callback = energy_callback(EnergyCallback)
    fitting = L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name="mine"), callbacks=[callback],
                        **trainer_kwargs())
    fitting.fit(TinyModel(), *loaders())
    mine = callback.tracker.run_id
    fresh = fresh_trainer(L, tmp_path, [callback])
    fresh.validate(TinyModel(), loaders()[1], ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)
    assert callback.tracker.run_id == elsewhere.tracker.run_id
    fitting.test(TinyModel(), loaders()[1], verbose=False)
    assert callback.tracker.run_id == mine and not meter_threads()
    dirs = [other_dir, Path(fitting.log_dir), Path(fresh.log_dir)]
    theirs = [(r.phase, r.epoch, r.attempt) for r in check_run(elsewhere.tracker.run_id, dirs, power_w=POWER_W)
              if r.phase in EVALUATIONS]
    ours = [(r.phase, r.epoch) for r in check_run(mine, dirs, power_w=POWER_W) if r.phase in EVALUATIONS]
    assert theirs == [("validation", 0, 0), ("validation", 1, 0), ("validation", 2, 1)]
    assert ours == [("validation", 0), ("test", 1)]


def test_two_callbacks_of_a_trainer_that_never_fitted_each_go_on_in_their_run(tmp_path):
    """Two prefixed EnergyCallbacks (two grids) measured a fit; a new Trainer with two new such
    callbacks tests its checkpoint: each goes on in the run its counterpart measured."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    low, high = energy_callback(EnergyCallback, prefix="low/"), energy_callback(EnergyCallback, prefix="high/")
    fitted_elsewhere(L, TinyModel, tmp_path, low, high)
    again = [energy_callback(EnergyCallback, prefix="low/"), energy_callback(EnergyCallback, prefix="high/")]
    trainer = fresh_trainer(L, tmp_path, again)
    trainer.test(TinyModel(), loaders()[1], ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)
    assert [cb.tracker.run_id for cb in again] == [low.tracker.run_id, high.tracker.run_id] and not meter_threads()
    for cb in again:
        records = check_run(cb.tracker.run_id, [cb.tracker.output_dir], power_w=POWER_W)
        assert [(r.phase, r.epoch, r.attempt) for r in records if r.phase == "test"] == [("test", 2, 1)]


def test_without_the_restore_seam_an_evaluation_stays_in_the_trainers_run_and_nothing_breaks(tmp_path, monkeypatch):
    """Where a release drops the private seam that Lightning 2.4 and earlier need (or at 2.5+,
    which needs none), an evaluation of another run's checkpoint in a Trainer that fitted goes on
    in that Trainer's run, as before the seam was used: no error, no warning, records whole."""
    import warnings

    from greencallbacks.lightning import _shared

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    elsewhere = energy_callback(EnergyCallback)
    other_dir = fitted_elsewhere(L, TinyModel, tmp_path, elsewhere)
    monkeypatch.setattr(_shared, "_restore_seam", lambda trainer: None)
    callback = energy_callback(EnergyCallback)
    fitting = L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name="mine"), callbacks=[callback],
                        **trainer_kwargs())
    fitting.fit(TinyModel(), *loaders())
    mine = callback.tracker.run_id
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="greencallbacks")
        fitting.validate(TinyModel(), loaders()[1], ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)
    assert not meter_threads()
    dirs = [other_dir, Path(fitting.log_dir)]
    check_run(mine, dirs, power_w=POWER_W)
    check_run(elsewhere.tracker.run_id, dirs, power_w=POWER_W)
    # 2.5+ hands the callback the checkpoint's state itself: that run goes on there.
    expected = elsewhere.tracker.run_id if _shared._release_of(fitting) >= (2, 5) else mine
    assert callback.tracker.run_id == expected
