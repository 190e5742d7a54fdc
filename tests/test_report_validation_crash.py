"""A Lightning fit that fails in an epoch's validation, after a checkpoint at that epoch's last
training step, and is resumed from it: the resume goes on with the next epoch, and the run, which
then finishes, is no training cut short, and a repeat of a run of the same settings that never failed."""

from __future__ import annotations

import json
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from lightning_models import Boom, flavour, loaders, trainer_kwargs  # noqa: E402
from greencallbacks.cli import main  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


def _fit(tmp_path, model, max_epochs=3, ckpt_path=None, ckpt_dir="ckpt"):
    L, EnergyCallback, _ = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                              output_dir=str(tmp_path / "out"))
    # A checkpoint at every training step (as long runs save every N steps): the last is taken at
    # the epoch's last batch, before its validation.
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / ckpt_dir, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, callbacks=[callback, saver],
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


def _report(tmp_path, capsys) -> dict:
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    return group


def test_a_run_resumed_past_an_epoch_that_failed_in_its_validation_is_not_called_cut_short(tmp_path, capsys):
    """Regression: epoch 1's training record is partial (the failure ended it), though it trained all
    32 samples, and the resume trained no batch of it: the report said "cut short by an exception
    or interrupt, 2 completed" of a run that trained its 3 epochs and ended well."""
    _, _, TinyModel = flavour("lightning.pytorch")
    with pytest.raises(Boom):
        _fit(tmp_path, _failing_in_validation(epoch=1))
    _fit(tmp_path, TinyModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    group = _report(tmp_path, capsys)
    trained = [(row["attempt"], row["epoch"], row["train_samples"], row["partial"]) for row in group["epoch_rows"]]
    assert trained == [(0, 0, 32, False), (0, 1, 32, True), (1, 2, 32, False)]  # the flow this test is about
    assert group["configuration"]["completed_epochs"] == 3
    assert "cut short" not in group["statement"] and "cut short" not in group["description"], group["statement"]


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
    _fit(tmp_path, TinyModel(), max_epochs=max_epochs, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["configurations"]
    assert [group["description"] for group in groups] == [groups[0]["description"]], "one configuration"
    (group,) = groups
    config = group["configuration"]
    assert config["epoch_samples"] == [[epoch, 32] for epoch in range(max_epochs)]
    assert (config["samples_per_epoch"], config["steps_per_epoch"], config["completed_epochs"]) == (32, 4, max_epochs)
    assert "cut short" not in group["description"] and "Over 2 runs" in group["statement"], group["statement"]
