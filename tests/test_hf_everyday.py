"""The HF ``Trainer`` adapter on everyday paths, each checked against what the Trainer really ran.

A Trainer subclass counts every batch given to ``training_step`` and ``prediction_step`` (the
truth); after each call the ledger's invariants hold (``flow_invariants``) and the records' samples
are that truth. Real Trainers on the tiny BERT of ``hf_tiny``, a scripted constant-power sensor.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, SEQ_LEN, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


class CountingTrainer(Trainer):
    """Counts the samples of every training batch per epoch, and of every loop, as they ran."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trained: dict[int, int] = {}  # epoch (HF's, as begun) -> samples
        self.looped: list[tuple[str, int]] = []  # (metric_key_prefix, samples) of each loop that completed
        self.epoch_begun = 0
        self.add_callback(_EpochOfSteps(self))

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.trained[self.epoch_begun] = self.trained.get(self.epoch_begun, 0) + len(inputs["labels"])
        return loss

    def evaluation_loop(self, *args, **kwargs):
        outer, self._loop_samples = getattr(self, "_loop_samples", None), 0
        try:
            output = super().evaluation_loop(*args, **kwargs)
            self.looped.append((kwargs.get("metric_key_prefix", "eval"), self._loop_samples))
            return output
        finally:
            self._loop_samples = outer

    def prediction_step(self, model, inputs, *args, **kwargs):
        output = super().prediction_step(model, inputs, *args, **kwargs)
        self._loop_samples += len(inputs["labels"])
        return output


class _EpochOfSteps(TrainerCallback):
    def __init__(self, trainer: CountingTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        # HF's loop variable, not state.epoch: transformers 4.47 under gradient accumulation ends an
        # epoch short of a whole number, or makes more steps than it plans and resumes past it.
        frame = sys._getframe()
        while frame.f_code.co_name != "_inner_training_loop":
            frame = frame.f_back
        self.trainer.epoch_begun = frame.f_locals["epoch"]


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def new_callback() -> EnergyCallback:
    return EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])


def make_trainer(out, callback, extra=(), **overrides) -> CountingTrainer:
    return CountingTrainer(model=tiny_model(), args=training_args(out, **overrides),
                           train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                           callbacks=[callback, *extra])


def checked(trainer: Trainer, callback: EnergyCallback, out, context: str):
    """The run's records, once the ledger's invariants hold for them."""
    assert not meter_threads(), context
    assert not callback.session.running, context
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    logged = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e]
    logged_total_matches(records, logged[-1], rel=1e-9, context=context)
    return records


def test_an_evaluation_that_raises_inside_training_and_is_caught_leaves_the_training_measured(tmp_path):
    """Regression: a callback running an extra ``evaluate()`` at each epoch end and catching its
    failure (here a broken data source) let train() go on, but the loop's exception aborted the whole
    run: the epoch-end evaluation that followed stopped the meter, epoch 1 trained unmeasured (no
    record at all: its energy and 30 samples lost) and each later extra loop began a stray session.
    Now the failed loop alone is cut short (partial); the run goes on; a train() that the exception
    leaves is written up by its watch as before."""

    class ExtraEvaluation(TrainerCallback):
        caught = 0

        def on_epoch_end(self, args, state, control, **kwargs):
            try:
                trainer.evaluate(eval_dataset=TokenDataset(4, seed=5, fail_after=2), metric_key_prefix="extra")
            except RuntimeError:
                self.caught += 1

    extra, callback = ExtraEvaluation(), new_callback()
    trainer = make_trainer(tmp_path / "out", callback, [extra], per_device_eval_batch_size=2)
    trainer.train()
    assert extra.caught == 2
    records = checked(trainer, callback, tmp_path / "out", "caught evaluation")
    assert trainer.trained == {0: 30, 1: 30}
    assert [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == [(0, 30, False), (1, 30, False)]
    # The extra loop fails before its first batch (the loader reads one ahead): 0 samples, cut short.
    loops = [(r.epoch, r.metric_prefix, r.samples, r.partial) for r in records if r.phase == "validation"]
    assert loops == [(0, "extra", 0, True), (0, "eval", EVAL_SAMPLES, False),
                     (1, "extra", 0, True), (1, "eval", EVAL_SAMPLES, False)]
    assert trainer.looped == [("eval", EVAL_SAMPLES)] * 2
    assert {r.attempt for r in records} == {0}


def test_a_prediction_that_raises_in_compute_metrics_and_is_caught_leaves_the_evaluation_measured(tmp_path):
    """Regression, the same in a standalone ``evaluate()``: a ``predict()`` in ``compute_metrics``
    that raised and was caught failed the run, so the evaluation around it, which completed, was
    recorded cut short and returned no energy values."""
    callback = new_callback()
    trainer = make_trainer(tmp_path / "out", callback, eval_strategy="no", per_device_eval_batch_size=2)

    def metrics_with_a_failing_prediction(prediction):
        with pytest.raises(RuntimeError, match="broken data source"):
            trainer.predict(TokenDataset(4, seed=5, fail_after=2))
        return {"extra": 1.0}

    trainer.compute_metrics = metrics_with_a_failing_prediction
    metrics = trainer.evaluate()
    assert metrics["eval_extra"] == 1.0 and metrics["eval_energy_kwh"] > 0
    assert not meter_threads() and not callback.session.running
    records = check_run(callback.tracker.run_id, [tmp_path / "out"], power_w=POWER_W)
    assert [(r.phase, r.samples, r.partial) for r in records if r.phase != "other"] == [
        ("predict", 0, True), ("validation", EVAL_SAMPLES, False)]
    assert trainer.looped == [("eval", EVAL_SAMPLES)]


def test_a_crash_inside_an_epoch_records_the_tokens_it_trained(tmp_path):
    """Regression: with ``include_num_input_tokens_seen`` an epoch's tokens (HF's count) were added
    at its end only, so the record of an epoch cut short by a crash said ``tokens: null`` (no
    J/token) for the batches it ran. Now the crash's write-up adds them."""
    callback = new_callback()
    trainer = make_trainer(tmp_path / "out", callback, [CrashAt(7)], include_num_input_tokens_seen="all",
                           eval_strategy="no")
    with pytest.raises(RuntimeError, match="crash at step 7"):
        trainer.train()
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [tmp_path / "out"], power_w=POWER_W)
    assert trainer.trained == {0: 30, 1: 24} and trainer.state.num_input_tokens_seen == 54 * SEQ_LEN
    assert [(r.epoch, r.samples, r.tokens, r.partial) for r in records if r.phase == "train"] == [
        (0, 30, 30 * SEQ_LEN, False), (1, 24, 24 * SEQ_LEN, True)]


# Each: the first train()'s settings and the step a callback crashes it at (None: it ends by itself),
# then the resume's checkpoint and settings. 30 samples in batches of 8: 4 batches an epoch, the last of 6.
RESUMES = {
    # Accumulation over 3 batches: 2 optimizer steps an epoch (3 batches, then 1); checkpoint-3 is
    # after epoch 1's first group, so the resume runs its last batch alone (6 samples). (max_steps:
    # transformers before 4.48 plans 1 step an epoch from the same loader, so 3 epochs were 3 steps;
    # it makes 2 an epoch all the same, and resumes from checkpoint-3 at epoch 3 // 1 = 3, whole.)
    "accumulation": (dict(max_steps=6, gradient_accumulation_steps=3, save_strategy="steps", save_steps=1), 4,
                     "checkpoint-3", {}),
    # max_steps ends epoch 1 after 2 of its 4 steps (cleanly); evaluations every 3 steps, inside
    # epochs, the best checkpoint kept and loaded at the end; a larger max_steps goes on.
    "max_steps": (dict(max_steps=6, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                       load_best_model_at_end=True, metric_for_best_model="loss", save_total_limit=1), None,
                  "checkpoint-6", dict(max_steps=10)),
    # ignore_data_skip: the resumed epoch starts over from its first batch (30 samples), not where
    # checkpoint-6 left it; the step limit (12) then ends epoch 2 halfway. A data loader worker process.
    "ignore_data_skip": (dict(num_train_epochs=3, eval_strategy="no", save_strategy="steps", save_steps=6,
                              dataloader_num_workers=1), 7, "checkpoint-6", dict(ignore_data_skip=True)),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_a_resume_records_what_each_attempt_ran(tmp_path, case):
    first_settings, crash_step, checkpoint, resume_settings = RESUMES[case]
    out = tmp_path / "out"
    callback = new_callback()
    first = make_trainer(out, callback, [CrashAt(crash_step)] if crash_step else [], **first_settings)
    if crash_step:
        with pytest.raises(RuntimeError, match="crash at step"):
            first.train()
        assert not meter_threads()
        check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=case)
    else:
        first.train()
        checked(first, callback, out, case)
    run_id = callback.tracker.run_id
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, **{**first_settings, **resume_settings})
    resumed.train(resume_from_checkpoint=str(out / checkpoint))
    assert resumed_callback.tracker.run_id == run_id
    records = checked(resumed, resumed_callback, out, case)
    for attempt, trainer in enumerate((first, resumed)):
        mine = [r for r in records if r.attempt == attempt]
        trained = [(r.epoch, r.samples) for r in mine if r.phase == "train"]
        assert trained == sorted(trainer.trained.items()), (case, attempt)
        loops = [(r.metric_prefix, r.samples) for r in mine if r.phase == "validation" and not r.partial]
        assert loops == trainer.looped, (case, attempt)
    partial = [(r.attempt, r.epoch) for r in records if r.partial]
    assert partial == ([(0, 1)] if crash_step else []), case


def test_an_evaluation_after_a_resume_that_trained_nothing_is_at_the_checkpoint_s_epoch(tmp_path):
    """Regression: ``train(resume_from_checkpoint=...)`` of a finished run runs no epoch, so the
    ``evaluate()`` after it recorded ``epoch: null``, where the same evaluation after the
    ``train()`` that wrote the checkpoint recorded the epoch it ended at (1)."""
    out = tmp_path / "out"
    callback = new_callback()
    first = make_trainer(out, callback, save_strategy="epoch")
    first.train()
    first.evaluate()
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.trained == {} and resumed.state.epoch == 2.0
    resumed.evaluate()
    assert resumed_callback.tracker.run_id == callback.tracker.run_id
    records = checked(resumed, resumed_callback, out, "resumed finished run")
    loops = [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "validation"]
    assert loops == [(0, 0, EVAL_SAMPLES), (0, 1, EVAL_SAMPLES), (0, 1, EVAL_SAMPLES), (1, 1, EVAL_SAMPLES)]

