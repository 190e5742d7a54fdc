"""The HF ``Trainer`` adapter on more everyday paths, each checked against what the Trainer ran:
``save_only_model`` checkpoints, a fractional ``num_train_epochs``, ``dataloader_drop_last`` and
length-grouped sampling resumed mid-epoch, a callback first added on a resume, one Trainer trained
then resumed with more epochs, an evaluation and a prediction after a crash then a resume, and an
evaluation of a Trainer whose run another Trainer resumed.

Reuses ``test_hf_everyday``'s counting Trainer (every batch HF trained, per epoch of its loop) and
the ledger's invariants (``flow_invariants``). Real Trainers on the tiny BERT of ``hf_tiny``, a
scripted constant-power sensor.
"""

from __future__ import annotations

import inspect
import json

import pytest

pytest.importorskip("transformers")

from transformers import TrainingArguments  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, tiny_model, training_args,
)
from tests.test_hf_everyday import CountingTrainer, CrashAt, checked, make_trainer, new_callback  # noqa: E402

pytestmark = pytest.mark.slow


def _length_grouped() -> dict:
    # transformers 5 names the sampler by `train_sampling_strategy`; 4.x had `group_by_length`.
    if "train_sampling_strategy" in inspect.signature(TrainingArguments).parameters:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


# Each: the first train()'s settings, the step a callback crashes it at, the checkpoint resumed
# and the resume's own settings. 30 samples in batches of 8: 4 batches an epoch, the last of 6.
RESUMES = {
    # HF saves the weights and trainer_state.json alone, and resumes from them (fresh optimizer).
    "save_only_model": (dict(num_train_epochs=3, eval_strategy="no", save_strategy="steps", save_steps=6,
                             save_only_model=True), 7, "checkpoint-6", {}),
    # 1.5 epochs: HF's max_steps 6, the second epoch 2 of its 4 batches.
    "fractional epochs": (dict(num_train_epochs=1.5, save_strategy="steps", save_steps=4), 5, "checkpoint-4", {}),
    # dataloader_drop_last: 3 batches of 8 an epoch; the resume skips epoch 1's first.
    "drop_last": (dict(num_train_epochs=2, save_strategy="steps", save_steps=4, dataloader_drop_last=True), 5,
                  "checkpoint-4", {}),
    "length grouped": (dict(num_train_epochs=2, save_strategy="steps", save_steps=2, **_length_grouped()), 3,
                       "checkpoint-2", {}),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_a_crash_resumed_records_what_each_attempt_ran(tmp_path, case):
    first_settings, crash_step, checkpoint, resume_settings = RESUMES[case]
    out = tmp_path / "out"
    callback = new_callback()
    first = make_trainer(out, callback, [CrashAt(crash_step)], **first_settings)
    with pytest.raises(RuntimeError, match="crash at step"):
        first.train()
    assert not meter_threads()
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, **{**first_settings, **resume_settings})
    resumed.train(resume_from_checkpoint=str(out / checkpoint))
    assert resumed_callback.tracker.run_id == callback.tracker.run_id
    records = checked(resumed, resumed_callback, out, case)
    for attempt, trainer in enumerate((first, resumed)):
        mine = [r for r in records if r.attempt == attempt]
        assert [(r.epoch, r.samples) for r in mine if r.phase == "train"] == sorted(trainer.trained.items()), (case, attempt)
        loops = [(r.metric_prefix, r.samples) for r in mine if r.phase == "validation" and not r.partial]
        assert loops == trainer.looped, (case, attempt)
    assert [(r.attempt, r.phase) for r in records if r.partial] == [(0, "train")], case


def test_a_callback_first_added_on_a_resume_measures_a_new_run_from_hfs_epoch(tmp_path):
    """The checkpoint has no entry of the callback (it trained without one): a new run, its first
    epoch the one HF's loop resumes at (1, from step 6 of 4 an epoch), with the rest of it."""
    out = tmp_path / "out"
    settings = dict(num_train_epochs=2, save_strategy="steps", save_steps=6)

    def trainer_without_callback(*callbacks) -> CountingTrainer:
        return CountingTrainer(model=tiny_model(), args=training_args(out, **settings), train_dataset=TokenDataset(TRAIN_SAMPLES),
                               eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=list(callbacks))

    with pytest.raises(RuntimeError, match="crash at step 7"):
        trainer_without_callback(CrashAt(7)).train()
    callback = new_callback()
    resumed = trainer_without_callback()
    resumed.add_callback(callback)
    resumed.train(resume_from_checkpoint=True)
    records = checked(resumed, callback, out, "added on resume")
    assert {r.attempt for r in records} == {0}
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == sorted(resumed.trained.items()) == [(1, 14)]
    assert [(r.epoch, r.samples) for r in records if r.phase == "validation"] == [(1, EVAL_SAMPLES)]


def test_one_trainer_trained_then_resumed_with_more_epochs(tmp_path):
    """``train()``, ``args.num_train_epochs`` raised and ``train(resume_from_checkpoint=True)``:
    the same run, its next attempt, at HF's next epoch."""
    out = tmp_path / "out"
    callback = new_callback()
    trainer = make_trainer(out, callback, num_train_epochs=1, save_strategy="epoch")
    trainer.train()
    first_run = callback.tracker.run_id
    trainer.args.num_train_epochs = 2
    trainer.trained.clear()
    trainer.train(resume_from_checkpoint=True)
    assert callback.tracker.run_id == first_run and trainer.trained == {1: 30}
    records = checked(trainer, callback, out, "resumed on the same Trainer")
    assert [(r.attempt, r.phase, r.epoch, r.samples) for r in records if r.phase != "other"] == [
        (0, "train", 0, 30), (0, "validation", 0, EVAL_SAMPLES), (1, "train", 1, 30), (1, "validation", 1, EVAL_SAMPLES)]


def test_an_evaluation_and_a_prediction_after_a_crash_then_a_resume_on_the_same_trainer(tmp_path):
    """After the crash, ``evaluate()`` and ``predict()`` go on in the crashed run, at the epoch it
    failed in; ``train(resume_from_checkpoint=True)`` on the same Trainer and callback is its next
    attempt, its totals after all of them."""
    out = tmp_path / "out"
    callback, crash = new_callback(), CrashAt(6)
    trainer = make_trainer(out, callback, [crash], num_train_epochs=3, save_strategy="steps", save_steps=4)
    with pytest.raises(RuntimeError, match="crash at step 6"):
        trainer.train()
    run_id = callback.tracker.run_id
    trainer.evaluate()
    trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert callback.tracker.run_id == run_id
    records = check_run(run_id, [out], power_w=POWER_W)
    assert [(r.phase, r.epoch, r.samples, r.partial) for r in records if r.phase != "other"][-3:] == [
        ("train", 1, 16, True), ("validation", 1, EVAL_SAMPLES, False), ("predict", 1, TEST_SAMPLES, False)]
    before = sum(r.energy_kwh for r in records)
    trainer.remove_callback(crash)
    trainer.trained.clear()
    trainer.train(resume_from_checkpoint=True)  # checkpoint-4: epoch 0's end
    assert callback.tracker.run_id == run_id and trainer.trained == {1: 30, 2: 30}
    records = checked(trainer, callback, out, "resumed after a crash and evaluations")
    assert [(r.epoch, r.samples) for r in records if r.phase == "train" and r.attempt == 1] == [(1, 30), (2, 30)]
    first_logged = next(e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e
                        and e.get("step", 0) > 4)
    assert first_logged > before  # the resumed totals include the evaluations after the crash


@pytest.mark.parametrize("callbacks", ["one shared", "one each"])
def test_an_evaluation_of_a_trainer_whose_run_another_trainer_resumed(tmp_path, callbacks):
    """Trainer A trains run R and saves; Trainer B (in this process) resumes R for one epoch more
    (attempt 1); then ``A.evaluate()``. A's callback went on in R from its own session, stopped
    since A's ``train()``: the evaluation's records repeated seqs 13-16 of B's attempt, and the
    summary written after them held A's view alone (train: 2 records and 60 samples, B's third
    epoch lost). With one callback shared by the two Trainers and with one callback each alike
    (the tracker's rule, tests/test_tracker_later_calls.py): the evaluation goes on after B's
    records, as the run's next attempt."""
    out = tmp_path / "out"
    first_callback = new_callback()
    first = make_trainer(out, first_callback, num_train_epochs=2, save_strategy="epoch")
    first.train()
    callback = first_callback if callbacks == "one shared" else new_callback()
    second = make_trainer(out, callback, num_train_epochs=3, save_strategy="epoch")
    second.train(resume_from_checkpoint=True)
    assert callback.tracker.run_id == first_callback.tracker.run_id
    first.evaluate()
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W)  # seqs billed once, summary = records
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["phases"]["train"]["samples"] == 90
    assert [(r.phase, r.samples) for r in read_records(out) if r.phase != "other"][-1] == ("validation", EVAL_SAMPLES)
    assert len(records) == len(read_records(out))
