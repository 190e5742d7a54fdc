"""The Keras callback under Keras's in-process data parallelism on two CPU devices
(``keras_distribution_runner.py``): TensorFlow's ``MirroredStrategy`` and JAX's
``keras.distribution.DataParallel``; torch, on one device, runs the same calls as a control. A
user's sequence (fit with uneven last batches and validation, fit on with ``initial_epoch`` and
``steps_per_epoch``, evaluate, predict, a fit that raises inside an epoch resumed by
``BackupAndRestore``) counts the global batches' rows once, and its records sum to the summary and
to every logged total; a ``token_counter`` is exact or left out with one warning.

Keras's own limits met on the way (Keras 3.15.1, without this callback): JAX's ``DataParallel``
raises for a batch that the devices do not divide (a last batch of 5: ``IndivisibleError``);
``MirroredStrategy`` fails with ``steps_per_execution`` > 1 ("You must feed a value for placeholder
tensor") and with a validation batch of 31 on two replicas (``AddN`` of 16 and 15 rows).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_on_backends

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_distribution_runner.py")
BACKENDS = ["tensorflow", "jax", "torch"]  # torch: one device, a control
SCENARIOS = ["sequence", "tokens"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_on_backends(tmp_path_factory, BACKENDS, RUNNER, SCENARIOS, purpose="Keras's in-process distribution")


def outcome(results, backend: str, scenario: str) -> str:
    got = results[backend]
    if isinstance(got, BaseException):
        pytest.skip(str(got))
    return got[scenario]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_users_sequence_on_two_devices_counts_the_global_batches_once(results, backend):
    assert outcome(results, backend, "sequence") == "ok"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_counter_is_exact_or_left_out_with_one_warning(results, backend):
    """A ``Sum`` of 3 tokens a row. Keras before 3.10 logs the 303 tokens of a training epoch on two
    ``MirroredStrategy`` replicas as 153 (3.3.3: the first replica's) or 1359 (3.8.0; not the same
    number every run), and energy_j_per_token was recorded from that before the fix: twice, or a
    fifth of, the true cost. Keras 3.15's torch fit, on one device, logs the training epoch's 303 as its
    validation's 93 (the logged tensor shares the metric's variable, which validation resets and
    refills: Keras's own, in History too), recorded so before the fix: 3.3 times the cost per token."""
    assert outcome(results, backend, "tokens") == "ok"
