"""The HF adapter under everyday ``TrainingArguments`` and Trainer variants, each number read back.

Early stopping on step evaluations then ``evaluate`` / ``predict``; two evaluation sets; a
``Seq2SeqTrainer`` generating in its evaluation; ``evaluate`` / ``predict`` before any training then
``eval_on_start``; a resume from a checkpoint older than the latest (the run branches); batch-shape
options (accumulation with ``max_steps``, ``dataloader_drop_last``, ``group_by_length``,
``auto_find_batch_size``). After each call: the ledger's invariants (``flow_invariants``), samples
as the Trainer really ran them, ``log_history`` and TensorBoard's event files against the records,
and ``greencallbacks report``'s run totals.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import EarlyStoppingCallback  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.cli import main as cli_main  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, tensorboard_dir, tiny_model,
    training_args,
)
from tests.test_hf_everyday import CountingTrainer, checked, make_trainer, new_callback  # noqa: E402
from tests.test_hf_paths_more import _length_grouped  # noqa: E402

pytestmark = pytest.mark.slow
REL = 1e-9


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard's event files under ``directory`` hold, by tag: (step, value) in order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events_file in sorted(directory.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        events = EventAccumulator(str(events_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((s.step, s.value) for s in events.Scalars(tag))
    return found


def logged(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if key in entry]


def report_run_totals(out, capsys) -> dict[str, float]:
    capsys.readouterr()
    assert cli_main(["report", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    return {run: totals["energy_kwh"] for c in report["configurations"] for run, totals in c["run_totals"].items()}


def prefix_totals_match(records, history: list[dict], prefix: str, context: str = "") -> None:
    """Each ``{prefix}_energy_kwh_total`` logged is its prefix's records so far (the last one: all)."""
    mine = [r for r in records if r.metric_prefix == prefix and not r.partial]
    values = logged(history, f"{prefix}_energy_kwh_total")
    assert values, (prefix, context)
    assert values[-1] == pytest.approx(sum(r.energy_kwh for r in mine), rel=REL), (prefix, context)
    assert values == sorted(values), (prefix, context)


def test_early_stopping_on_step_evaluations_then_evaluate_and_predict(tmp_path, monkeypatch, capsys):
    """Evaluations every 3 steps inside epochs, the best model loaded at the end, patience 1 and a
    threshold no loss meets: training stops at step 6, inside epoch 1; then ``evaluate()`` and
    ``predict()`` continue the run at epoch 1. TensorBoard holds what ``log_history`` does."""
    out, tb = tmp_path / "out", tmp_path / "tb"
    callback = new_callback()
    trainer = make_trainer(out, callback, [EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)],
                           num_train_epochs=5, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                           load_best_model_at_end=True, metric_for_best_model="loss", logging_strategy="steps",
                           logging_steps=2, report_to=["tensorboard"], **tensorboard_dir(monkeypatch, tb))
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.state.best_model_checkpoint is not None
    checked(trainer, callback, out, "stopped early")
    metrics = trainer.evaluate()
    prediction = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W)
    assert not meter_threads() and not callback.session.running
    assert sorted(trainer.trained.items()) == [(0, TRAIN_SAMPLES), (1, 16)]
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, TRAIN_SAMPLES), (1, 16)]
    loops = [(r.phase, r.epoch, r.samples, r.step) for r in records if r.phase in ("validation", "predict")]
    assert loops == [("validation", 0, EVAL_SAMPLES, 3), ("validation", 1, EVAL_SAMPLES, 6),
                     ("validation", 1, EVAL_SAMPLES, 6), ("predict", 1, TEST_SAMPLES, 6)]
    assert trainer.looped == [("eval", EVAL_SAMPLES)] * 3 + [("test", TEST_SAMPLES)]
    evaluations = [r for r in records if r.phase == "validation"]
    assert metrics["eval_energy_kwh"] == pytest.approx(evaluations[-1].energy_kwh, rel=REL)
    assert metrics["eval_energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in evaluations), rel=REL)
    (predicted,) = [r for r in records if r.phase == "predict"]
    assert prediction.metrics["test_energy_kwh"] == pytest.approx(predicted.energy_kwh, rel=REL)
    history = trainer.state.log_history
    prefix_totals_match(records, history, "eval")
    prefix_totals_match(records, history, "test")
    # Step cadence: the training totals so far rise and never pass the summary's.
    steps = logged(history, "energy_kwh_total")
    summary = json.loads((out / "energy-summary.json").read_text())
    assert steps == sorted(steps) and steps[-1] <= summary["energy_kwh"] * (1 + REL)
    written = scalars(tb)
    for key, tag in [("energy_kwh_total", "train/energy_kwh_total"), ("eval_energy_kwh_total", "eval/energy_kwh_total"),
                     ("test_energy_kwh", "test/energy_kwh")]:
        theirs = [value for _, value in written[tag]]
        assert theirs == pytest.approx(logged(history, key), rel=1e-6), tag  # float32
    assert report_run_totals(out, capsys) == {callback.tracker.run_id: pytest.approx(summary["energy_kwh"], rel=REL)}


def test_two_evaluation_sets_with_step_evaluations_each_log_their_own_loops(tmp_path, monkeypatch):
    """``eval_dataset={"a": ..., "b": ...}`` with evaluations every 3 steps, then ``evaluate()``:
    each set's records count its samples, and ``eval_a_*`` / ``eval_b_*`` in ``log_history`` and
    TensorBoard are its own loops."""
    out, tb = tmp_path / "out", tmp_path / "tb"
    sets = {"a": TokenDataset(EVAL_SAMPLES, seed=1), "b": TokenDataset(6, seed=2)}
    callback = new_callback()
    args = training_args(out, eval_strategy="steps", eval_steps=3, logging_strategy="steps", logging_steps=3,
                         report_to=["tensorboard"], **tensorboard_dir(monkeypatch, tb))
    trainer = CountingTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=sets,
                              callbacks=[callback])
    trainer.train()
    trainer.evaluate()
    records = checked(trainer, callback, out, "two sets")
    history = trainer.state.log_history
    written = scalars(tb)
    for name, size in (("a", EVAL_SAMPLES), ("b", 6)):
        mine = [(r.epoch, r.step, r.samples) for r in records if r.metric_prefix == f"eval_{name}"]
        ran = [samples for prefix, samples in trainer.looped if prefix == f"eval_{name}"]
        # Steps 3 and 6, the end of training at step 8 (transformers 5; 4.47 does not), then evaluate().
        assert mine[:2] == [(0, 3, size), (1, 6, size)] and mine[2:] == [(1, 8, size)] * (len(mine) - 2), name
        assert [samples for _, _, samples in mine] == ran, name
        prefix_totals_match(records, history, f"eval_{name}", name)
        theirs = [value for _, value in written[f"eval/{name}_energy_kwh_total"]]
        assert theirs == pytest.approx(logged(history, f"eval_{name}_energy_kwh_total"), rel=1e-6), name
        # Its loss and its energy arrive in one entry: the loop's own metrics.
        assert all(f"eval_{name}_loss" in e for e in history if f"eval_{name}_energy_kwh" in e), name


class Seq2Seq(torch.utils.data.Dataset):
    """Random source and target token ids (no tokenizer: tensors as a collator would give them)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.source = torch.randint(2, 32, (n, 6), generator=generator)
        self.target = torch.randint(2, 32, (n, 4), generator=generator)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.source[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.target[i]}


def test_a_seq2seq_trainer_generating_in_its_evaluation_bills_generation_to_the_loop(tmp_path):
    """``Seq2SeqTrainer(predict_with_generate=True)`` on a tiny T5 built from its config: every
    ``generate`` call runs inside the evaluation or prediction record, whose samples are those generated for."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    generate, generated = model.generate, []  # (phase open when generate ran, samples)
    callback = new_callback()

    def watched_generate(*args, **kwargs):
        generated.append((callback.tracker._stack[-1].phase, len(kwargs["input_ids"])))
        return generate(*args, **kwargs)

    model.generate = watched_generate
    out = tmp_path / "out"
    args = Seq2SeqTrainingArguments(output_dir=str(out), num_train_epochs=2, per_device_train_batch_size=4,
                                    per_device_eval_batch_size=3, use_cpu=True, report_to="none", disable_tqdm=True,
                                    logging_strategy="epoch", eval_strategy="epoch", save_strategy="no",
                                    predict_with_generate=True, generation_max_length=5)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=Seq2Seq(10), eval_dataset=Seq2Seq(7, seed=1),
                             callbacks=[callback], compute_metrics=lambda p: {"generated": float(len(p.predictions))})
    trainer.train()
    metrics = trainer.evaluate(max_length=6)
    prediction = trainer.predict(Seq2Seq(5, seed=2))
    assert metrics["eval_generated"] == 7 and prediction.metrics["test_generated"] == 5
    assert not meter_threads() and not callback.session.running
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W)
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase != "other"] == [
        ("train", 0, 10), ("validation", 0, 7), ("train", 1, 10), ("validation", 1, 7), ("validation", 1, 7), ("predict", 1, 5)]
    # Batches of 3: 3 generate calls per evaluation (3 + 3 + 1), 2 for the prediction (3 + 2).
    assert generated == [("validation", 3), ("validation", 3), ("validation", 1)] * 3 + [("predict", 3), ("predict", 2)]
    history = trainer.state.log_history
    loops = [r for r in records if r.phase == "validation"]
    assert logged(history, "eval_energy_kwh") == pytest.approx([r.energy_kwh for r in loops], rel=REL)
    assert prediction.metrics["test_energy_kwh"] == pytest.approx(
        sum(r.energy_kwh for r in records if r.phase == "predict"), rel=REL)


def test_evaluate_and_predict_before_any_training_then_train_evaluating_at_the_start(tmp_path, monkeypatch, capsys):
    """``evaluate()`` and ``predict()`` on a Trainer that never trained are a short run of their own;
    the ``train()`` after them, with ``eval_on_start``, is a new run whose first evaluation (step 0,
    no epoch) starts its totals from zero. TensorBoard keeps both runs' values (``log_history`` is
    the Trainer's new state's: the second run's alone); the report has both runs, each its records."""
    out, tb = tmp_path / "out", tmp_path / "tb"
    callback = new_callback()
    trainer = make_trainer(out, callback, eval_on_start=True, logging_strategy="steps", logging_steps=2,
                           report_to=["tensorboard"], **tensorboard_dir(monkeypatch, tb))
    before = trainer.evaluate()
    prediction = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    alone = callback.tracker.run_id
    first = check_run(alone, [out], power_w=POWER_W, context="alone")
    assert [(r.phase, r.epoch, r.samples) for r in first if r.phase != "other"] == [
        ("validation", None, EVAL_SAMPLES), ("predict", None, TEST_SAMPLES)]
    (evaluated,) = [r for r in first if r.phase == "validation"]
    assert before["eval_energy_kwh_total"] == pytest.approx(evaluated.energy_kwh, rel=REL)
    trainer.train()
    assert callback.tracker.run_id != alone
    records = checked(trainer, callback, out, "trained after")
    assert [(r.phase, r.epoch, r.step, r.samples) for r in records if r.phase != "other"] == [
        ("validation", None, 0, EVAL_SAMPLES), ("train", 0, 4, TRAIN_SAMPLES), ("validation", 0, 4, EVAL_SAMPLES),
        ("train", 1, 8, TRAIN_SAMPLES), ("validation", 1, 8, EVAL_SAMPLES)]
    history = trainer.state.log_history
    prefix_totals_match(records, history, "eval")
    evaluations = logged(history, "eval_energy_kwh_total")
    written = scalars(tb)
    theirs = [value for _, value in written["eval/energy_kwh_total"]]
    assert theirs == pytest.approx([before["eval_energy_kwh_total"]] + evaluations, rel=1e-6)
    assert [value for _, value in written["test/energy_kwh"]] == pytest.approx([prediction.metrics["test_energy_kwh"]], rel=1e-6)
    totals = report_run_totals(out, capsys)
    assert totals == {alone: pytest.approx(sum(r.energy_kwh for r in first), rel=REL),
                      callback.tracker.run_id: pytest.approx(sum(r.energy_kwh for r in records), rel=REL)}


def test_a_resume_from_a_checkpoint_older_than_the_latest_branches_the_run(tmp_path, monkeypatch, capsys):
    """Checkpoints every 2 steps, two kept (``save_total_limit``); the training ends at step 8;
    a new Trainer resumes from checkpoint-6, not the latest: epoch 1's last two steps run again
    as attempt 1. Attempt 0's energy after checkpoint-6 was spent: it stays in the run's total,
    which the resumed attempt's logged totals continue from (above all attempt 0 logged)."""
    out, tb = tmp_path / "out", tmp_path / "tb"
    settings = dict(save_strategy="steps", save_steps=2, save_total_limit=2, logging_strategy="steps", logging_steps=1,
                    report_to=["tensorboard"], **tensorboard_dir(monkeypatch, tb))
    callback = new_callback()
    first = make_trainer(out, callback, **settings)
    first.train()
    before = checked(first, callback, out, "first")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    first_logged = logged(first.state.log_history, "energy_kwh_total")
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, **settings)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    resumed.evaluate()
    assert resumed_callback.tracker.run_id == callback.tracker.run_id
    records = checked(resumed, resumed_callback, out, "branched")
    assert records[: len(before)] == before  # attempt 0 as it was: nothing rewritten or dropped
    assert sorted(resumed.trained.items()) == [(1, 14)]  # steps 7 and 8: a batch of 8 and one of 6
    assert [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "train"] == [
        (0, 0, TRAIN_SAMPLES), (0, 1, TRAIN_SAMPLES), (1, 1, 14)]
    history = resumed.state.log_history  # checkpoint-6's entries (attempt 0 to step 6), then attempt 1's
    saved = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    resumed_logged = logged(history, "energy_kwh_total")
    continued = resumed_logged[len(logged(saved, "energy_kwh_total")):]
    assert continued and min(continued) > max(first_logged)
    assert resumed_logged == sorted(resumed_logged)
    summary = json.loads((out / "energy-summary.json").read_text())
    assert continued[-1] <= summary["energy_kwh"] * (1 + REL)
    prefix_totals_match(records, history, "eval")
    # TensorBoard: attempt 0's values to step 8, then attempt 1's from step 7, as each log_history had them.
    theirs = scalars(tb)["train/energy_kwh_total"]
    assert [value for _, value in theirs] == pytest.approx(first_logged + continued, rel=1e-6)
    assert [step for step, _ in theirs][len(first_logged):] == [e["step"] for e in history[len(saved):] if "energy_kwh_total" in e]
    assert report_run_totals(out, capsys) == {callback.tracker.run_id: pytest.approx(summary["energy_kwh"], rel=REL)}


def test_an_evaluation_at_the_start_of_a_resume_is_at_the_checkpoint_s_epoch(tmp_path, capsys):
    """Regression: ``eval_on_start`` on a resume from checkpoint-6 (inside epoch 1) evaluated the
    checkpoint's model at step 6 but recorded ``epoch: null``, as before a new training's epoch 0,
    so the report left its energy out of epoch 1's row (attempt 1: validation "n/a"), where the
    same evaluation by ``evaluate()`` after a resume is at the checkpoint's epoch."""
    out = tmp_path / "out"
    first = make_trainer(out, callback := new_callback(), save_strategy="steps", save_steps=6)
    first.train()
    checked(first, callback, out, "first")
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, save_strategy="steps", save_steps=6, eval_on_start=True)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    records = checked(resumed, resumed_callback, out, "resumed")
    loops = [r for r in records if r.attempt == 1 and r.phase == "validation"]
    assert [(r.epoch, r.step, r.samples) for r in loops] == [(1, 6, EVAL_SAMPLES), (1, 8, EVAL_SAMPLES)]
    capsys.readouterr()
    assert cli_main(["report", str(out), "--format", "json"]) == 0
    (configuration,) = json.loads(capsys.readouterr().out)["configurations"]
    (row,) = [r for r in configuration["epoch_rows"] if (r["attempt"], r["epoch"]) == (1, 1)]
    assert row["val_energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in loops), rel=REL)


@pytest.mark.parametrize("options", [
    # 4 batches an epoch (the last of 6) in windows of 3: 2 optimizer steps an epoch; max_steps=5
    # ends epoch 2 after its first window. Length-grouped batches; the loop wrapped to retry on OOM.
    dict(gradient_accumulation_steps=3, max_steps=5, length_grouped=True, auto_find_batch_size=True),
    # Dropped last batches (3 of 8 an epoch) in windows of 2: 2 steps an epoch, max_steps=3.
    dict(gradient_accumulation_steps=2, max_steps=3, dataloader_drop_last=True, length_grouped=True),
], ids=["accumulation-grouped-auto-batch", "drop-last"])
def test_batch_shape_options_record_the_samples_the_trainer_ran(tmp_path, options):
    out = tmp_path / "out"
    options = dict(options)
    if options.pop("length_grouped", False):
        options.update(_length_grouped())
    callback = new_callback()
    trainer = make_trainer(out, callback, logging_strategy="steps", logging_steps=1, **options)
    trainer.train()
    records = checked(trainer, callback, out, str(options))
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == sorted(trainer.trained.items())
    assert [(r.metric_prefix, r.samples) for r in records if r.phase == "validation"] == trainer.looped
    steps = logged(trainer.state.log_history, "energy_kwh_total")
    assert steps == sorted(steps)
