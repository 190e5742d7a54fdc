"""The run's totals as logged (``energy_kwh_total``, ``co2eq_g_total``) never go back within a run
while its energy never does: a step value (``Tracker.live``, at the frameworks' logging steps) and
the epoch's total after it (``Tracker.metrics("train")``, as all three adapters log them).

The two are the same joules summed in other orders: a step value adds the open phases' parts to
the ledger's totals, the epoch's end closes those parts into records, each rounded through kWh
and added to its phase's total, and the run's total is the sum of the phases'. With nothing spent
in between (a step logged at the epoch's last batch, on a counter that had not moved: NVML's
update every 100 ms), the epoch's total came out one float ulp below the step value just before
it (0.0027175314498869784 after 0.002717531449886979 kWh), in 236 of 500 random runs.

Randomized on a fake clock with two scripted sensors; more seeds with GC_NEVER_BACK_SEEDS=N.
"""

from __future__ import annotations

import math
import os
import random

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.sensors.base import Kind
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

SEEDS = int(os.environ.get("GC_NEVER_BACK_SEEDS", "0")) or 300
TOTALS = ("energy_kwh_total", "co2eq_g_total")


def logged_totals(seed: int) -> tuple[list[tuple[str, dict]], Tracker]:
    """A run of random epochs (validations inside, gaps between, powers changing), with step values
    at random batches and at the epoch's last batch; what was logged, in order, and its tracker."""
    rng = random.Random(seed)
    clock, wall = FakeClock(rng.uniform(0.0, 1e4)), FakeClock(1.7e9)

    def advance(seconds: float) -> None:
        clock.advance(seconds)
        wall.advance(seconds)

    sensors = [ScriptedSensor("gpu0", clock, rng.uniform(1.0, 700.0)),
               ScriptedSensor("cpu", clock, rng.uniform(1.0, 200.0), kind=Kind.CPU)]
    tracker = Tracker(carbon=Carbon(intensity=rng.uniform(10.0, 900.0), pue=rng.choice([1.0, 1.1, 1.37, 1.58])))
    tracker.start(Meter(sensors, clock=clock, wall_clock=wall))
    logged = []
    for epoch in range(rng.randint(1, 4)):
        advance(rng.choice([0.0, rng.uniform(0.0, 0.3)]))
        tracker.begin("train", epoch)
        for _ in range(rng.randint(1, 12)):
            advance(rng.uniform(0.001, 1.0))
            for sensor in sensors:
                if rng.random() < 0.3:
                    sensor.set_power(rng.uniform(1.0, 700.0))
            if rng.random() < 0.15:
                tracker.begin("validation", epoch)
                advance(rng.uniform(0.01, 0.5))
                tracker.end("validation")
            if rng.random() < 0.5:
                logged.append(("step", tracker.live()))
        if rng.random() < 0.7:  # at the epoch's last batch: nothing spent until its end
            logged.append(("step", tracker.live()))
        tracker.end("train")
        logged.append((f"epoch {epoch}", tracker.metrics("train")))
    return logged, tracker


@pytest.mark.parametrize("seed", range(SEEDS))
def test_an_epochs_total_is_never_below_a_step_value_logged_before_it(seed):
    print(f"seed {seed}")
    logged, tracker = logged_totals(seed)
    for name in TOTALS:
        values = [(what, values[name]) for what, values in logged]
        for (before, earlier), (after, later) in zip(values, values[1:]):
            assert later >= earlier, (seed, name, f"{after} logged {later!r} after {before} {earlier!r}")
    # Still the records' totals, to the float: nothing but the order of the sums is at stake.
    epoch_end = logged[-1][1]
    assert epoch_end["energy_kwh_total"] * 3.6e6 == pytest.approx(tracker.total_energy_j, rel=1e-14, abs=0.0)
    assert epoch_end["co2eq_g_total"] == pytest.approx(tracker.total_co2eq_g, rel=1e-14, abs=0.0)
    assert all(math.isfinite(values[name]) for _, values in logged for name in TOTALS)
    tracker.finish()
