"""A Lightning fit that fails in an epoch's validation, after a checkpoint at that epoch's last
training step, and is resumed from it: the resume goes on with the next epoch, and the run, which
then finishes, is no training cut short, and a repeat of a run of the same settings that never failed."""

from __future__ import annotations

import json
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from lightning_models import Boom, flavour, loaders, trainer_kwargs  # noqa: E402
from lightning.pytorch import __version__ as L_VERSION  # noqa: E402
from greencallbacks.cli import main  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


def _fit(tmp_path, model, max_epochs=3, ckpt_path=None, ckpt_dir="ckpt", callbacks=(), every_step=True):
    L, EnergyCallback, _ = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                              output_dir=str(tmp_path / "out"))
    # A checkpoint at every training step (as long runs save every N steps): the last is taken at
    # the epoch's last batch, before its validation. Else Lightning's default: at each epoch's end,
    # after its validation.
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / ckpt_dir, save_last=True,
                                        every_n_train_steps=1 if every_step else None)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, callbacks=[callback, saver, *callbacks],
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)


def _failing_in_validation(epoch: int):
    _, _, TinyModel = flavour("lightning.pytorch")

    class FailingInValidation(TinyModel):
        def validation_step(self, batch, batch_idx):
            if self.current_epoch == epoch and batch_idx == 1 and not self.trainer.sanity_checking:
                raise Boom(f"boom in the validation of epoch {epoch}")
            return super().validation_step(batch, batch_idx)

    return FailingInValidation()


def _resumed(tmp_path, max_epochs, epoch: int) -> int:
    """Resumes from the last checkpoint (at ``epoch``'s last training step, before its validation
    failed); returns the batches of ``epoch`` the resume trained: none on Lightning 2.5+, which go on
    with the next epoch; 1 on Lightning 2.2 to 2.4, which train the checkpoint's last batch again (with
    an optimizer step more) before it ends the epoch."""
    L, _, TinyModel = flavour("lightning.pytorch")
    again = []

    class Again(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == epoch:
                again.append(batch_idx)

    _fit(tmp_path, TinyModel(), max_epochs=max_epochs, ckpt_path=tmp_path / "ckpt" / "last.ckpt", callbacks=[Again()])
    return len(again)


def _report(tmp_path, capsys) -> dict:
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    return group


def test_a_run_resumed_past_an_epoch_that_failed_in_its_validation_is_not_called_cut_short(tmp_path, capsys):
    """Regression: epoch 1's training record is partial (the failure ended it), though it trained all
    32 samples, and the resume trained no batch of it: the report said "cut short by an exception
    or interrupt, 2 completed" of a run that trained its 3 epochs and ended well."""
    with pytest.raises(Boom):
        _fit(tmp_path, _failing_in_validation(epoch=1))
    again = _resumed(tmp_path, 3, epoch=1)
    group = _report(tmp_path, capsys)
    trained = [(row["attempt"], row["epoch"], row["train_samples"], row["partial"]) for row in group["epoch_rows"]]
    # The flow this test is about (Lightning 2.2: the batch trained again, a record of epoch 1's own).
    assert trained == [(0, 0, 32, False), (0, 1, 32, True)] + [(1, 1, 8, False)] * again + [(1, 2, 32, False)]
    assert group["configuration"]["completed_epochs"] == 3
    assert "cut short" not in group["description"] and "cut short" not in group["statement"], group["statement"]
    if again:  # (Lightning 2.2 said "1 epoch cut short by a crash and resumed by a later attempt" of a whole training)
        assert "; 1 epoch resumed by a later attempt after a crash in its validation, both attempts counted)" in (
            group["statement"])


def test_an_epoch_trained_again_after_a_crash_in_its_validation_is_no_training_cut_short(tmp_path, capsys):
    """Regression: with Lightning's default checkpoint (at each epoch's end, after its validation),
    a crash in epoch 1's validation is resumed from epoch 0's, and epoch 1 trained again. Its first
    training had trained all 32 samples: the statement said "1 epoch cut short by a crash and
    redone" of a run that trained every batch of it, then failed in its validation, and finished."""
    with pytest.raises(Boom):
        _fit(tmp_path, _failing_in_validation(epoch=1), every_step=False)
    _, _, TinyModel = flavour("lightning.pytorch")
    _fit(tmp_path, TinyModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", every_step=False)
    group = _report(tmp_path, capsys)
    trained = [(row["attempt"], row["epoch"], row["train_samples"], row["partial"]) for row in group["epoch_rows"]]
    assert trained == [(0, 0, 32, False), (0, 1, 32, True), (1, 1, 32, False), (1, 2, 32, False)]
    assert "cut short" not in group["statement"], group["statement"]
    assert ("The training (3 epochs of 32 samples in 4 steps each; 1 epoch trained again after a crash in its "
            "validation, both trainings counted) used") in group["statement"]
    # The numbers are the records': both trainings of epoch 1 in the training's energy.
    assert group["total"]["train_energy_kwh"]["mean"] == pytest.approx(
        sum(row["energy_kwh"] for row in group["epoch_rows"]), rel=1e-12)


def test_a_run_that_failed_in_its_last_validation_and_was_not_resumed_is_still_cut_short(tmp_path, capsys):
    with pytest.raises(Boom):
        _fit(tmp_path, _failing_in_validation(epoch=2))
    group = _report(tmp_path, capsys)
    assert "cut short by an exception or interrupt, 3 completed" in group["statement"]
    assert "cut short (3 completed)" in group["description"]


@pytest.mark.parametrize(("failing_epoch", "max_epochs"), [(1, 3), (0, 2)])
def test_a_run_resumed_past_a_failed_validation_is_a_repeat_of_one_that_never_failed(tmp_path, capsys, failing_epoch,
                                                                                     max_epochs):
    """Regression: the epoch whose validation failed has only a partial training record (of all 32
    samples), which the configuration's samples (and steps) per epoch left out: the run's epochs
    read [[0, 32], [2, 32]] against [[0, 32], [1, 32], [2, 32]] of a run that never failed (its
    steps per epoch None against 4 where the failure was in epoch 0 of 2), and the report made two
    configurations of one, each "over 1 run", for the same settings and training."""
    _, _, TinyModel = flavour("lightning.pytorch")
    _fit(tmp_path, TinyModel(), max_epochs=max_epochs, ckpt_dir="clean")
    with pytest.raises(Boom):
        _fit(tmp_path, _failing_in_validation(epoch=failing_epoch), max_epochs=max_epochs)
    again = _resumed(tmp_path, max_epochs, epoch=failing_epoch)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["configurations"]
    if again:
        # Still no training cut short, of all its epochs; but it trained more than its repeat did.
        (resumed,) = [group for group in groups if group["configuration"]["epoch_samples"][failing_epoch][1] is None]
        assert resumed["configuration"]["completed_epochs"] == max_epochs
        assert "cut short" not in resumed["description"], resumed["statement"]
        pytest.skip(f"Lightning {L_VERSION} trains the checkpoint's last batch again on the resume (8 samples of "
                    f"epoch {failing_epoch} more, and an optimizer step): no repeat of the run that never failed")
    assert [group["description"] for group in groups] == [groups[0]["description"]], "one configuration"
    (group,) = groups
    config = group["configuration"]
    assert config["epoch_samples"] == [[epoch, 32] for epoch in range(max_epochs)]
    assert (config["samples_per_epoch"], config["steps_per_epoch"], config["completed_epochs"]) == (32, 4, max_epochs)
    assert "cut short" not in group["description"] and "Over 2 runs" in group["statement"], group["statement"]


def test_an_epoch_trained_again_after_a_crash_at_its_end_says_where_it_failed(tmp_path, capsys):
    """A callback ahead of ours raises at epoch 1's end, after its validation: the checkpoint saved at
    each training epoch's end is epoch 0's, so the resume trains epoch 1 again. Its first training
    had trained all 32 samples: "cut short by a crash and redone" of a whole training."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class FailingAtEpochEnd(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Boom("boom at the end of epoch 1")

    def fit(failing, ckpt_path=None):
        energy = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                                output_dir=str(tmp_path / "out"))
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
        trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[*failing, energy, saver],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)

    with pytest.raises(Boom):
        fit([FailingAtEpochEnd()])
    fit([], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    group = _report(tmp_path, capsys)
    trained = [(row["attempt"], row["epoch"], row["train_samples"], row["partial"]) for row in group["epoch_rows"]]
    assert trained == [(0, 0, 32, False), (0, 1, 32, True), (1, 1, 32, False), (1, 2, 32, False)]
    assert "cut short" not in group["statement"], group["statement"]
    assert "; 1 epoch trained again after a crash at its end, both trainings counted) used" in group["statement"]
