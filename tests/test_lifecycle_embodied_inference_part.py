"""I's embodied part per sample is taken over the inference calls that carry a figure: a test call
made with embodied off (or on a GPU without a footprint) brought its samples but no grams, and
halved the per-inference embodied figure."""

from __future__ import annotations

import dataclasses

import pytest

from greencallbacks.lifecycle import lifecycle
from tests.test_lifecycle import rec, trained_run


def test_a_test_call_without_an_embodied_figure_does_not_dilute_the_others():
    billed = [dataclasses.replace(r, embodied_co2eq_g=0.011) for r in trained_run()]
    # A second test call of 500 samples, in a session with embodied=False: no figure.
    unbilled_test = rec("model", "test", None, 250.0, 500, seq=len(billed))
    lc = lifecycle(billed + [unbilled_test])
    # The billed call's 0.011 g over its own 500 samples, not over all 1,000.
    assert lc.inference_embodied_co2eq_g_per_sample == pytest.approx(0.011 / 500)
    assert any("embodied figures cover" in note for note in lc.notes)
