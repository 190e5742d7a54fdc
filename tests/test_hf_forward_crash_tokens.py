"""A crash before a training micro-batch trained (its forward raising: a bug in the model, an
out-of-memory error; or a callback's ``on_step_begin``, or Ctrl-C there) with HF's
``include_num_input_tokens_seen``: the epoch cut short records the tokens of the batches it
trained, as its samples, not those of the batch that never trained.

Regression: transformers 4 adds a micro-batch's tokens to ``state.num_input_tokens_seen`` before
the step's ``on_step_begin`` and ``training_step`` (5 once ``training_step`` returned), and the
crash's write-up read that count: the partial record held the untrained batch's tokens beside
samples without it (4.47: 8 samples, 128 tokens of 8 each). Real Trainers on the tiny BERT of
``hf_tiny``, a scripted constant-power sensor.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, SEQ_LEN, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


class ForwardFails(Trainer):
    """The model's forward raises in the ``fail_at``-th training micro-batch; counts those trained."""

    def __init__(self, *args, fail_at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at, self.micro_batches, self.trained = fail_at, 0, 0

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            self.micro_batches += 1
            if self.micro_batches == self.fail_at:
                raise RuntimeError(f"forward failed in micro-batch {self.fail_at}")
        return super().compute_loss(model, inputs, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.trained += len(inputs["labels"])
        return loss


class StepBeginFails(TrainerCallback):
    """Raises at the beginning of the step after ``step`` (after the energy callback's hook)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"at the beginning of step {self.step + 1}")


# 30 samples in batches of 8: 4 micro-batches an epoch, the last of 6; epoch 1 trains 8 samples before
# the crash: its second micro-batch's forward raises, or its second step's beginning (under accumulation
# over 2 its first step trains 16).
@pytest.mark.parametrize("accumulation, where, trained", [
    (1, "forward", 8), (2, "forward", 8), (1, "step begin", 8), (2, "step begin", 16)])
def test_a_batch_that_never_trained_leaves_its_tokens_out_of_the_epoch_cut_short(tmp_path, accumulation, where,
                                                                                 trained):
    callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])
    steps_per_epoch = 4 // accumulation
    crash = [StepBeginFails(steps_per_epoch + 1)] if where == "step begin" else []
    trainer = ForwardFails(model=tiny_model(), fail_at=6 if where == "forward" else None, callbacks=[callback, *crash],
                           args=training_args(tmp_path, eval_strategy="no", include_num_input_tokens_seen=True,
                                              gradient_accumulation_steps=accumulation),
                           train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1))
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        trainer.train()
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [tmp_path], power_w=POWER_W)
    assert trainer.trained == TRAIN_SAMPLES + trained
    assert [(r.epoch, r.samples, r.tokens, r.partial) for r in records if r.phase == "train"] == [
        (0, TRAIN_SAMPLES, TRAIN_SAMPLES * SEQ_LEN, False), (1, trained, trained * SEQ_LEN, True)]
