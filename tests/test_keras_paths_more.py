"""More everyday Keras paths, on real Keras: ``samples_per_epoch=`` with an epoch that
``model.stop_training`` ends early (TerminateOnNaN, a budget, a callback) or data of unknown length
used up, such an epoch without it, a manual resume with ``keras.saving.load_model`` and
``fit(initial_epoch=...)`` (past a checkpoint saved inside the epoch a fit failed in, too), and
repeating ``tf.data`` sets, ``steps=`` and a threaded ``PyDataset`` counted as Keras fed them.

Keras fixes its backend at first import, so each backend runs ``keras_paths_runner.py`` in its
own process; a failure here shows the runner's message. This file never imports Keras itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from keras_runs import run_keras

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_paths_runner.py")
TORCH_SCENARIOS = ["samples_per_epoch_ended_early", "stopped_inside_an_epoch", "manual_resume_with_load_model",
                   "resume_past_a_checkpoint_inside_the_failed_epoch", "repeating_data_and_steps"]


def run_backend(backend: str, out: Path, scenarios: list[str]) -> dict:
    return run_keras(backend, out, str(RUNNER), backend, str(out), ",".join(scenarios),
                     purpose=f"the Keras {backend}-backend everyday paths")


@pytest.fixture(scope="module")
def torch_results(tmp_path_factory):
    scenarios = [s for s in TORCH_SCENARIOS if s != "repeating_data_and_steps" or importlib.util.find_spec("tensorflow")]
    return run_backend("torch", tmp_path_factory.mktemp("keras-paths-torch"), scenarios)


@pytest.mark.parametrize("scenario", TORCH_SCENARIOS)
def test_everyday_paths_keep_the_ledger_and_what_keras_fed(torch_results, scenario):
    if scenario not in torch_results:
        pytest.skip("tensorflow is not installed: the tf.data scenario needs it")
    assert torch_results[scenario] == "ok", torch_results[scenario]


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_samples_per_epoch_is_not_claimed_for_an_epoch_that_ended_early(tmp_path, backend):
    results = run_backend(backend, tmp_path, ["samples_per_epoch_ended_early"])
    assert results["samples_per_epoch_ended_early"] == "ok", results["samples_per_epoch_ended_early"]
