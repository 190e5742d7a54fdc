"""The whole-run prediction: exact at the last epoch, and its 95 % interval covers the truth.

Runs are simulated on the core tracker with a scripted sensor on a fake clock: every epoch has a
training phase, a validation phase and a gap, each of random length (noisy epochs), plus a slow
first epoch (warm-up). The truth is the run's total once its last epoch's tail is over.
"""

from __future__ import annotations

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
