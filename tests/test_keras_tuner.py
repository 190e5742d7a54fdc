"""KerasTuner searches with the Keras callback (``keras_tuner_runner.py``, on the torch backend).

KerasTuner deep-copies the search's callbacks for every execution of every trial, and its
Hyperband builds later brackets' models anew from another trial's weights, fitting them from
``initial_epoch`` > 0: each execution must be a run of its own, never a continuation of the trial
fitted before it. Skipped where keras-tuner is not installed (it is no dependency of any extra).
This file never imports Keras itself (it would fix this process's backend).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.keras_runs import run_keras

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_tuner_runner.py")
SCENARIOS = ["random_search_with_a_failing_trial", "hyperband", "search_given_a_run_id"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if importlib.util.find_spec("keras_tuner") is None:
        pytest.skip("keras_tuner is not installed: the KerasTuner searches need it")
    out = tmp_path_factory.mktemp("keras-tuner")
    return run_keras("torch", out, str(RUNNER), "torch", str(out), ",".join(SCENARIOS),
                     purpose="the KerasTuner searches")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_execution_of_a_keras_tuner_search_is_a_run_of_its_own(results, scenario):
    assert results[scenario] == "ok", results[scenario]
