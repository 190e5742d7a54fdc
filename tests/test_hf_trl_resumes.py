"""TRL's ``SFTTrainer`` with a LoRA model, crashed and resumed from its adapter checkpoints twice
under gradient accumulation, with step logs and evaluations: the records count what the model
ran, every batch once (counted here from the batches given to ``compute_loss``, independently of
the callback), and the step totals rise across the attempts, never above the summary.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import TrainerCallback  # noqa: E402

from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402
from tests.flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from tests.hf_tiny import POWER_W  # noqa: E402
from tests.test_hf_trl import _lora, _sft, _tiny_llama, _trl  # noqa: E402

pytestmark = pytest.mark.slow


class _Boom(Exception):
    pass


class _CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Boom(f"at step {self.step}")


class _Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _trainer(tmp_path, kind, crash_at):
    """The trainer, its energy callback, the log it sends, and the batches its model ran: (training?, documents, tokens)."""
    settings = dict(num_train_epochs=2, gradient_accumulation_steps=2, logging_strategy="steps", logging_steps=2,
                    eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=2)
    settings.update({"packing": dict(packing=True, per_device_train_batch_size=1),
                     "padding_free": dict(padding_free=True, max_length=None, per_device_train_batch_size=2)}[kind])
    logs = _Logs()
    trainer, callback = _sft(tmp_path, model=_lora(_tiny_llama()), callbacks=[logs] + ([_CrashAt(crash_at)] if crash_at else []),
                             **settings)
    ran = []
    compute_loss = trainer.compute_loss

    def counting_compute_loss(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        ran.append((model.training, int((inputs["position_ids"] == 0).sum()), inputs["input_ids"].numel()))
        return loss

    trainer.compute_loss = counting_compute_loss
    return trainer, callback, logs, ran


@pytest.mark.parametrize("kind", ["packing", "padding_free"])
def test_lora_crashed_and_resumed_twice_under_accumulation_counts_each_batch_once(tmp_path, kind):
    _trl()
    trained_docs = trained_tokens = 0
    run_id, highest = None, 0.0
    for crash_at in (3, 5, None):  # checkpoints every 2 steps: steps 3 and 5 each run twice
        trainer, callback, logs, ran = _trainer(tmp_path, kind, crash_at)
        if crash_at:
            with pytest.raises(_Boom):
                trainer.train(resume_from_checkpoint=run_id is not None or None)
        else:
            trainer.train(resume_from_checkpoint=True)
        assert meter_threads() == []
        run_id = run_id or callback.tracker.run_id
        assert callback.tracker.run_id == run_id
        records = check_run(run_id, [tmp_path], power_w=POWER_W, context=f"crash at {crash_at}")
        trained_docs += sum(docs for training, docs, _ in ran if training)
        trained_tokens += sum(tokens for training, _, tokens in ran if training)
        train = [r for r in records if r.phase == "train"]
        assert sum(r.samples for r in train) == trained_docs
        assert sum(r.tokens or 0 for r in train) == trained_tokens
        assert all(r.samples_counted for r in records)
        # The evaluations of this attempt: 9 documents each, counted by the callback as they ran.
        attempt = max(r.attempt for r in records)
        evaluated = [r.samples for r in records if r.phase == "validation" and r.attempt == attempt and not r.partial]
        assert evaluated == [9] * len(evaluated) and sum(evaluated) == sum(d for t, d, _ in ran if not t)
        totals = [e["energy_kwh_total"] for e in logs.logs if "energy_kwh_total" in e]
        summary_kwh = json.loads((tmp_path / SUMMARY_FILE).read_text())["energy_kwh"]
        assert totals and totals == sorted(totals) and totals[0] >= highest
        assert totals[-1] <= summary_kwh * (1 + 1e-9)
        assert all(40 < e["power_w"] < 60 for e in logs.logs if "power_w" in e)  # the scripted sensor's 50 W
        highest = totals[-1]
    epoch_totals = [e["energy_kwh_total"] for e in logs.logs if "energy_kwh" in e and "energy_kwh_total" in e]
    logged_total_matches(records, epoch_totals[-1], rel=1e-9)
    metrics = trainer.evaluate()
    predicted = trainer.predict(trainer.eval_dataset)
    records = check_run(run_id, [tmp_path], power_w=POWER_W, context="evaluate, predict")
    assert [r.samples for r in records if r.phase in ("validation", "predict")][-2:] == [9, 9]
    assert metrics["eval_energy_kwh"] > 0 and predicted.metrics["test_energy_kwh"] > 0
    assert meter_threads() == []
