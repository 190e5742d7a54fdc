"""The epoch a GPU is lost in (NVML_ERROR_GPU_IS_LOST) where its power was not sampled.

Nothing reads a lost GPU on: its channel keeps its energy up to the loss. Where power samples
span the span from the counter's last read to the loss, they estimate it; without them (a driver
without the instantaneous-power field, or while that field fails) it was left out: 0.05-0.25 s of
the GPU's power, -29 J on average at 300 W (-4 to -45 J), and the epoch's stated uncertainty did
not cover it (over 200 seeds: 84 % of epochs beyond it at 300 W, by up to 91 times; 18-22 % on a
50/700 W load, up to 3.5 times). Now that span is estimated at the counter's last slope, labelled,
and stated as a bound: none beyond it (at most 0.97 times).

The fake NVML of ``tests/fakes/fake_pynvml.py`` (an H100's read latency) on a fake clock, its
counter read off the training thread by the meter's reader (``tests/fakes/spiky_gpu.py``).
"""

from __future__ import annotations

import random
import statistics
import warnings

import pytest

from tests.fakes import fake_pynvml as fp
from tests.fakes.spiky_gpu import spiky_gpu

SEEDS = range(40)
STEADY, SPIKY = (300.0,), (50.0, 700.0)


def _lost_epoch(seed: int, levels: tuple[float, ...], case: str):
    """(the 1 s epoch's GPU component, the GPU's true energy from its start to the loss); the GPU
    is lost 20-780 ms into it, which the reader finds before it ends."""
    clock, _, gpu, meter, run = spiky_gpu(seed, instant_field=case != "no field", levels=levels)
    into = 0.02 * random.Random(seed + 1000).randrange(1, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meter.snapshot(exact=True)
        run(3.0)  # past the counter's phase search
        if case == "field fails":
            gpu.instant_error = fp.NVML_ERROR_IRQ_ISSUE
            run(0.5)
        start = meter.snapshot()
        run(into)
        lost_at = clock()
        gpu.lose()
        run(1.0 - into)
        assert meter.channels[0].failed
        end = meter.snapshot()
    [component] = meter.between(start, end).components
    return component, gpu.energy_between_j(start.monotonic_s, lost_at)


@pytest.mark.parametrize("levels", [STEADY, SPIKY], ids=["300 W", "50-700 W"])
@pytest.mark.parametrize("case", ["no field", "field fails"])
def test_the_stated_uncertainty_covers_the_energy_up_to_the_loss(case, levels):
    """Before: beyond it in 84 % of epochs at 300 W (up to 91x), 18-22 % at 50/700 W (up to 3.5x).
    Now none over 200 seeds (at most 0.97x); the median stated is 21 J at 300 W (15 J before, for
    a median error of 29 J, 7.5 J now), 150 J at 50/700 W (70 J before)."""
    epochs = [_lost_epoch(seed, levels, case) for seed in SEEDS]
    ratios = [abs(c.energy_j - truth) / c.uncertainty_j for c, truth in epochs]
    share = sum(r > 1.0 for r in ratios) / len(ratios)
    assert share <= 0.02 and max(ratios) <= 1.2, (share, max(ratios))


@pytest.mark.parametrize("case", ["no field", "field fails"])
def test_a_steady_load_is_billed_up_to_the_loss_as_an_estimate(case):
    """The span to the loss is estimated at the counter's last slope, not left out: at 300 W the
    epoch was 29 J low on average (4-45 J); now 1 J high on average (-12 to +21 J), labelled."""
    epochs = [_lost_epoch(seed, STEADY, case) for seed in SEEDS]
    assert abs(statistics.mean(c.energy_j - truth for c, truth in epochs)) < 5.0
    assert all("stopped counting" in c.note and "estimated at" in c.note for c, _ in epochs)
