"""The stated uncertainty of windows whose boundaries were carried without power samples.

A GPU's energy counter steps every 100 ms; each boundary carries its latest update forward to the
boundary's time with the instantaneous power sampled since, or, where there is none (the field
failing for a while, or a GPU whose driver has no such field), with the counter's last slope.
That slope is the mean power of the last update period: on a load switching between 50 and 700 W
it is off by up to the swing (650 W) over the span carried, while the window's stated uncertainty
counted the window's mean power over that span. Over 1 s windows, 30-37 % came out further from
the true energy than stated, by up to 7.8 times the stated figure; with samples, none (0.72 times
at most). Each such boundary now states the span times the spread of the recent updates' power.

The fake NVML of ``tests/fakes/fake_pynvml.py`` (an H100's read latency) on a fake clock, its
counter read off the training thread by the meter's reader, stepped every 10 ms.
"""

from __future__ import annotations

import statistics
import warnings

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.tracker import Tracker
from tests.fakes import fake_pynvml as fp
from tests.fakes.spiky_gpu import spiky_gpu

J_PER_KWH = 3.6e6
SEEDS = range(6)


def _windows(case: str, seed: int) -> list[tuple[float, float, float, dict]]:
    """(|error| J, stated uncertainty J, energy J, end snapshot's slope errors) of 1 s windows."""
    clock, _, gpu, meter, run = spiky_gpu(seed, instant_field=case != "no field")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meter.snapshot(exact=True)
        run(3.0)  # past the counter's phase search
        if case == "field fails":
            gpu.instant_error = fp.NVML_ERROR_IRQ_ISSUE  # for the 5 s measured
        out = []
        for _ in range(5 if case == "field fails" else 10):
            a = meter.snapshot()
            run(1.0)
            b = meter.snapshot()
            window = meter.between(a, b)
            truth = gpu.energy_between_j(a.monotonic_s, b.monotonic_s)
            out.append((abs(window.energy_j - truth), window.uncertainty_j, window.energy_j,
                        getattr(b, "slope_error_j", {})))  # (none before it was stated)
    return out


@pytest.mark.parametrize("case", ["field fails", "no field", "sampling"])
def test_stated_uncertainty_covers_the_error_of_1_s_windows(case):
    """Before: the share of windows beyond their stated uncertainty, and the worst ratio, were
    30 % and 3.9x with the field failing, 37 % and 6.4x without the field; 0 % and 0.35x sampled.
    Now 0 % in each, at most 0.82x (over 40 seeds: at most 0.87x; 7.8x before)."""
    windows = [w for seed in SEEDS for w in _windows(case, seed)]
    share = sum(error > stated for error, stated, _, _ in windows) / len(windows)
    worst = max(error / stated for error, stated, _, _ in windows)
    assert share <= 0.02 and worst <= 1.2, (share, worst)


def test_sampled_windows_state_what_they_did():
    """Where power is sampled the boundaries carry no slope error: the stated uncertainty is as it
    was (a median of 11.8 % of a 1 s window's energy before and after; 32-35 % without samples)."""
    windows = [w for seed in SEEDS for w in _windows("sampling", seed)]
    assert not any(slope_error for _, _, _, slope_error in windows)
    assert statistics.median(stated / energy for _, stated, energy, _ in windows) < 0.13


@pytest.mark.parametrize("seed", range(3))
def test_records_of_a_gpu_without_the_field_state_their_error(seed):
    """The records a tracker writes carry it: each 1 s epoch's uncertainty_kwh covers its error
    against the GPU's true energy (before: beaten by up to 6.4 times)."""
    clock, _, gpu, meter, run = spiky_gpu(seed, instant_field=False)
    tracker = Tracker(carbon=Carbon(intensity=300.0, pue=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker.start(meter)
        run(3.0)
        ratios = []
        for epoch in range(10):
            begun = clock()
            tracker.begin("train", epoch)
            run(1.0)
            record = tracker.end("train")
            error_j = abs(record.it_energy_kwh * J_PER_KWH - gpu.energy_between_j(begun, clock()))
            ratios.append(error_j / (record.uncertainty_kwh * J_PER_KWH))
        tracker.finish()
    assert max(ratios) <= 1.2, ratios
