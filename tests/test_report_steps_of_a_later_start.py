"""The steps of an epoch, for a run whose training began at a later epoch with no step before it.

A Lightning fit that goes on from an earlier fit of its Trainer (``max_epochs`` raised, ``fit``
again) is a run of its own, from epoch 2 at global step 8. Its records carry the global step at
each epoch's end (12, 16) and none before its first epoch: counted from step 0, its first epoch
had 12 steps, and the report said "2 epochs of 32 samples in 12 steps each" where each had 4.
"""

from __future__ import annotations

import json

import pytest

from greencallbacks.cli import main
torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from tests.lightning_models import BATCH, TRAIN_SAMPLES, flavour, loaders, trainer_kwargs  # noqa: E402

STEPS = TRAIN_SAMPLES // BATCH  # 4 a whole epoch


def _fit_then_fit_again(tmp_path, more_epochs: int):
    """A 2-epoch fit, then the same Trainer fitted again for ``more_epochs`` more: two runs."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    train, val = loaders()
    callback = EnergyCallback(intensity=100.0, output_dir=tmp_path)
    trainer = L.Trainer(max_epochs=2, callbacks=[callback], logger=False, **trainer_kwargs())
    model = TinyModel()
    trainer.fit(model, train, val)
    first = callback.tracker.run_id
    trainer.fit_loop.max_epochs = 2 + more_epochs
    trainer.fit(model, train, val)
    return first, callback.tracker.run_id


def _configuration(capsys, tmp_path, run_id):
    capsys.readouterr()  # what the training printed (HF's logs)
    assert main(["report", str(tmp_path), "--run-id", run_id, "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    return group


def test_a_fit_gone_on_from_epoch_2_says_the_steps_of_its_own_epochs(tmp_path, capsys):
    first, later = _fit_then_fit_again(tmp_path, more_epochs=2)
    assert first != later
    assert _configuration(capsys, tmp_path, first)["configuration"]["steps_per_epoch"] == STEPS
    group = _configuration(capsys, tmp_path, later)
    assert group["configuration"]["first_epoch"] == 2
    assert group["configuration"]["steps_per_epoch"] == STEPS  # was 12: the 8 steps of the first fit counted in
    assert f"in {STEPS} steps each" in group["statement"]


def test_one_epoch_gone_on_from_a_later_start_claims_no_step_count(tmp_path, capsys):
    """One epoch from epoch 2: its steps are not known from the records alone, and are not said."""
    _, later = _fit_then_fit_again(tmp_path, more_epochs=1)
    group = _configuration(capsys, tmp_path, later)
    assert group["configuration"]["steps_per_epoch"] is None  # was 12
    assert "steps each" not in group["statement"]


def test_an_hf_training_resumed_from_a_checkpoint_taken_unmeasured_says_the_steps_of_its_epochs(tmp_path, capsys):
    """Measuring added on resume: HF's checkpoint of epoch 2 (step 8) holds no state of the callback, so
    the resume is a run of its own from epoch 2 (steps 12 and 16 at its epochs' ends): "in 12 steps each"."""
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import BATCH as HF_BATCH
    from tests.hf_tiny import TRAIN_SAMPLES as HF_SAMPLES
    from tests.hf_tiny import TokenDataset, tiny_model, training_args

    args = dict(save_strategy="epoch", eval_strategy="no", num_train_epochs=2)
    Trainer(model=tiny_model(), args=training_args(tmp_path / "hf", **args), train_dataset=TokenDataset(HF_SAMPLES)).train()
    steps = -(-HF_SAMPLES // HF_BATCH)  # 4: the last batch is partial
    callback = EnergyCallback(intensity=100.0, output_dir=tmp_path / "energy")
    resumed = Trainer(model=tiny_model(), args=training_args(tmp_path / "hf", **{**args, "num_train_epochs": 4}),
                      train_dataset=TokenDataset(HF_SAMPLES), callbacks=[callback])
    resumed.train(resume_from_checkpoint=str(tmp_path / "hf" / f"checkpoint-{2 * steps}"))
    group = _configuration(capsys, tmp_path / "energy", callback.tracker.run_id)
    assert group["configuration"]["first_epoch"] == 2
    assert group["configuration"]["steps_per_epoch"] == steps  # was 12
