"""The HF adapter labels each training epoch with the epoch HF's training loop is in, at a resume
too, whatever ``state.epoch`` reads.

Under gradient accumulation with a data loader whose length is no multiple of the window,
transformers 4.47 runs the last window of an epoch with ``num_examples % gradient_accumulation_steps``
batches: the epoch's last micro-batches either make no optimizer step (``state.epoch`` ends short of
a whole number, 1.8 after two epochs) or make an extra one (HF then counts more epochs trained
than it ran). A resume starts HF's loop at ``global_step // num_update_steps_per_epoch``, which the
checkpoint's ``state.epoch`` does not give. The truth here is HF's own loop variable, read from its
frame by the test (the adapter does not read it). Real Trainers on the tiny BERT of ``hf_tiny``.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.prediction import epochs_left  # noqa: E402
from tests.hf_tiny import EVAL_SAMPLES, POWER_W, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args  # noqa: E402

pytestmark = pytest.mark.slow


class Boom(Exception):
    pass


class LoopEpochs(TrainerCallback):
    """The epochs HF's training loop begins (its ``epoch`` variable); raises as ``crash_at`` begins."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.epochs: list[int] = []
        self.crash_at = crash_at

    def on_epoch_begin(self, args, state, control, **kwargs):
        frame = sys._getframe()
        while frame.f_code.co_name != "_inner_training_loop":
            frame = frame.f_back
        self.epochs.append(frame.f_locals["epoch"])
        if self.epochs[-1] == self.crash_at:
            raise Boom(f"as epoch {self.crash_at} begins")


def new_callback() -> EnergyCallback:
    return EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])


def make_trainer(out, callback: EnergyCallback, loop: LoopEpochs, **overrides) -> Trainer:
    args = training_args(out, **{"num_train_epochs": 5, "save_strategy": "epoch", **overrides})
    return Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                   eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[callback, loop])


def train_epochs(records, attempt: int) -> list[int]:
    return [r.epoch for r in records if r.phase == "train" and r.attempt == attempt]


@pytest.mark.parametrize("batch, accumulation", [(2, 4), (8, 3)], ids=["15-batches-in-windows-of-4", "4-batches-in-windows-of-3"])
def test_a_resume_under_gradient_accumulation_labels_the_epochs_hf_runs(tmp_path, batch, accumulation):
    """A crash as epoch 2 begins, after the checkpoint of epoch 1's end; the resume from it.

    Regression (transformers 4.47, 15 batches in windows of 4): the checkpoint's ``state.epoch``
    read 1.8, so the resume labelled HF's epochs 2, 3, 4 as 1, 2, 3 (epoch 1 "redone", epoch 4
    never reached) and the last epoch's prediction still counted an epoch to come. (4 batches in
    windows of 3: 4.47 makes two steps an epoch where it plans one, and resumes at epoch 4.)"""
    out = tmp_path / "out"
    settings = dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    crashed, first_loop = new_callback(), LoopEpochs(crash_at=2)
    with pytest.raises(Boom):
        make_trainer(out, crashed, first_loop, **settings).train()
    assert not meter_threads()

    callback, loop = new_callback(), LoopEpochs()
    resumed = make_trainer(out, callback, loop, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert callback.tracker.run_id == crashed.tracker.run_id
    assert not meter_threads() and not callback.session.running
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context="resumed")
    assert train_epochs(records, 0) == first_loop.epochs, (train_epochs(records, 0), first_loop.epochs)
    assert train_epochs(records, 1) == loop.epochs, (train_epochs(records, 1), loop.epochs)
    logged = [e for e in resumed.state.log_history if "energy_kwh_total" in e]
    logged_total_matches(records, logged[-1]["energy_kwh_total"], rel=1e-9, context="resumed")
    # The last epoch HF ran ends the run: no epoch left to predict.
    tracker = callback.tracker
    assert tracker.ledger.last_finished_epoch == loop.epochs[-1]
    assert epochs_left(tracker.ledger, tracker.planned_epochs, tracker.planned_steps) == 0


@pytest.mark.parametrize("batch, accumulation", [(2, 4), (8, 3)], ids=["15-batches-in-windows-of-4", "4-batches-in-windows-of-3"])
def test_a_resume_from_a_mid_epoch_checkpoint_under_gradient_accumulation(tmp_path, batch, accumulation):
    """A checkpoint every step, a crash as epoch 2 begins: the latest checkpoint is the last step
    of epoch 1, which the resume starts from; then from an earlier one, inside epoch 1."""
    out = tmp_path / "out"
    settings = dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                    save_strategy="steps", save_steps=1)
    first_loop = LoopEpochs(crash_at=2)
    with pytest.raises(Boom):
        make_trainer(out, new_callback(), first_loop, **settings).train()
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for checkpoint in (checkpoints[-1], checkpoints[-2]):
        callback, loop = new_callback(), LoopEpochs()
        make_trainer(out, callback, loop, **settings).train(resume_from_checkpoint=str(checkpoint))
        records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=checkpoint.name)
        latest = max(r.attempt for r in records)
        assert train_epochs(records, latest) == loop.epochs, (checkpoint.name, train_epochs(records, latest), loop.epochs)


def test_a_resume_with_another_batch_size_labels_the_epochs_hf_runs(tmp_path):
    """Batches of 8 (4 steps an epoch), a crash as epoch 2 begins after the checkpoint of step 8
    (``state.epoch`` 2.0); the resume with batches of 4 makes 8 steps an epoch, so HF's loop starts
    at epoch 8 // 8 = 1 (HF warns of the other batch size and goes on; transformers 4.47 trains on
    with the checkpoint's batch size instead, from epoch 2). Regression (transformers 5.25): the
    resume's epochs 1 to 4 were labelled 2 to 5 from the checkpoint's 2.0, one past the last planned."""
    out = tmp_path / "out"
    first_loop = LoopEpochs(crash_at=2)
    with pytest.raises(Boom):
        make_trainer(out, new_callback(), first_loop, per_device_train_batch_size=8).train()
    callback, loop = new_callback(), LoopEpochs()
    make_trainer(out, callback, loop, per_device_train_batch_size=4).train(resume_from_checkpoint=True)
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context="another batch size")
    assert train_epochs(records, 0) == first_loop.epochs
    assert train_epochs(records, 1) == loop.epochs
    tracker = callback.tracker
    assert epochs_left(tracker.ledger, tracker.planned_epochs, tracker.planned_steps) == 0
