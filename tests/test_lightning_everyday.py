"""Everyday Lightning paths the flow tests do not draw, with the real Trainer and the ledger's invariants.

A scripted constant-power sensor makes every record's energy follow its duration; a second
callback counts the samples Lightning really ran.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from lightning_models import VAL_SAMPLES, batches_run, flavour, last_logged_total, loaders, state_probe, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0


def energy_callback(EnergyCallback):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)


def fit_two_runs(L, EnergyCallback, TinyModel, tmp_path, probe):
    """Run "other" fitted by a callback of its own (as if in another process), then run "mine" by a
    second callback: (other's Trainer, its run, the second callback, its Trainer, its run)."""
    fitted = []
    for name in ("other", "mine"):
        callback = energy_callback(EnergyCallback)
        trainer = saving_trainer(L, tmp_path, callback, name, probe)
        trainer.fit(TinyModel(), *loaders())
        fitted += [trainer, callback.tracker.run_id]
    return fitted[0], fitted[1], callback, fitted[2], fitted[3]


def saving_trainer(L, tmp_path, callback, name, probe, max_epochs=1):
    """A Trainer that saves its last checkpoint under ``tmp_path/ckpt-<name>`` and logs to CSV."""
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / f"ckpt-{name}", save_last=True)
    return L.Trainer(max_epochs=max_epochs, logger=L.loggers.CSVLogger(tmp_path, name=name),
                     callbacks=[callback, saver, probe], **trainer_kwargs(enable_checkpointing=True))


def test_validation_every_n_batches_across_epochs_and_a_resume_from_one_bill_each_batch_once(tmp_path):
    """val_check_interval=3 batches with check_val_every_n_epoch=None over 4-batch epochs:
    validation inside epochs 0 and 1, twice in epoch 2; the resume from the validation inside
    epoch 1 (a checkpoint mid-epoch) runs that epoch's last 2 batches."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt_dir = tmp_path / "ckpt"

    def fit(max_epochs, ckpt_path=None):
        callback, ran = energy_callback(EnergyCallback), batches_run(L)
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, monitor="val_loss", filename="{epoch}-{step}")
        logger = L.loggers.CSVLogger(tmp_path, name="logs")
        trainer = L.Trainer(max_epochs=max_epochs, logger=logger, callbacks=[callback, ran, saver],
                            **trainer_kwargs(enable_checkpointing=True, val_check_interval=3, check_val_every_n_epoch=None))
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
        return callback, ran, Path(logger.log_dir)

    first, ran_first, dir_first = fit(3)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "epoch=2-step=12.ckpt", "epoch=2-step=9.ckpt"]
    callback, ran, log_dir = fit(4, ckpt_dir / "epoch=1-step=6.ckpt")
    assert callback.tracker.run_id == first.tracker.run_id and not meter_threads()
    records = check_run(callback.tracker.run_id, [dir_first, log_dir], power_w=POWER_W)
    for attempt, counted in enumerate((ran_first, ran)):
        billed = collections.Counter()
        for r in records:
            if r.attempt == attempt and r.phase != "other":
                billed[r.phase, r.epoch] += r.samples
        assert billed == counted.samples, attempt
    assert [(r.epoch, r.samples) for r in records if r.attempt == 1 and r.phase == "train"] == [(1, 16), (2, 32), (3, 32)]
    assert [r.epoch for r in records if r.attempt == 0 and r.phase == "validation"] == [0, 1, 2, 2]
    logged_total_matches(records, last_logged_total(log_dir), rel=1e-9)


def test_a_fit_continued_in_another_trainer_leaves_one_writer_for_the_run(tmp_path):
    """Regression: a notebook fits with a Trainer, continues the run in a second Trainer
    (``ckpt_path="last"``, the same callback object), then tests with the first Trainer. That test
    went to the session of the first Trainer's fit, which still took itself for the run's attempt
    0: it wrote seq numbers the second attempt had written already, and a summary without the
    second attempt. The first Trainer's run now goes on in its newest attempt."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = energy_callback(EnergyCallback)

    def trainer(max_epochs):
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        return L.Trainer(max_epochs=max_epochs, logger=L.loggers.CSVLogger(tmp_path, name="logs"),
                         callbacks=[callback, saver], **trainer_kwargs(enable_checkpointing=True))

    model, (train, val) = TinyModel(), loaders()
    first, second = trainer(2), trainer(3)
    first.fit(model, train, val)
    run = callback.tracker.run_id
    second.fit(model, train, val, ckpt_path="last")
    first.test(model, val, verbose=False)
    assert callback.tracker.run_id == run and not meter_threads()
    records = check_run(run, [Path(first.log_dir), Path(second.log_dir)], power_w=POWER_W)  # seq billed twice before
    assert [(r.attempt, r.samples) for r in records if r.phase == "test"] == [(1, VAL_SAMPLES)]


def test_evaluating_another_runs_checkpoint_goes_to_that_run_and_leaves_the_trainers_own(tmp_path):
    """Regression: with one callback, Trainer A fits run A, Trainer B run B; A validates B's
    checkpoint. That turned A's fit session into an attempt of run B, beside B's own session:
    B's later test wrote seq numbers twice, and A's test of its own checkpoint went to run B.
    Now the validation continues B's session, and A's run stays A's (in Lightning 2.4 and earlier,
    which restore no callback state in an evaluation, from the checkpoint the callback reads)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback, probe = energy_callback(EnergyCallback), state_probe(L)

    def trainer(name):
        return saving_trainer(L, tmp_path, callback, name, probe, max_epochs=2)

    train, val = loaders()
    runs, dirs = {}, []
    for name in ("a", "b"):
        trainer_ = trainer(name)
        trainer_.fit(TinyModel(), train, val)
        runs[name] = (trainer_, callback.tracker.run_id)
        dirs.append(Path(trainer_.log_dir))
    (a, run_a), (b, run_b) = runs["a"], runs["b"]
    a.validate(TinyModel(), val, ckpt_path=tmp_path / "ckpt-b" / "last.ckpt", verbose=False)
    validated = run_b
    assert callback.tracker.run_id == validated
    a.test(TinyModel(), val, ckpt_path=tmp_path / "ckpt-a" / "last.ckpt", verbose=False)
    assert callback.tracker.run_id == run_a
    b.test(TinyModel(), val, verbose=False)
    assert callback.tracker.run_id == run_b and not meter_threads()
    records_a = check_run(run_a, dirs, power_w=POWER_W)
    records_b = check_run(run_b, dirs, power_w=POWER_W)  # seq billed twice before
    evaluated = {run: [r.phase for r in records if r.phase in ("validation", "test") and r.epoch == 2]
                 for run, records in ((run_a, records_a), (run_b, records_b))}
    assert evaluated == {validated: ["validation", "test"], ({run_a, run_b} - {validated}).pop(): ["test"]}
    assert {r.attempt for r in records_a} == {r.attempt for r in records_b} == {0}


def test_evaluating_a_checkpoint_of_a_run_this_callback_never_measured_leaves_the_trainers_own(tmp_path):
    """The checkpoint of a run measured by another process (here another callback object): its
    validation continues that run, as in a new process, and no longer turns the Trainer's fit
    session into that run, whose later test of its own checkpoint went there too."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    probe = state_probe(L)
    other, run_other, callback, trainer, run = fit_two_runs(L, EnergyCallback, TinyModel, tmp_path, probe)
    trainer.validate(TinyModel(), loaders()[1], ckpt_path=tmp_path / "ckpt-other" / "last.ckpt", verbose=False)
    assert callback.tracker.run_id == run_other
    trainer.test(TinyModel(), loaders()[1], ckpt_path=tmp_path / "ckpt-mine" / "last.ckpt", verbose=False)
    assert callback.tracker.run_id == run and not meter_threads()
    dirs = [Path(trainer.log_dir), Path(other.log_dir)]
    mine = [r.phase for r in check_run(run, dirs, power_w=POWER_W) if r.phase in ("validation", "test") and r.epoch == 1]
    theirs = [(r.phase, r.attempt) for r in check_run(run_other, dirs, power_w=POWER_W) if r.epoch == 1 and r.phase != "other"]
    assert (mine, theirs) == (["test"], [("validation", 1)])


def test_evaluating_a_foreign_checkpoint_twice_goes_on_in_one_attempt(tmp_path):
    """Regression: the session made for the checkpoint of a run this callback never measured was
    not remembered, so validating that checkpoint again (and testing it) began another attempt of
    that run each time. Now every evaluation of it goes on in the one session that continues it;
    the Trainer's own run stays its own in between."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    probe = state_probe(L)
    other, run_other, callback, trainer, run = fit_two_runs(L, EnergyCallback, TinyModel, tmp_path, probe)
    foreign = tmp_path / "ckpt-other" / "last.ckpt"
    trainer.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    trainer.test(TinyModel(), loaders()[1], verbose=False)  # the Trainer's own run, in between
    assert callback.tracker.run_id == run
    trainer.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    trainer.test(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    assert callback.tracker.run_id == run_other and not meter_threads()
    dirs = [Path(trainer.log_dir), Path(other.log_dir)]
    mine = [r.phase for r in check_run(run, dirs, power_w=POWER_W) if r.phase in ("validation", "test") and r.epoch == 1]
    theirs = [(r.phase, r.attempt) for r in check_run(run_other, dirs, power_w=POWER_W) if r.epoch == 1 and r.phase != "other"]
    assert (mine, theirs) == (["test"], [("validation", 1), ("validation", 1), ("test", 1)])


def test_a_foreign_run_resumed_by_a_fit_then_left_is_evaluated_in_one_new_attempt(tmp_path):
    """A foreign checkpoint validated (attempt 1 of its run), then resumed by a fit in a second
    Trainer (attempt 2), which then fits a run of its own: the validations after that go on in
    one new attempt (3), never in attempt 1, whose seq numbers attempt 2 wrote after it, and not
    in an attempt of their own each (3 and 4 before)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    probe = state_probe(L)

    def trainer(callback, name, max_epochs=1):
        return saving_trainer(L, tmp_path, callback, name, probe, max_epochs)

    elsewhere = energy_callback(EnergyCallback)
    other = trainer(elsewhere, "other")
    other.fit(TinyModel(), *loaders())
    run_other, dirs = elsewhere.tracker.run_id, [Path(other.log_dir)]
    callback = energy_callback(EnergyCallback)
    mine, foreign = trainer(callback, "mine"), tmp_path / "ckpt-other" / "last.ckpt"
    mine.fit(TinyModel(), *loaders())
    mine.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    second = trainer(callback, "resumed", max_epochs=2)
    second.fit(TinyModel(), *loaders(), ckpt_path=foreign)
    dirs.append(Path(second.log_dir))
    second.fit(TinyModel(), *loaders())  # a new run in that Trainer
    for _ in range(2):
        mine.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    assert not meter_threads()
    dirs += [Path(mine.log_dir), Path(second.log_dir)]
    records = check_run(run_other, dirs, power_w=POWER_W)  # seq billed twice with attempt 1 going on
    validated = [(r.epoch, r.attempt) for r in records if r.phase == "validation"]
    assert validated == [(0, 0), (1, 1), (1, 2), (1, 3), (1, 3)]


def test_a_foreign_checkpoint_evaluated_first_goes_on_in_that_attempt_after_another_trainers_fit(tmp_path):
    """The first call of a callback validates a foreign checkpoint (its session becomes attempt 1
    of that run); a second Trainer then fits a run of its own and validates the checkpoint too,
    as does the first Trainer again: both go on in attempt 1, as no new attempt began."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    probe = state_probe(L)

    def trainer(callback, name):
        return saving_trainer(L, tmp_path, callback, name, probe)

    elsewhere = energy_callback(EnergyCallback)
    other = trainer(elsewhere, "other")
    other.fit(TinyModel(), *loaders())
    callback, foreign = energy_callback(EnergyCallback), tmp_path / "ckpt-other" / "last.ckpt"
    first, second = trainer(callback, "first"), trainer(callback, "second")
    first.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    second.fit(TinyModel(), *loaders())
    run = callback.tracker.run_id
    second.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    first.validate(TinyModel(), loaders()[1], ckpt_path=foreign, verbose=False)
    assert not meter_threads()
    dirs = [Path(t.log_dir) for t in (other, first, second)]
    # Each validation of the checkpoint is labelled with its epochs run (1), in either Trainer.
    theirs = [(r.epoch, r.attempt) for r in check_run(elsewhere.tracker.run_id, dirs, power_w=POWER_W) if r.phase == "validation"]
    mine = [(r.epoch, r.attempt) for r in check_run(run, dirs, power_w=POWER_W) if r.phase == "validation"]
    assert (theirs, mine) == ([(0, 0), (1, 1), (1, 1), (1, 1)], [(0, 0)])
