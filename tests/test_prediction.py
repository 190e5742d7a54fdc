"""The whole-run prediction: exact at the last epoch, and its 95 % interval covers the truth.

Runs are simulated on the core tracker with a scripted sensor on a fake clock: every epoch has a
training phase, a validation phase and a gap, each of random length (noisy epochs), plus a slow
first epoch (warm-up). The truth is the run's total once its last epoch's tail is over.
"""

from __future__ import annotations

import math
import random

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

EPOCHS = 10


def simulate(rng: random.Random, *, tail_after_train: bool = True):
    """One run: (predictions made at each epoch end, the run's true total in kWh)."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=200.0)
    tracker = Tracker(carbon=Carbon(intensity=100.0))
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    tracker.planned_epochs = EPOCHS
    predictions = []
    for epoch in range(EPOCHS):
        tracker.begin("train", epoch)
        clock.advance(rng.gauss(10.0, 1.5) + (20.0 if epoch == 0 else 0.0))
        if not tail_after_train:  # Lightning: validation inside the epoch, before its end
            tracker.begin("validation", epoch)
            clock.advance(max(0.0, rng.gauss(2.0, 0.5)))
            tracker.end("validation")
        tracker.end("train")
        predictions.append(tracker.metrics("train"))
        if tail_after_train:  # HF: evaluation and checkpoint after the epoch's end
            tracker.begin("validation", epoch)
            clock.advance(max(0.0, rng.gauss(2.0, 0.5)))
            tracker.end("validation")
        clock.advance(max(0.0, rng.gauss(1.0, 0.3)))  # the gap: checkpoint, logging
    tracker.finish()
    return predictions, tracker.total_energy_j / 3.6e6


@pytest.mark.parametrize("tail_after_train", [True, False])
def test_the_interval_covers_the_final_total_at_least_90_percent_of_the_time(tail_after_train):
    rng = random.Random(20261201)
    covered = total = 0
    for _ in range(200):
        predictions, truth = simulate(rng, tail_after_train=tail_after_train)
        for p in predictions:
            if p["energy_kwh_predicted"] == p["energy_kwh_predicted"]:  # not NaN
                total += 1
                covered += p["energy_kwh_predicted_low"] <= truth <= p["energy_kwh_predicted_high"]
    assert total > 200 * (EPOCHS - 4)
    assert covered / total >= 0.90, f"coverage {covered / total:.3f} over {total} predictions"


def test_at_the_last_epoch_the_prediction_is_the_total_plus_the_expected_tail():
    rng = random.Random(7)
    predictions, truth = simulate(rng)
    last = predictions[-1]
    # Only the last epoch's evaluation and gap are still to come: a few percent of one epoch.
    assert last["energy_kwh_predicted"] == pytest.approx(truth, rel=0.01)
    assert last["energy_kwh_predicted_low"] <= truth <= last["energy_kwh_predicted_high"]


def test_a_resumed_run_predicts_from_its_records_not_twice_the_total(tmp_path):
    """Keras ``initial_epoch=`` / a resume in a new process: finished epochs come back from the records."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)

    def start(state=None):
        tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
        if state is not None:
            tracker.load_state_dict(state)
        tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
        tracker.planned_epochs = 6
        return tracker

    first = start()
    for epoch in range(3):
        first.begin("train", epoch)
        clock.advance(10.0)
        first.end("train")
        clock.advance(1.0)
    first.finish()
    second = start(first.state_dict())
    for epoch in range(3, 6):
        second.begin("train", epoch)
        clock.advance(10.0)
        second.end("train")
        last = second.metrics("train")
        clock.advance(1.0)
    second.finish()
    assert last["energy_kwh_predicted"] == pytest.approx(second.total_energy_j / 3.6e6, rel=1e-9)


def _constant_epochs(tracker, clock, epochs, epoch_s=10.0, gap_s=1.0):
    """Train ``epochs`` at constant power; the predictions made at each epoch's end."""
    predictions = []
    for epoch in epochs:
        tracker.begin("train", epoch)
        clock.advance(epoch_s)
        tracker.end("train")
        predictions.append(tracker.metrics("train")["energy_kwh_predicted"])
        clock.advance(gap_s)
    return predictions


def test_a_run_that_begins_at_a_later_epoch_predicts_only_the_epochs_it_will_run(tmp_path):
    """Regression: a second fit on one Lightning Trainer (epochs 3-8 of max_epochs=9), or Keras'
    ``initial_epoch=3`` with nothing to continue, is a new run of 6 epochs; the prediction counted
    9 - 6 finished = 3 epochs still to come at its last epoch, 1.5 times its total."""
    clock = FakeClock()
    tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    tracker.planned_epochs = 9
    predictions = _constant_epochs(tracker, clock, range(3, 9))
    tracker.finish()
    truth_kwh = tracker.total_energy_j / 3.6e6  # 6 epochs of 1,100 J (training, then the gap after it)
    assert truth_kwh == pytest.approx(6 * 1100.0 / 3.6e6, rel=1e-12)
    # Known once two epochs after the first (warm-up) are complete, then exact: constant epochs.
    assert predictions[3:] == pytest.approx([truth_kwh] * 3, rel=1e-9)


def test_a_resume_from_an_older_checkpoint_predicts_the_epochs_it_goes_back_to_redo(tmp_path):
    """Epochs 0-5 of 8 trained, then a resume from the checkpoint of epoch 2: epochs 3-7 run
    again. Counting finished epochs (the first attempt's 4 and 5 among them) left 2 to come after
    the redone epoch 3, where 4 remain."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)

    def start():
        tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
        tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
        tracker.planned_epochs = 8
        return tracker

    first = start()
    _constant_epochs(first, clock, range(3))
    checkpoint = first.state_dict()  # at the end of epoch 2
    _constant_epochs(first, clock, range(3, 6))
    first.finish()
    second = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    second.load_state_dict(checkpoint)
    second.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    second.planned_epochs = 8
    spent_kwh = second.total_energy_j / 3.6e6
    (after_epoch_3,) = _constant_epochs(second, clock, [3])
    epoch_kwh = 11.0 * 100.0 / 3.6e6
    # So far: both attempts and epoch 3's training again; to come: its gap, then epochs 4-7.
    assert after_epoch_3 == pytest.approx(spent_kwh + (1000.0 + 100.0) / 3.6e6 + 4 * epoch_kwh, rel=1e-9)


@pytest.mark.parametrize("planned_epochs", [100, None])
def test_a_step_limit_that_ends_the_run_inside_an_epoch_is_predicted_at_its_steps(tmp_path, planned_epochs):
    """Regression: Lightning's ``max_steps`` (or HF's, which also plans the epochs rounded up)
    ends the run inside an epoch, long before ``max_epochs``. With ``max_epochs=100`` the
    prediction priced 96 more epochs (14 times a real fit's total); with no epoch limit
    (``max_epochs=-1``, a data set without a length) it predicted nothing. The epochs left are
    now the steps left over the steps the last epoch took: here half an epoch."""
    clock = FakeClock()
    tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    tracker.planned_epochs, tracker.planned_steps = planned_epochs, 45
    predictions = []
    for epoch, steps in enumerate([10, 10, 10, 10, 5]):  # 10 steps of 1 s each epoch, then 1 s of gap
        tracker.begin("train", epoch)
        clock.advance(float(steps))
        tracker.end("train", step=10 * epoch + steps)
        predictions.append(tracker.metrics("train")["energy_kwh_predicted"])
        clock.advance(1.0)
    tracker.finish()
    truth_kwh = tracker.total_energy_j / 3.6e6
    assert truth_kwh == pytest.approx((4 * 1100.0 + 600.0) / 3.6e6, rel=1e-12)
    # From epoch 3 on (two complete epochs after warm-up). At its end, 4,300 J so far, the gap to
    # come (100 J) and half an epoch priced as half of a whole one, its gap included (550 J):
    # 50 J short of the half epoch's whole gap. At the last epoch's end, exact.
    assert all(math.isnan(p) for p in predictions[:3])  # not yet known
    assert predictions[3:] == pytest.approx([4950.0 / 3.6e6, truth_kwh], rel=1e-9)


def test_steps_per_epoch_survive_a_checkpoint_without_records(tmp_path):
    """A resume whose records file is gone falls back on the checkpoint's epochs: their steps come with them."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    first = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path / "first")
    first.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    for epoch in range(3):
        first.begin("train", epoch)
        clock.advance(10.0)
        first.end("train", step=10 * (epoch + 1))
    state = first.state_dict()
    first.finish()
    second = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path / "elsewhere")
    second.load_state_dict(state)
    second.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    assert (second.ledger.steps_per_epoch, second.ledger.last_finished_step) == (10, 30)
    second.finish()


def test_a_time_limit_bounds_the_epochs_left_at_the_mean_epoch_time(tmp_path):
    """Regression: Lightning's ``max_time`` (a Timer) ends a fit of ``max_epochs=1000`` after the
    epochs that fit in it; the prediction priced all 1000 (7 times a real fit's total), enough for
    a budget's predicted stop. The seconds left are now priced at the mean wall time of an epoch."""
    clock = FakeClock()
    tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    deadline = clock() + 49.5  # 4.5 epochs of 11 s (10 s of training, 1 s of gap)
    tracker.planned_epochs, tracker.seconds_left = 1000, lambda: deadline - clock()
    predictions = _constant_epochs(tracker, clock, range(4))
    tracker.finish()
    # At the end of epoch 3's training (43 s in): 6.5 s left, of which the epoch's 1-s gap (its
    # tail, priced apart), then 5.5 s: half an 11-s epoch. 4,300 J + 100 J + 550 J, which is
    # exactly what runs until the deadline (4 epochs and 5.5 s of training at 100 W).
    assert all(math.isnan(p) for p in predictions[:3])
    assert predictions[3] == pytest.approx((4 * 1100.0 + 550.0) / 3.6e6, rel=1e-9)


def test_carbon_aware_pauses_are_no_cost_of_the_epochs_left(tmp_path):
    """A 600 s pause at 100 W before each of epochs 1-3 of 10, within its allowance: the forecast
    priced every epoch left with a pause (0.167 kWh for a run that ended at 0.067), and a budget of
    0.1 kWh stopped the run on it. An epoch's own cost is 1,100 J (10 s of training, a 1 s gap)."""
    clock = FakeClock()
    tracker = Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path)
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    tracker.planned_epochs = 10
    for epoch in range(4):
        if epoch:
            clock.advance(600.0)  # the pause, in the gap before this epoch
            tracker.add_pause(600.0)
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.end("train")
        predicted = tracker.metrics("train")["energy_kwh_predicted"]
        clock.advance(1.0)
    so_far = 4 * 1000.0 + 3 * (100.0 + 60_000.0)  # what epoch 3's end had billed
    # Its gap and the 6 epochs left at their own cost; the pauses made are in, none is assumed to come.
    assert predicted * 3.6e6 == pytest.approx(so_far + 100.0 + 6 * 1100.0, rel=1e-9)
    tracker.finish()


# ----------------------------------------------- CO2eq priced at the intensity series ahead
WALL = 1.7e9  # the fake wall clock: the scripted clock plus this


def _series_file(tmp_path, pieces, step_s=1.0):
    """A CSV series of (seconds from the run's start, g/kWh) pieces, one row a second up to the last piece's end."""
    start = FakeClock()() + WALL
    rows = ["timestamp,gco2eq_per_kwh"]
    for (begin, end), value in pieces:
        rows += [f"{start + t:.0f},{value}" for t in range(int(begin), int(end), int(step_s))]
    path = tmp_path / "series.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _series_run(tmp_path, series, budget, epochs=10, intensity=None):
    """Epochs of 4 s at 3600 W (0.004 kWh) with a 1-s gap, judged and logged at each epoch end as
    the adapters do. Returns the session, the logged values and the budget warnings."""
    import warnings

    from greencallbacks.session import EnergySession

    clock = FakeClock()
    session = EnergySession(series=series, intensity=intensity, pue=1.0, output_dir=tmp_path / "energy", budget=budget,
                            embodied=False)
    session.tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=3600.0)], fallback=None, clock=clock,
                                wall_clock=lambda: clock() + WALL))
    session.tracker.planned_epochs = epochs
    logged, said = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(epochs):
            session.tracker.begin("train", epoch)
            clock.advance(4.0)
            session.tracker.end("train")
            stop = session.check_budget()
            logged.append(session.metrics("train"))
            if stop:
                break
            clock.advance(1.0)
    said = [str(w.message) for w in caught if "budget" in str(w.message)]
    session.stop()
    return session, logged, said


def test_a_co2eq_budget_is_judged_on_the_series_ahead_not_on_the_past_mean_intensity(tmp_path):
    """Regression: 1000 g/kWh for the first 17 s, then 10 g/kWh. At epoch 3's end (19 s in) the run
    had used 17.0 g and would end at 17.3 g, but the rest was priced at its past mean intensity
    (~900 g/kWh): 44.8 g, and a 20-g budget stopped it after 4 of 10 epochs."""
    from greencallbacks.budget import Budget

    series = _series_file(tmp_path, [((-60, 17), 1000), ((17, 600), 10)])
    session, logged, said = _series_run(tmp_path, series, Budget(co2eq_g=20.0, on_exceed="stop", warn_at=None))
    total = session.tracker.total_co2eq_g
    assert len(logged) == 10 and said == [] and not session.budget.stopped
    assert total == pytest.approx(0.017 * 1000 + 0.033 * 10)  # 17 Wh before the drop, 33 Wh after
    first = next(i for i, values in enumerate(logged) if not math.isnan(values["co2eq_g_predicted"]))
    assert first == 3
    for values in logged[first:]:  # energy is exact here, so is the CO2eq ahead
        assert values["co2eq_g_predicted"] == pytest.approx(total, rel=1e-9)
    assert "co2eq_g_predicted_low" not in logged[-1]  # the logged keys are the documented ones


def test_a_constant_intensity_keeps_the_past_mean_prediction(tmp_path):
    from greencallbacks.budget import Budget

    _, logged, _ = _series_run(tmp_path, None, Budget(co2eq_g=1000.0), epochs=5, intensity=100.0)
    assert logged[-1]["co2eq_g_predicted"] == pytest.approx(logged[-1]["energy_kwh_predicted"] * 100.0, rel=1e-12)


def test_past_the_series_end_the_forecast_is_said_to_be_extrapolated(tmp_path):
    # The series ends 22 s in; the rest of the run is priced at its last value, held, and the
    # budget's message says so.
    from greencallbacks.budget import Budget

    series = _series_file(tmp_path, [((-60, 17), 1000), ((17, 22), 10)])
    _, _, said = _series_run(tmp_path, series, Budget(co2eq_g=17.2, on_exceed="stop", warn_at=None))
    assert len(said) == 1 and "predicted co2eq_g 17.33 g" in said[0] and "exceeds the budget of 17.2 g" in said[0]
    assert "priced at the intensity series ahead, extrapolated past its data" in said[0]
    assert said[0].endswith("stopping training")


def _uneven_run():
    """Epochs of 3 and 5 s of training in turn, at 3600 W (1 Wh a second), each with a 1-s gap; 8
    of 12 done. At the end of epoch 7's training (39 s in), what is ahead: its 1-s gap, then 4
    epochs of a mean 5 Wh and 5 s, 21 Wh in 21 s; the energy's interval, about 14-28 Wh."""
    clock = FakeClock()
    tracker = Tracker(carbon=Carbon(intensity=100.0))
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=3600.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + WALL))
    tracker.planned_epochs = 12
    for epoch in range(8):
        if epoch:
            clock.advance(1.0)
        tracker.begin("train", epoch)
        clock.advance(3.0 if epoch % 2 == 0 else 5.0)
        tracker.end("train")
    assert clock() - FakeClock()() == 39.0
    return tracker, tracker.prediction()


def _two_step_series(drop_at_s: float):
    from greencallbacks.carbon import IntensitySeries

    start = FakeClock()() + WALL
    return IntensitySeries(times_unix=(start - 60, start + drop_at_s, start + 600), values_g_per_kwh=(500.0, 50.0, 50.0),
                           name="two-step")


def test_the_time_the_rest_takes_is_uncertain_and_the_interval_says_so():
    """A drop of the intensity from 500 to 50 g/kWh just after the expected end of the run (60 s):
    the central forecast pays 500 throughout, but a run that takes as long as its energy's upper
    bound reaches the cheap hours, so the interval's low end is below 500 g/kWh's."""
    from greencallbacks.prediction import priced_by_series

    tracker, prediction = _uneven_run()
    so_far_kwh, so_far_g = tracker.total_energy_j / 3.6e6, tracker.total_co2eq_g
    ahead = {end: prediction[f"energy_kwh_predicted{end}"] - so_far_kwh for end in ("", "_low", "_high")}
    assert ahead[""] == pytest.approx(0.021) and 0.01 < ahead["_low"] < ahead["_high"] < 0.03

    constant = priced_by_series(prediction, tracker.ledger, _two_step_series(300))  # 500 all along
    for end in ("", "_low", "_high"):
        assert constant[f"co2eq_g_predicted{end}"] == pytest.approx(so_far_g + ahead[end] * 500.0, rel=1e-9)

    after = priced_by_series(prediction, tracker.ledger, _two_step_series(62))
    assert after["co2eq_g_predicted"] == pytest.approx(so_far_g + ahead[""] * 500.0, rel=1e-9)
    assert after["co2eq_g_predicted_high"] == pytest.approx(so_far_g + ahead["_high"] * 500.0, rel=1e-9)
    assert after["co2eq_g_predicted_low"] < so_far_g + ahead["_low"] * 500.0 - 1e-3

    before = priced_by_series(prediction, tracker.ledger, _two_step_series(58))  # inside the central 21 s
    assert before["co2eq_g_predicted"] == pytest.approx(so_far_g + ahead[""] * (19 * 500.0 + 2 * 50.0) / 21, rel=1e-9)
    assert before["co2eq_g_predicted_high"] == pytest.approx(so_far_g + ahead["_high"] * 500.0, rel=1e-9)
    assert before["co2eq_g_predicted_extrapolated"] == 0.0
    assert math.isnan(priced_by_series({k: math.nan for k in prediction}, tracker.ledger, _two_step_series(58))["co2eq_g_predicted"])
    tracker.finish()
