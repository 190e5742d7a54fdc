"""What each epoch cost, and the prediction made from it, across the calls a run sees after its training.

Record sequences as the adapters write them (each record when its phase ends, a validation inside a
training epoch before that epoch's training record), given to a ``Ledger``: an attempt that only
evaluates, tests or predicts from a checkpoint trains no epoch, so what the epochs cost, and the
prediction, are those of the same run without it (its energy in the total); so does a call after
the training in the process that trained (``Record.later_call``). Then through the tracker
on a fake clock: a resume replays the records as they were written, and counts the epochs left from
the checkpoint it resumed from. Then real HF and Lightning Trainers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.ledger import Ledger, read_run_records
from greencallbacks.meter import Meter
from greencallbacks.prediction import PREDICTION_STEMS, predict
from greencallbacks.records import Record
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

J = 1 / 3.6e6  # kWh per joule
PLANNED = 7


class Sequence:
    """Records of one run, in the order they are written; energies in J."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, attempt: int, phase: str, epoch: int | None, joules: float, partial: bool = False,
            **fields) -> None:
        self.records.append(Record(
            run_id="r", phase=phase, epoch=epoch, seq=len(self.records), start_time="2026-12-05T00:00:00+00:00",
            duration_s=joules / 100.0, samples=0, it_energy_kwh=joules * J, energy_kwh=joules * J, co2eq_g=joules * J * 100,
            intensity_gco2eq_per_kwh=100.0, intensity_source="test", pue=1.0, energy_j_per_sample=None,
            co2eq_g_per_sample=None, attempt=attempt, partial=partial, **fields))

    def epoch(self, attempt: int, epoch: int, train_j: float, nested_validation_j: float = 0.0,
              validation_j: float = 200.0, gap_j: float = 100.0) -> None:
        """One epoch trained: a validation inside it (Lightning), its training, then the gap and the
        evaluation after it (HF), and the gap after that."""
        if nested_validation_j:
            self.add(attempt, "validation", epoch, nested_validation_j)
        self.add(attempt, "train", epoch, train_j)
        self.add(attempt, "other", epoch, gap_j / 2)
        if validation_j:
            self.add(attempt, "validation", epoch, validation_j)
        self.add(attempt, "other", epoch, gap_j / 2)


def ledger_of(records: list[Record]) -> Ledger:
    """A ledger fed ``records`` live, one at a time, as the tracker does, in the attempt of the last."""
    ledger = Ledger("r")
    for record in records:
        ledger.attempt = record.attempt
        ledger.add(record)
    return ledger


def costs(ledger: Ledger) -> dict:
    return {e: (c.attempt, c.warmup, round(c.kwh / J, 6), c.complete,
                None if c.kwh_at_train_end is None else round(c.kwh_at_train_end / J, 6))
            for e, c in sorted(ledger.epochs.items())}


TRAIN_J = [3000.0, 1000.0, 1100.0, 900.0, 1050.0, 950.0, 1000.0]

# What a later attempt runs from the checkpoint of epoch 1 without training: each list one attempt.
EVALUATION_ONLY = {
    # HF: train(resume_from_checkpoint=True) of a finished run, then evaluate() (at the checkpoint's epoch).
    "evaluate after a resume that trained nothing": [[("other", None, 50.0), ("validation", 1, 200.0), ("other", 1, 30.0)]],
    # Lightning: validate(ckpt_path=...) in a later session, at a fresh Trainer's epoch 0.
    "validate a checkpoint in a later session": [[("validation", 0, 200.0), ("other", 0, 30.0)]],
    "test and predict in a later session": [[("test", 1, 300.0), ("other", 1, 30.0), ("predict", 1, 400.0),
                                              ("other", 1, 20.0)]],
    "two evaluations of one checkpoint": [[("validation", 1, 200.0), ("other", 1, 30.0)],
                                          [("validation", 1, 210.0), ("other", 1, 10.0)]],
}


@pytest.mark.parametrize("case", list(EVALUATION_ONLY))
def test_an_attempt_that_only_evaluates_a_checkpoint_changes_no_epoch_cost_nor_the_prediction(case):
    """Regression: an evaluation-only attempt's first record of the checkpoint's epoch replaced the
    cost of the attempt that trained it, as if it redid the epoch. After 2 epochs, an evaluate() of
    the finished run, then a resume to 7 epochs, the prediction lost epoch 1 (its statistics held
    one complete epoch fewer) and stayed NaN an epoch longer, or was made from fewer epochs."""
    run, without = Sequence(), Sequence()
    for seq in (run, without):
        for epoch in range(2):
            seq.epoch(0, epoch, TRAIN_J[epoch])
    middle = EVALUATION_ONLY[case]
    for attempt, phases in enumerate(middle, start=1):
        for phase, epoch, joules in phases:
            run.add(attempt, phase, epoch, joules)
    middle_kwh = sum(j for phases in middle for _, _, j in phases) * J
    resumed = len(middle) + 1
    for seq in (run, without):
        seq.add(resumed, "other", None, 50.0)
    checked = 0
    for epoch in range(2, PLANNED):
        for seq in (run, without):
            seq.epoch(resumed, epoch, TRAIN_J[epoch])
        # At the training end of each epoch of the resumed attempt, as the adapters log it.
        at_end = [i for i, r in enumerate(run.records) if r.phase == "train" and r.epoch == epoch][0] + 1
        at_end_without = [i for i, r in enumerate(without.records) if r.phase == "train" and r.epoch == epoch][0] + 1
        ledger, reference = ledger_of(run.records[:at_end]), ledger_of(without.records[:at_end_without])
        assert costs(ledger) == costs(reference), (case, epoch)
        assert ledger.stats.state() == pytest.approx(reference.stats.state(), rel=1e-12), (case, epoch)
        predicted, expected = predict(ledger, PLANNED), predict(reference, PLANNED)
        for stem in PREDICTION_STEMS[:3]:
            if math.isnan(expected[stem]):
                assert math.isnan(predicted[stem]), (case, epoch, stem)
            else:
                checked += 1
                assert predicted[stem] == pytest.approx(expected[stem] + middle_kwh, rel=1e-9), (case, epoch, stem)
    assert checked == 3 * 3  # known from epoch 4 on: two complete epochs after each attempt's warm-up (1, 3)


def test_a_resume_inside_an_epoch_bills_its_evaluations_there_before_its_training_to_that_epoch():
    """What an attempt bills to an epoch before its training record of it is its redo of the epoch
    when that record follows: an evaluation inside the epoch (Lightning's ``val_check_interval``,
    HF's ``eval_strategy="steps"``) is written before the training phase holding it ends. Here
    attempt 0 is killed inside epoch 4, attempt 1 evaluates the checkpoint of epoch 3, attempt 2
    resumes inside epoch 4 (from a checkpoint taken in it). Epoch 3 stays attempt 0's (the
    regression); epoch 4 is attempt 2's, its evaluation inside it billed before its training end;
    and that evaluation, part of an epoch still to come, leaves the prediction as it was."""
    run = Sequence()
    for epoch in range(4):
        run.epoch(0, epoch, TRAIN_J[epoch], nested_validation_j=150.0, validation_j=0.0)
    run.add(0, "validation", 4, 150.0)
    run.add(0, "train", 4, 400.0, partial=True)
    run.add(1, "validation", 3, 150.0)
    run.add(1, "other", 3, 30.0)
    run.add(2, "other", None, 50.0)
    before = predict(ledger_of(run.records), PLANNED)
    run.add(2, "validation", 4, 150.0)
    inside = predict(ledger_of(run.records), PLANNED)
    run.add(2, "train", 4, 600.0)
    run.add(2, "other", 4, 100.0)
    run.epoch(2, 5, 1000.0, nested_validation_j=150.0, validation_j=0.0)
    ledger = ledger_of(run.records)
    assert costs(ledger)[3] == (0, False, 1150.0, True, 1050.0)
    assert costs(ledger)[4] == (2, True, 850.0, True, 750.0)
    assert (ledger.stats.n, ledger.last_finished_epoch) == (3, 5)  # epochs 1-3; 0 and 4 are warm-ups
    for stem in PREDICTION_STEMS[:3]:
        assert not math.isnan(before[stem]) and inside[stem] == pytest.approx(before[stem], rel=1e-9), stem


def test_an_attempt_killed_in_its_first_epoch_s_validation_is_redone_by_the_next():
    """Attempt 1 resumes after epoch 1 and is killed in the validation inside epoch 2 (its partial
    records); attempt 2 first evaluates the checkpoint of epoch 1, then (attempt 3) trains on from
    it. Epoch 2 is attempt 3's alone, epoch 1 still attempt 0's."""
    run = Sequence()
    for epoch in range(2):
        run.epoch(0, epoch, TRAIN_J[epoch], nested_validation_j=150.0, validation_j=0.0)
    run.add(1, "validation", 2, 90.0, partial=True)
    run.add(1, "train", 2, 700.0, partial=True)
    run.add(2, "validation", 1, 150.0)
    run.add(2, "other", 1, 30.0)
    for epoch in range(2, 5):
        run.epoch(3, epoch, 1000.0, nested_validation_j=150.0, validation_j=0.0)
    ledger = ledger_of(run.records)
    assert costs(ledger)[1] == (0, False, 1250.0, True, 1150.0)
    assert costs(ledger)[2] == (3, True, 1250.0, True, 1150.0)
    assert ledger.stats.n == 2  # epochs 1 and 3


def test_a_call_after_the_training_in_its_process_bills_no_epoch_and_leaves_the_resume_s_prediction():
    """Regression: an evaluate() after train() in one process (HF) is of the attempt that trained,
    at its last epoch: billed to that epoch, it was priced into every epoch left by a resume's
    predictions once that epoch was complete. Its records say so (``later_call``): in the totals
    only, live and replayed by a resume alike."""
    run, without = Sequence(), Sequence()
    for seq in (run, without):
        for epoch in range(3):
            seq.epoch(0, epoch, TRAIN_J[epoch])
    later = [("other", None, 40.0), ("validation", 2, 600.0), ("other", 2, 30.0), ("test", 2, 300.0), ("other", 2, 20.0)]
    for phase, epoch, joules in later:
        run.add(0, phase, epoch, joules, later_call=True)
    later_kwh = sum(joules for *_, joules in later) * J
    for seq in (run, without):
        seq.add(1, "other", None, 50.0)
    checked = 0
    for epoch in range(3, PLANNED):
        for seq in (run, without):
            seq.epoch(1, epoch, TRAIN_J[epoch])
        at_end = [i for i, r in enumerate(run.records) if r.phase == "train" and r.epoch == epoch][0] + 1
        at_end_without = [i for i, r in enumerate(without.records) if r.phase == "train" and r.epoch == epoch][0] + 1
        ledger, reference = ledger_of(run.records[:at_end]), ledger_of(without.records[:at_end_without])
        assert costs(ledger) == costs(reference), epoch
        predicted, expected = predict(ledger, PLANNED), predict(reference, PLANNED)
        for stem in PREDICTION_STEMS[:3]:
            checked += 1
            assert predicted[stem] == pytest.approx(expected[stem] + later_kwh, rel=1e-9), (epoch, stem)
    assert checked == 3 * 4  # known from epoch 3 on: epochs 1 and 2 complete, 0 and 3 the warm-ups
    replayed = Ledger("r")
    replayed.resume({"run_id": "r"}, run.records)
    assert costs(replayed) == costs(ledger_of(run.records))
    assert replayed.stats.state() == pytest.approx(ledger_of(without.records).stats.state(), rel=1e-12)


def test_a_record_says_it_is_after_the_training_only_when_it_is_and_reads_back_so(tmp_path):
    """Written only when true: every other record's line is as it was, and reads back as before."""
    from greencallbacks.records import RecordWriter, read_records

    seq = Sequence()
    seq.add(0, "train", 0, 100.0)
    seq.add(0, "test", 0, 50.0, later_call=True)
    plain, after = (r.to_dict() for r in seq.records)
    assert "later_call" not in plain and after["later_call"] is True
    writer = RecordWriter(tmp_path / "energy-records.jsonl")
    writer.write(*seq.records)
    writer.close()
    assert [r.later_call for r in read_records(tmp_path)] == [False, True]
    with pytest.raises(TypeError, match="later_call"):
        Record.from_dict({**after, "later_call": "yes"})


# ------------------------------------------------------------------ through the tracker
def _tracker(tmp_path, clock, sensor, state=None) -> Tracker:
    tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    if state is not None:
        tracker.load_state_dict(state)
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    tracker.planned_epochs = 8
    return tracker


def _lightning_epochs(tracker, clock, epochs) -> list[float]:
    """Epochs of 10 s of training at 100 W with a 2-s validation inside each at its end (Lightning's
    place for it), then a 1-s gap; the prediction at each training end."""
    predicted = []
    for epoch in epochs:
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.begin("validation", epoch)
        clock.advance(2.0)
        tracker.end("validation")
        tracker.end("train")
        predicted.append(tracker.prediction()["energy_kwh_predicted"])
        clock.advance(1.0)
    return predicted


def test_a_resume_bills_an_epoch_s_inner_validation_before_its_training_end_as_measured(tmp_path):
    """Regression: a resume replayed the records by ``seq``, taken as a phase begins: the validation
    inside an epoch came after its training record, so each earlier epoch's tail (what follows the
    training end, priced once more at every prediction) held the validation, 300 J where it is the
    100-J gap. Each prediction of the resumed attempt said 150 J to 200 J too much."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    first = _tracker(tmp_path, clock, sensor)
    _lightning_epochs(first, clock, range(4))
    live = first.ledger.stats.state()
    state = first.state_dict()
    first.finish()
    resumed = _tracker(tmp_path, clock, sensor, state)
    assert resumed.ledger.stats.state() == pytest.approx(live, rel=1e-12)
    predicted = _lightning_epochs(resumed, clock, range(4, 7))
    totals = []  # what each prediction knew: the total at the training end, then its 1-s gap and the epochs left
    resumed.finish()
    records = read_run_records(resumed.run_id, [tmp_path])
    for epoch in range(4, 7):
        at_end = next(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == epoch and r.attempt == 1)
        totals.append(sum(r.energy_kwh for r in records[:at_end + 1]))
    assert predicted == pytest.approx([t + (100.0 + (7 - e) * 1300.0) * J for t, e in zip(totals, range(4, 7))],
                                      rel=1e-9)


def _epochs_saving(tracker, clock, epochs, save_at: str | None = None, save_epoch: int | None = None) -> dict | None:
    """Epochs of 10 steps (1 s, 100 J each) with a 2-s validation inside each, after step 5
    (``save_at="inside"``) or at its end, then a 1-s gap; the tracker's state saved in epoch
    ``save_epoch``: right after that validation (a Lightning checkpoint at the validation end,
    the training phase still open), or in the gap after the epoch (``save_at="gap"``: HF, Keras)."""
    saved = None
    for epoch in epochs:
        tracker.begin("train", epoch)
        steps_before = 5 if save_at == "inside" else 10
        clock.advance(float(steps_before))
        tracker.begin("validation", epoch)
        clock.advance(2.0)
        tracker.end("validation", step=10 * epoch + steps_before)
        if epoch == save_epoch and save_at in ("inside", "end"):
            saved = tracker.state_dict()
        clock.advance(10.0 - steps_before)
        tracker.end("train", step=10 * epoch + 10)
        clock.advance(1.0)
        if epoch == save_epoch and save_at == "gap":
            saved = tracker.state_dict()
    return saved


@pytest.mark.parametrize("save_at, epochs_left", [("gap", 5), ("end", 5), ("inside", 6)])
def test_a_resume_from_an_older_checkpoint_predicts_from_the_checkpoint_s_epoch_as_it_starts(tmp_path, save_at,
                                                                                              epochs_left):
    """Regression: epochs 0-5 of 8 trained, then a resume from a checkpoint of epoch 2 (a branch;
    or checkpoints every few epochs and a crash after the last): until the resumed attempt's first
    training end, the prediction counted the epochs left after epoch 5 (2 of 1,300 J) where the
    framework trains on after epoch 2 (5), or inside it (6, the checkpoint saved inside epoch 2:
    its validation ended at step 25 of 30). A budget checked as the resumed fit starts (and the
    values at its step logs) saw 3 epochs fewer than the run would train."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    first = _tracker(tmp_path, clock, sensor)
    checkpoint = _epochs_saving(first, clock, range(6), save_at, save_epoch=2)
    first.finish()
    resumed = _tracker(tmp_path, clock, sensor, checkpoint)
    spent = resumed.total_energy_j / 3.6e6
    # The tail of the last epoch trained before the checkpoint is billed already (its gap, 100 J).
    assert resumed.prediction()["energy_kwh_predicted"] == pytest.approx(spent + epochs_left * 1300.0 * J, rel=1e-9)
    resumed.finish()


def _hf_epochs(tracker, clock, epochs) -> list[float]:
    """HF's order: 10 s of training at 100 W, a 1-s gap, a 2-s evaluation at that epoch, a 1-s gap;
    the prediction at each training end."""
    predicted = []
    for epoch in epochs:
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.end("train", step=10 * epoch + 10)
        predicted.append(tracker.prediction()["energy_kwh_predicted"])
        clock.advance(1.0)
        tracker.begin("validation", epoch)
        clock.advance(2.0)
        tracker.end("validation")
        clock.advance(1.0)
    return predicted


def test_an_evaluation_after_the_training_bills_no_epoch_live_nor_when_a_resume_replays_it(tmp_path):
    """Three epochs, the tracker started again for an evaluation at the last epoch (HF's evaluate()
    after train(): 7 s, 700 J), then a resume to 8 epochs. Its predictions are those of the run
    without that evaluation plus its 700 J; the resume re-derives the ledger the evaluation left.
    Before, its 650 J at epoch 2 went into that epoch's cost: each prediction 130 J to 1,625 J high
    (12 % at the first)."""
    predictions = {}
    for name in ("plain", "evaluated"):
        clock = FakeClock()
        sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
        first = _tracker(tmp_path / name, clock, sensor)
        _hf_epochs(first, clock, range(3))
        state = first.state_dict()  # HF's checkpoint, in the gap after the epoch
        first.finish()
        if name == "evaluated":
            first.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
            clock.advance(0.5)
            first.begin("validation", 2)
            clock.advance(6.0)
            first.end("validation")
            clock.advance(0.5)
            first.finish()
            said = [getattr(r, "later_call", None) for r in first.records][-4:]
            live = costs(first.ledger), first.ledger.stats.state()
        resumed = _tracker(tmp_path / name, clock, sensor, state)
        if name == "evaluated":
            assert costs(resumed.ledger) == live[0]
            assert resumed.ledger.stats.state() == pytest.approx(live[1], rel=1e-12)
        predictions[name] = _hf_epochs(resumed, clock, range(3, 8))
        resumed.finish()
    assert predictions["evaluated"] == pytest.approx([p + 700.0 * J for p in predictions["plain"]], rel=1e-9)
    assert all(not math.isnan(p) for p in predictions["plain"])
    assert said == [False, True, True, True]  # the gap after the training, then the evaluation's gap, phase, gap


# ------------------------------------------------------------------ a real HF Trainer
@pytest.mark.slow
def test_hf_an_evaluate_after_a_resume_that_trained_nothing_leaves_the_prediction_of_the_next_resume(tmp_path):
    """The finding, as run: train() 2 epochs; train(resume_from_checkpoint=True) with nothing left
    and evaluate(); then a resume to 6 epochs. Its predictions are those of its records without the
    middle attempt's (plus that attempt's energy, in the total), and known from epoch 4 on; the
    middle attempt cost epoch 1 and left them NaN at epoch 4."""
    pytest.importorskip("transformers")
    from tests.test_hf_everyday import make_trainer, new_callback

    out = tmp_path / "out"
    first = new_callback()
    make_trainer(out, first, save_strategy="epoch").train()
    middle = new_callback()
    evaluating = make_trainer(out, middle, save_strategy="epoch")
    evaluating.train(resume_from_checkpoint=True)
    evaluating.evaluate()
    last = new_callback()
    trainer = make_trainer(out, last, save_strategy="epoch", num_train_epochs=6)
    trainer.train(resume_from_checkpoint=True)
    records = read_run_records(last.tracker.run_id, [out])
    assert {r.attempt for r in records} == {0, 1, 2} and {r.epoch for r in records if r.attempt == 1} <= {None, 1}
    assert not [r for r in records if r.attempt == 1 and r.phase == "train"]
    middle_kwh = sum(r.energy_kwh for r in records if r.attempt == 1)
    logged = [e["energy_kwh_predicted"] for e in trainer.state.log_history if "energy_kwh_predicted" in e]
    # Logged once known: two complete epochs after each attempt's warm-up (epochs 1 and 3, complete
    # once epoch 4 has trained); the middle attempt had cost epoch 1, and the one at epoch 4 with it.
    assert len(logged) == 2
    for epoch, value in zip((4, 5), logged):
        at_end = next(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == epoch and r.attempt == 2) + 1
        ledger = ledger_of(records[:at_end])
        reference = ledger_of([r for r in records[:at_end] if r.attempt != 1])
        assert costs(ledger) == costs(reference), epoch
        assert value == pytest.approx(predict(reference, 6)["energy_kwh_predicted"] + middle_kwh, rel=1e-9), epoch



@pytest.mark.slow
def test_hf_an_evaluate_after_train_leaves_the_prediction_of_the_resume(tmp_path):
    """train() 3 epochs, evaluate() on that Trainer, then a resume to 6 epochs. The evaluate() ran at
    HF's last epoch (2), in the attempt that trained it, and was billed to it: each prediction of
    the resume priced it into every epoch left (the first 0.4 % to 8 % high in runs here). Its records now say
    ``later_call``, and the predictions are those of the records without them (plus their energy)."""
    pytest.importorskip("transformers")
    from greencallbacks.report.data import inference_after_training
    from tests.test_hf_everyday import make_trainer, new_callback

    out = tmp_path / "out"
    trainer = make_trainer(out, new_callback(), save_strategy="epoch", num_train_epochs=3)
    trainer.train()
    trainer.evaluate()
    last = new_callback()
    resumed = make_trainer(out, last, save_strategy="epoch", num_train_epochs=6)
    resumed.train(resume_from_checkpoint=True)
    records = read_run_records(last.tracker.run_id, [out])
    later = inference_after_training(records)  # the evaluate() call's: the report's rule for records of before
    after = [r for r in records if (r.run_id, r.attempt, r.seq) in later]
    assert [(r.attempt, r.phase, r.epoch) for r in after] == [(0, "other", None), (0, "validation", 2), (0, "other", 2)]
    after_kwh = sum(r.energy_kwh for r in after)
    logged = [e["energy_kwh_predicted"] for e in resumed.state.log_history if "energy_kwh_predicted" in e]
    assert len(logged) == 3  # known from epoch 3: epochs 1 and 2 complete
    for epoch, value in zip((3, 4, 5), logged):
        at_end = next(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == epoch and r.attempt == 1) + 1
        reference = ledger_of([r for r in records[:at_end] if r not in after])
        assert value == pytest.approx(predict(reference, 6)["energy_kwh_predicted"] + after_kwh, rel=1e-9), epoch
    assert [r for r in records if r.later_call] == after


# ------------------------------------------------------------------ a real Lightning Trainer
@pytest.mark.slow
def test_lightning_a_checkpoint_validated_in_a_later_session_leaves_the_prediction_of_the_fit_resumed_from_it(tmp_path):
    """fit() 3 epochs (validation inside each); validate(ckpt_path=...) in a later session (a fresh
    Trainer: its records at the checkpoint's epochs run, 3, the epoch the resume trains next); then
    a fit resumed from that checkpoint to 7 epochs. Each
    prediction the resumed fit logs is its records' without the validating attempt's (plus its
    energy). Before, that attempt cost epoch 0, and the resume replayed the first fit's validations
    after their epochs' training ends, so its predictions priced them twice (in the mean tail)."""
    pytest.importorskip("torch")
    import csv

    from tests.lightning_models import batches_run, flavour, loaders
    from tests.test_lightning_everyday import energy_callback, saving_trainer

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    checkpoint = tmp_path / "ckpt-first" / "last.ckpt"
    saving_trainer(L, tmp_path, energy_callback(EnergyCallback), "first", batches_run(L), max_epochs=3).fit(
        TinyModel(), *loaders())
    validating = saving_trainer(L, tmp_path, energy_callback(EnergyCallback), "validating", batches_run(L))
    validating.validate(TinyModel(), loaders()[1], ckpt_path=checkpoint, verbose=False)
    callback = energy_callback(EnergyCallback)
    resumed = saving_trainer(L, tmp_path, callback, "resumed", batches_run(L), max_epochs=7)
    resumed.fit(TinyModel(), *loaders(), ckpt_path=checkpoint)
    records = read_run_records(callback.tracker.run_id, [tmp_path / "first" / "version_0"])
    assert sorted({r.attempt for r in records}) == [0, 1, 2]
    assert {(r.phase, r.epoch) for r in records if r.attempt == 1} <= {("validation", 3), ("other", 3), ("other", None)}
    middle_kwh = sum(r.energy_kwh for r in records if r.attempt == 1)
    rows = csv.DictReader((Path(resumed.logger.log_dir) / "metrics.csv").open())
    logged = {int(row["epoch"]): float(row["energy_kwh_predicted"]) for row in rows if row.get("energy_kwh_predicted")}
    assert sorted(logged) == [3, 4, 5, 6]  # known once epochs 1 and 2 are complete
    for epoch, value in logged.items():
        at_end = next(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == epoch and r.attempt == 2) + 1
        reference = ledger_of([r for r in records[:at_end] if r.attempt != 1])
        assert value == pytest.approx(predict(reference, 7)["energy_kwh_predicted"] + middle_kwh, rel=1e-9), epoch


@pytest.mark.slow
def test_lightning_a_test_after_fit_leaves_the_prediction_of_the_fit_resumed_from_last(tmp_path):
    """fit() 3 epochs, test() on that Trainer, then fit(ckpt_path="last") to 6 epochs on a new
    Trainer. The test's records say ``later_call`` and bill no epoch; the resumed fit's
    predictions are those of the records without them (plus their energy). (Lightning stamps the
    test with ``max_epochs``, an epoch the resume trains itself: its predictions held before too.)"""
    pytest.importorskip("torch")
    import csv

    from greencallbacks.report.data import inference_after_training
    from tests.lightning_models import batches_run, flavour, loaders
    from tests.test_lightning_everyday import energy_callback, saving_trainer

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    first = saving_trainer(L, tmp_path, energy_callback(EnergyCallback), "first", batches_run(L), max_epochs=3)
    first.fit(TinyModel(), *loaders())
    first.test(first.lightning_module, loaders()[1], verbose=False)
    callback = energy_callback(EnergyCallback)
    resumed = saving_trainer(L, tmp_path, callback, "first", batches_run(L), max_epochs=6)
    resumed.fit(TinyModel(), *loaders(), ckpt_path="last")
    records = read_run_records(callback.tracker.run_id, [tmp_path / "first" / "version_0"])
    after = [r for r in records if r.later_call]
    assert [(r.attempt, r.phase, r.epoch) for r in after] == [(0, "other", None), (0, "test", 3), (0, "other", 3)]
    assert inference_after_training(records) == {(r.run_id, r.attempt, r.seq) for r in after}
    after_kwh = sum(r.energy_kwh for r in after)
    rows = csv.DictReader((Path(resumed.logger.log_dir) / "metrics.csv").open())
    logged = {int(row["epoch"]): float(row["energy_kwh_predicted"]) for row in rows if row.get("energy_kwh_predicted")}
    assert sorted(logged) == [3, 4, 5]
    for epoch, value in logged.items():
        at_end = next(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == epoch and r.attempt == 1) + 1
        reference = ledger_of([r for r in records[:at_end] if not r.later_call])
        assert value == pytest.approx(predict(reference, 6)["energy_kwh_predicted"] + after_kwh, rel=1e-9), epoch
