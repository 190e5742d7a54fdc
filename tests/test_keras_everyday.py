"""Everyday ``fit`` options on real Keras: ``validation_split`` / ``validation_freq``,
``steps_per_epoch`` over a repeating generator with ``validation_steps``, ``class_weight`` /
``sample_weight``, ``EarlyStopping(restore_best_weights=True)`` then ``fit(initial_epoch=...)``
with inference on ``PyDataset``s in between, and a TensorFlow data set that one epoch uses up.

Keras fixes its backend at first import, so each backend runs ``keras_everyday_runner.py`` in its
own process, which checks the ledger invariants (``flow_invariants.py``) and the exact sample
counts after every call. This file never imports Keras itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_keras

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_everyday_runner.py")
TORCH_SCENARIOS = ["validation_split_and_freq", "steps_per_epoch", "early_stopping_then_more"]


def run_backend(backend: str, out: Path, scenarios: list[str]) -> dict:
    return run_keras(backend, out, str(RUNNER), backend, str(out), ",".join(scenarios),
                     purpose=f"the Keras {backend}-backend scenarios")


@pytest.fixture(scope="module")
def torch_results(tmp_path_factory):
    return run_backend("torch", tmp_path_factory.mktemp("keras-everyday-torch"), TORCH_SCENARIOS)


@pytest.mark.parametrize("scenario", TORCH_SCENARIOS)
def test_everyday_fit_options_keep_the_ledger_and_exact_counts(torch_results, scenario):
    assert torch_results[scenario] == "ok", torch_results[scenario]


def test_an_epoch_that_finds_its_data_set_used_up_trained_no_sample(tmp_path):
    """TensorFlow's fit gave such an epoch the reset metrics' logs: it was recorded uncounted, with
    a warning blaming a custom train_step (steps_per_execution=3) or steps run past the data (1)."""
    results = run_backend("tensorflow", tmp_path, ["data_set_ends_with_the_epoch"])
    assert results["data_set_ends_with_the_epoch"] == "ok", results["data_set_ends_with_the_epoch"]
