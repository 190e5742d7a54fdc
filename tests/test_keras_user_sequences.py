"""Randomized user sequences of Keras calls on all three backends (``keras_user_sequences_runner.py``):
a data source (NumPy, ``tf.data``, ``PyDataset`` with an uneven last batch, an endless generator
with ``steps_per_epoch``), compiled or eager steps, ``steps_per_execution``, ``samples_per_epoch``,
then fits that crash (an error or Ctrl-C from a callback in a batch, in validation, between epochs,
or from a model layer inside the step) and resume through ``BackupAndRestore`` (``save_freq``
"epoch" or steps, ``delete_checkpoint`` on or off), ``ModelCheckpoint`` + ``initial_epoch`` (in a new
model and callback, as a new process would), a fit again from epoch 0, ``evaluate`` and ``predict``.

On a fake clock that only batches advance, after every call: the directory's records hold every
second once, each run's records its own seconds, the summary its records' sum, ``History`` and
``CSVLogger`` the run's total at each epoch end; every finished phase's samples are the rows Keras
fed, its step the optimizer's step, and its epoch the one Keras ran. Each seed is one case: its
failure names the steps it drew. This file never imports Keras itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_on_backends

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_user_sequences_runner.py")
BACKENDS = ["torch", "jax", "tensorflow"]
# Drawn seeds that between them cover every kind of step above on each backend.
SEEDS = ["3", "6", "214", "236", "241", "243", "305"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_on_backends(tmp_path_factory, BACKENDS, RUNNER, SEEDS, purpose="the Keras user sequences")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_keras_user_sequence_totals_are_exact(results, backend, seed):
    outcome = results[backend]
    if isinstance(outcome, BaseException):
        pytest.skip(str(outcome))
    assert outcome[f"seed {seed}"] == "ok", outcome[f"seed {seed}"]
