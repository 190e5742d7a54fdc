"""Calls inside calls that ``test_keras_nested_depth.py`` does not make (``keras_nested_more_runner.py``):
a model that overrides ``evaluate`` / ``predict`` with a ``callbacks`` argument and calls ``super()``
(a failed predict made inside its call, caught there, ends as partial at the call's next batch, and
the call keeps all its seconds and rows), and a fit such a call's exception ends.

Each backend runs in a process of its own (Keras fixes its backend at first import); this file
never imports Keras itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from keras_runs import run_on_backends

if importlib.util.find_spec("keras") is None:  # importorskip without importing it (see above)
    pytest.skip("keras is not installed", allow_module_level=True)

RUNNER = Path(__file__).with_name("keras_nested_more_runner.py")
BACKENDS = ("torch", "tensorflow", "jax")
SCENARIOS = ("in_evaluate", "in_predict", "in_validation", "in_evaluate_inside_the_fit")
FAILED_FIT = "failed_fit_written_up_by_the_watch"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_on_backends(tmp_path_factory, BACKENDS, RUNNER, (*SCENARIOS, FAILED_FIT),
                           purpose="the nested Keras calls", needs_tensorboard=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_overriding_models_calls_count_once(results, backend, scenario):
    """Failed before the fix (torch, in_evaluate: the failed predict 4 s for its 2, the evaluate 1 s
    and uncounted, as failed, for 3 s and 30 rows): the override's frame, named as Keras's and holding
    the same callbacks, counted as a second call, so the predict was taken for running still."""
    outcome = results[backend]
    if isinstance(outcome, BaseException):
        pytest.skip(str(outcome))
    assert outcome[scenario] == "ok", outcome[scenario]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_ended_by_a_call_inside_it_leaves_nothing_behind(results, backend):
    """Failed before the fix: once the watch had written the fit up, the loop states its calls had
    put aside stayed with the callback after its next calls (2 of them here), holding the EMA copy."""
    outcome = results[backend]
    if isinstance(outcome, BaseException):
        pytest.skip(str(outcome))
    assert outcome[FAILED_FIT] == "ok", outcome[FAILED_FIT]
