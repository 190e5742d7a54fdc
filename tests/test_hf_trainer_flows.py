"""The HF ``Trainer`` adapter on everyday flows beside those of ``test_hf_everyday.py``: a crash
inside a gradient accumulation window resumed from the latest checkpoint, early stopping with an
evaluation at the start and the best model loaded at the end, ``max_steps`` short of an epoch then
raised twice, a callback removed mid-train for good, one added twice (and resumed with the
callback states restored), a resume whose callback's grid was corrected since the checkpoint.

Each is checked against what the Trainer ran (a subclass counts every micro-batch) and the ledger's
invariants (``flow_invariants``). Real Trainers on the tiny BERT of ``hf_tiny``, a scripted
constant-power sensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.test_hf_everyday import checked, new_callback  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, SEQ_LEN, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


class MicroBatchTrainer(Trainer):
    """Counts the samples of every micro-batch trained, per epoch as HF's loop numbers them (the
    first one from ``state.epoch``, each later one the next: transformers 4.47 leaves
    ``state.epoch`` short of 1.0 at an epoch's end under gradient accumulation); raises in the
    ``raise_at``-th micro-batch of this Trainer, before training it."""

    def __init__(self, *args, raise_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trained: dict[int, int] = {}
        self.micro_batches, self.raise_at, self.epoch_now = 0, raise_at, None
        self.add_callback(_EpochNumbers(self))

    def training_step(self, model, inputs, *args, **kwargs):
        self.micro_batches += 1
        if self.micro_batches == self.raise_at:
            raise RuntimeError(f"crash in micro-batch {self.raise_at}")
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.trained[self.epoch_now] = self.trained.get(self.epoch_now, 0) + len(inputs["labels"])
        return loss


class _EpochNumbers(TrainerCallback):
    def __init__(self, trainer: MicroBatchTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.epoch_now = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        now = self.trainer.epoch_now
        self.trainer.epoch_now = int(state.epoch or 0) if now is None else now + 1


def make_trainer(out, callback, extra=(), raise_at=None, **overrides) -> MicroBatchTrainer:
    return MicroBatchTrainer(model=tiny_model(), args=training_args(out, **overrides), raise_at=raise_at,
                             train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                             callbacks=[callback, *extra])


def trained(records, attempt: int) -> list[tuple[int, int]]:
    return [(r.epoch, r.samples) for r in records if r.phase == "train" and r.attempt == attempt]


def test_a_crash_inside_an_accumulation_window_resumed_from_the_latest_checkpoint_bills_each_micro_batch(tmp_path):
    """Batches of 2, 4 micro-batches a step (an epoch's 15 end in a short window); a checkpoint
    every 2 steps; the 26th micro-batch raises, inside a window the checkpoint before it does not
    hold. ``resume_from_checkpoint=True`` finds that checkpoint: each attempt's records are the
    micro-batches it trained, tokens HF's count of them."""
    out = tmp_path / "out"
    settings = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, num_train_epochs=2,
                    save_strategy="steps", save_steps=2, eval_strategy="no", include_num_input_tokens_seen=True)
    crashed = new_callback()
    first = make_trainer(out, crashed, raise_at=26, **settings)
    with pytest.raises(RuntimeError, match="micro-batch 26"):
        first.train()
    assert not meter_threads()
    check_run(crashed.tracker.run_id, [out], power_w=POWER_W, context="crashed")
    latest = json.loads((Path(get_last_checkpoint(str(out))) / "trainer_state.json").read_text())

    callback = new_callback()
    resumed = make_trainer(out, callback, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert callback.tracker.run_id == crashed.tracker.run_id
    records = checked(resumed, callback, out, "resumed")
    assert trained(records, 0) == sorted(first.trained.items()) and sum(first.trained.values()) == 50
    assert trained(records, 1) == sorted(resumed.trained.items())
    assert [(r.attempt, r.epoch) for r in records if r.partial] == [(0, 1)]
    for r in records:
        if r.phase == "train" and not r.partial:
            assert r.tokens == r.samples * SEQ_LEN, r
    # What the resume trained is what HF counted since the checkpoint.
    since = resumed.state.num_input_tokens_seen - latest["num_input_tokens_seen"]
    assert sum(r.tokens for r in records if r.phase == "train" and r.attempt == 1) == since > 0


def test_early_stopping_with_an_evaluation_at_the_start_and_the_best_model_loaded_at_the_end(tmp_path):
    """``eval_on_start``, evaluations and checkpoints every 3 steps (inside epochs), patience 1 and a
    threshold no loss meets: training stops after the second step evaluation (step 6, inside epoch
    1), whose epoch ends there; the best checkpoint is loaded."""
    out = tmp_path / "out"
    callback = new_callback()
    trainer = make_trainer(out, callback, [EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)],
                           num_train_epochs=5, eval_on_start=True, eval_strategy="steps", eval_steps=3,
                           save_strategy="steps", save_steps=3, load_best_model_at_end=True, metric_for_best_model="loss",
                           logging_strategy="steps", logging_steps=2)
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.state.best_model_checkpoint is not None
    records = checked(trainer, callback, out, "early stopping")
    assert trained(records, 0) == sorted(trainer.trained.items()) == [(0, 30), (1, 16)]
    loops = [(r.epoch, r.samples, r.step) for r in records if r.phase == "validation"]
    assert loops == [(None, EVAL_SAMPLES, 0), (0, EVAL_SAMPLES, 3), (1, EVAL_SAMPLES, 6)]
    assert not any(r.partial for r in records)


def test_max_steps_short_of_an_epoch_then_raised_and_resumed_twice(tmp_path):
    """``max_steps=2`` (half an epoch), then a new Trainer resumes the latest checkpoint with
    ``max_steps=7``, then the first Trainer resumes again with 9: one run, three attempts, each
    epoch's samples those its attempt trained."""
    out = tmp_path / "out"
    settings = dict(save_strategy="steps", save_steps=2, eval_strategy="no")
    first_callback = new_callback()
    first = make_trainer(out, first_callback, max_steps=2, **settings)
    first.train()
    assert trained(checked(first, first_callback, out, "max_steps 2"), 0) == [(0, 16)]

    callback = new_callback()
    second = make_trainer(out, callback, max_steps=7, **settings)
    second.train(resume_from_checkpoint=True)
    records = checked(second, callback, out, "max_steps 7")
    assert trained(records, 1) == sorted(second.trained.items()) == [(0, 14), (1, 24)]

    first.args.max_steps = 9
    first.trained = {}
    first.train(resume_from_checkpoint=True)  # the latest: where max_steps=7 ended
    records = checked(first, first_callback, out, "max_steps 9")
    assert {r.run_id for r in records} == {first_callback.tracker.run_id} == {callback.tracker.run_id}
    # The latest checkpoint is max_steps=7's last step (2 batches short of epoch 1's end): 6 + 8 samples.
    assert trained(records, 2) == sorted(first.trained.items()) == [(1, 6), (2, 8)]


def test_a_callback_removed_mid_train_and_never_added_back_says_its_epoch_missed_batches(tmp_path):
    """Regression: removed at step 2 (``remove_callback``) and never added back, the callback's run
    was written up when train() left as one epoch, ``partial`` but ``samples_counted: true`` with
    the 16 samples it saw, its energy that of the whole training (two epochs, evaluations): a
    J/sample several times too high. Its batches since went uncounted, as the record now says."""
    callback = new_callback()

    class Remover(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                trainer.remove_callback(callback)

    trainer = make_trainer(tmp_path / "out", callback, [Remover()])
    trainer.train()
    assert sum(trainer.trained.values()) == 2 * TRAIN_SAMPLES
    assert not meter_threads() and not callback.session.running
    records = check_run(callback.tracker.run_id, [tmp_path / "out"], power_w=POWER_W)
    train = [(r.epoch, r.partial, r.samples_counted, r.energy_j_per_sample) for r in records if r.phase == "train"]
    assert train == [(0, True, False, None)]


def test_the_same_callback_added_twice_measures_each_epoch_once(tmp_path):
    """Regression: ``Trainer(callbacks=[energy])`` then ``trainer.add_callback(energy)`` (or a
    notebook cell run twice; HF only warns) ran every hook twice: two epochs became four train
    records numbered 0 to 3 (two empty), each evaluation was labelled 1 or 3, and every value was
    logged twice. The callback now keeps its first place alone, and says so."""
    callback = new_callback()
    trainer = make_trainer(tmp_path / "out", callback)
    trainer.add_callback(callback)
    with pytest.warns(EnergyWarning, match="more than once"):
        trainer.train()
    assert [cb for cb in trainer.callback_handler.callbacks if cb is callback] == [callback]
    records = checked(trainer, callback, tmp_path / "out", "added twice")
    assert trained(records, 0) == sorted(trainer.trained.items()) == [(0, TRAIN_SAMPLES), (1, TRAIN_SAMPLES)]
    assert [(r.epoch, r.samples) for r in records if r.phase == "validation"] == [(0, EVAL_SAMPLES), (1, EVAL_SAMPLES)]
    assert [e["epoch"] for e in trainer.state.log_history if "energy_kwh" in e] == [1.0, 2.0]


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_a_resume_with_a_corrected_grid_goes_on_with_the_users_own_callback(tmp_path, restore_callback_states):
    """A crash after checkpoint-5; the resume passes a callback whose grid was corrected since.
    Regression, with ``restore_callback_states_from_checkpoint``: HF swaps it for a copy built from
    the checkpoint's settings, which handed its place back only to an original with those same
    settings. The user's callback was dropped: the resume went on with the old grid and, without
    its ``sensors=``, measured other hardware, and the warning said to pass the callback in
    ``Trainer(callbacks=[...])``, where it was. As without that setting, the user's callback now
    continues the run with its own grid."""
    out = tmp_path / "out"
    settings = dict(num_train_epochs=3, save_strategy="steps", save_steps=5, eval_strategy="no",
                    restore_callback_states_from_checkpoint=restore_callback_states)
    crashed = EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])
    with pytest.raises(RuntimeError, match="micro-batch 6"):
        make_trainer(out, crashed, raise_at=6, **settings).train()
    corrected = EnergyCallback(intensity=100.0, sensors=[scripted_sensor()])
    resumed = make_trainer(out, corrected, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, EnergyCallback)] == [corrected]
    assert corrected.tracker.run_id == crashed.tracker.run_id
    records = checked(resumed, corrected, out, "corrected grid")
    assert trained(records, 1) == sorted(resumed.trained.items()) == [(1, 22), (2, TRAIN_SAMPLES)]
    grids = {(r.attempt, round(r.co2eq_g / r.energy_kwh)) for r in records if r.energy_kwh > 0}
    assert grids == {(0, 300), (1, 100)}


def test_the_same_callback_added_twice_resumes_its_run_once_with_restored_callback_states(tmp_path):
    """Regression: with ``restore_callback_states_from_checkpoint`` HF builds a copy for each place
    of a callback added twice; one handed its place back to the user's callback, the other went on
    measuring a run of its own (estimated sensors, "being measured by another process") and logged
    its totals among the run's."""
    out = tmp_path / "out"
    settings = dict(num_train_epochs=3, save_strategy="steps", save_steps=5, eval_strategy="no",
                    restore_callback_states_from_checkpoint=True)
    crashed = new_callback()
    first = make_trainer(out, crashed, raise_at=6, **settings)
    first.add_callback(crashed)
    with pytest.raises(RuntimeError, match="micro-batch 6"):
        first.train()
    callback = new_callback()
    resumed = make_trainer(out, callback, **settings)
    resumed.add_callback(callback)
    resumed.train(resume_from_checkpoint=True)
    assert [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, EnergyCallback)] == [callback]
    records = checked(resumed, callback, out, "added twice, restored")
    assert {(r.run_id, r.attempt) for r in read_records(out)} == {(crashed.tracker.run_id, 0), (crashed.tracker.run_id, 1)}
    assert trained(records, 1) == sorted(resumed.trained.items()) == [(1, 22), (2, TRAIN_SAMPLES)]
