"""A resume from a checkpoint inside an epoch: HF skips the steps trained before it. Over a finite
stream (a torch ``IterableDataset``), whose pass is shorter than ``global_step``, HF's loop starts
again at epoch 0 and skips every batch of that pass: transformers 5 then trains the next pass,
4.47 stops there, having trained nothing. The epoch was begun at ``on_epoch_begin`` and left a
complete training record of no samples in the resumed attempt, which the report took for an
epoch trained again from an earlier checkpoint. It now begins at its first step, if one comes.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks import report  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, SEQ_LEN, TRAIN_SAMPLES, TokenDataset, tiny_model, training_args,
)
from tests.test_hf_everyday import CountingTrainer, CrashAt, new_callback  # noqa: E402

pytestmark = pytest.mark.slow


class Stream(torch.utils.data.IterableDataset):
    """A finite stream: one pass of ``TRAIN_SAMPLES`` (4 batches of 8, the last of 6), no length."""

    def __init__(self) -> None:
        self.items = TokenDataset(TRAIN_SAMPLES)

    def __iter__(self):
        return (self.items[i] for i in range(len(self.items)))


def _crash_then_resume(out, crash: int, checkpoint: int, stream: bool, **settings):
    """Trains until ``crash`` (a step), then resumes from ``checkpoint-<checkpoint>`` in a new Trainer and
    callback (a new process); returns both Trainers, the run's records (invariants checked) and the report."""
    args = dict(save_strategy="steps", eval_strategy="no")
    args.update(settings)
    trainers = []
    for extra, resume in (([CrashAt(crash)], None), ([], str(out / f"checkpoint-{checkpoint}"))):
        callback = new_callback()
        trainer = CountingTrainer(
            model=tiny_model(), args=training_args(out, **args),
            train_dataset=Stream() if stream else TokenDataset(TRAIN_SAMPLES),
            eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[callback, *extra])
        if resume is None:
            with pytest.raises(RuntimeError, match="crash at step"):
                trainer.train()
        else:
            trainer.train(resume_from_checkpoint=resume)
        trainers.append(trainer)
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=f"resume from {checkpoint}")
    return trainers, records, report.render(records, "md")


def _trained(records, attempt: int) -> list[tuple[int, int]]:
    return [(r.epoch, r.samples) for r in records if r.phase == "train" and r.attempt == attempt]


@pytest.mark.parametrize("eval_strategy", ["no", "epoch"])
def test_a_stream_resumed_past_its_pass_records_no_training_of_the_pass_it_skipped(tmp_path, eval_strategy):
    # 4 steps a pass; checkpoint-6 is 2 steps into the second pass, which HF's resume skips over the first.
    (first, resumed), records, text = _crash_then_resume(
        tmp_path / "out", crash=7, checkpoint=6, stream=True, max_steps=10, save_steps=3, eval_strategy=eval_strategy)
    assert _trained(records, 0) == sorted(first.trained.items()) == [(0, 30), (1, 24)]
    # transformers 5 trains the next pass (epoch 1, 4 steps to max_steps); 4.47 stops, none trained.
    assert _trained(records, 1) == sorted(resumed.trained.items())
    assert not any(r.phase == "train" and r.attempt == 1 and r.epoch == 0 for r in records), records
    assert "trained again from an earlier" not in text, text  # the statement for a paper
    if eval_strategy == "epoch":  # the evaluation after the pass HF skipped still ran: recorded at its epoch
        assert [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "validation"][:2] == [
            (0, 0, EVAL_SAMPLES), (1, 0, EVAL_SAMPLES)]


def test_a_stream_resumed_past_its_pass_under_gradient_accumulation_begins_at_its_first_step(tmp_path):
    # 2 optimizer steps a pass (micro-batches 8+8, 8+6); checkpoint-3 is one step into the second pass.
    (first, resumed), records, text = _crash_then_resume(
        tmp_path / "out", crash=4, checkpoint=3, stream=True, max_steps=6, save_steps=3, gradient_accumulation_steps=2)
    assert _trained(records, 0) == sorted(first.trained.items()) == [(0, 30), (1, 30)]
    assert _trained(records, 1) == sorted(resumed.trained.items())  # 5: [(1, 30), (2, 16)]; 4.47: none
    assert all(r.samples > 0 for r in records if r.phase == "train"), records
    assert "trained again from an earlier" not in text, text  # the statement for a paper


@pytest.mark.parametrize("accumulation, save_steps", [(1, 4), (2, 2), (3, 2)])
def test_a_checkpoint_at_an_epoch_s_last_step_resumes_at_the_next_epoch(tmp_path, accumulation, save_steps):
    """Saved at an epoch's last step, before its end (save_steps dividing its steps): HF resumes at
    the next epoch, skipping nothing, and the resumed attempt has no record of the epoch before."""
    (first, resumed), records, text = _crash_then_resume(
        tmp_path / "out", crash=save_steps + 1, checkpoint=save_steps, stream=False, num_train_epochs=3,
        save_steps=save_steps, gradient_accumulation_steps=accumulation)
    assert _trained(records, 1) == sorted(resumed.trained.items())
    assert 0 not in resumed.trained and all(r.samples > 0 for r in records if r.phase == "train"), records
    assert "trained again from an earlier" not in text, text  # the statement for a paper


def test_an_epoch_resumed_inside_it_keeps_the_tokens_of_its_first_step(tmp_path):
    """The epoch resumed from checkpoint-2 begins at its first step: transformers 4.47 adds a
    micro-batch's tokens to ``num_input_tokens_seen`` before that step's ``on_step_begin``."""
    (first, resumed), records, text = _crash_then_resume(
        tmp_path / "out", crash=3, checkpoint=2, stream=False, num_train_epochs=2, save_steps=2,
        include_num_input_tokens_seen=True)
    trained = [(r.epoch, r.samples, r.tokens) for r in records if r.phase == "train" and r.attempt == 1]
    assert trained == [(epoch, samples, samples * SEQ_LEN) for epoch, samples in sorted(resumed.trained.items())]
    assert trained[0][:2] == (0, 14)  # 8 + 6 samples after the 2 steps skipped
