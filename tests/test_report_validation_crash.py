"""A Lightning fit that fails in an epoch's validation, after a checkpoint at that epoch's last
training step, and is resumed from it: the resume goes on with the next epoch, and the run, which
then finishes, is no training cut short."""

from __future__ import annotations

import json
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from lightning_models import Boom, flavour, loaders, trainer_kwargs  # noqa: E402
from greencallbacks.cli import main  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


def _fit(tmp_path, model, max_epochs=3, ckpt_path=None):
    L, EnergyCallback, _ = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                              output_dir=str(tmp_path / "out"))
    # A checkpoint at every training step (as long runs save every N steps): the last is taken at
    # the epoch's last batch, before its validation.
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, callbacks=[callback, saver],
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)


def _failing_in_validation(epoch: int):
    _, _, TinyModel = flavour("lightning.pytorch")

    class FailingInValidation(TinyModel):
        def validation_step(self, batch, batch_idx):
            if self.current_epoch == epoch and batch_idx == 1:
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
