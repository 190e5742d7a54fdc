"""What Keras's own loggers receive from ``EnergyCallback`` across resumes, on all three backends:
``History``, ``CSVLogger`` and ``keras.callbacks.TensorBoard`` (per epoch, and per batch at an
integer ``update_freq``) after ``BackupAndRestore`` resumes (per epoch, every N steps, drawn
crashes), ``fit(initial_epoch=...)`` from ``ModelCheckpoint`` files, Ctrl-C then fit again,
``validation_freq``, ``steps_per_epoch`` over repeated data and data an epoch uses up.

Each backend runs ``keras_logged_runner.py`` in a process of its own (the three at once), on a fake
clock that only batches advance: every value logged must be the run's exact total so far,
earlier attempts included, and the records and summary every second of every attempt, once.
This file never imports Keras itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_on_backends

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_logged_runner.py")
BACKENDS = ["torch", "jax", "tensorflow"]
SCENARIOS = ["backup_each_epoch", "backup_every_steps", "random_backup_resumes", "initial_epoch_from_checkpoints",
             "interrupted_then_fit_again", "validation_every_other_epoch", "steps_per_epoch_over_repeated_data",
             "data_used_up_by_an_epoch"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_on_backends(tmp_path_factory, BACKENDS, RUNNER, SCENARIOS, purpose="the Keras logged totals")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_keras_loggers_get_the_runs_exact_totals(results, backend, scenario):
    outcome = results[backend]
    if isinstance(outcome, BaseException):
        pytest.skip(str(outcome))
    assert outcome[scenario] == "ok", outcome[scenario]

