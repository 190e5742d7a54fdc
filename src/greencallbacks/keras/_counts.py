"""What a Keras loop ran and counted, read from its model and from what its batch hooks reported.

A training or evaluation loop's samples are its model's loss tracker's ``count`` (a sum of batch
sizes): this module tells whether that count is samples (Keras's own step, or a custom one that
may count steps), exact (its dtype), reset where Keras resets the model's metrics, reset unseen
by an ``evaluate`` not given the callback, and whether a compiled call that ran out of data may
have counted steps that had no data. A loop's steps come from its batch hooks (``batch + 1``, an
execution of ``steps_per_execution`` steps each) and its optimizer's step. No state of its own:
the callback (``_callback``) decides when to read.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from greencallbacks.keras._backend import hooks_report_last_step, keras_version, may_run_past_the_data

_KERAS_VERSION = keras_version(keras.__version__)


def _custom_step(model: Any, loop: str) -> bool:
    """Does ``model``'s class define its own ``train_step`` / ``test_step`` (``loop``: train, test)?

    Keras 3 defines both on its backend's trainer, which ``keras.Model`` inherits from.
    """
    name = f"{loop}_step"
    return getattr(type(model), name, None) is not getattr(keras.Model, name, None)


# Every integer below these is exact in the dtype (2 ** (mantissa bits + 1)); past them a float
# count that Keras adds to batch by batch rounds each sum: bfloat16 stops growing at 256 plus a
# batch or so, float16 overflows to inf past 65504, float32 drops or gains whole batches past 2**24.
_EXACT_COUNT_BELOW = {"bfloat16": 2**8, "float16": 2**11, "float32": 2**24, "float64": 2**53}


def _exact_count(value: float, dtype: str) -> int | None:
    """A loss tracker's ``count`` (a sum of batch sizes kept in ``dtype``) as an int, when it is exact.

    A sum of positive weights that passed the limit never rounds back below it, so a count read
    below it is exact, every partial sum included. None past it, not finite, not an integer, or a
    dtype not known here: the samples are uncounted, never a guess.
    """
    limit = _EXACT_COUNT_BELOW.get(dtype)
    if limit is None or not math.isfinite(value) or value != math.floor(value) or not 0 <= value < limit:
        return None
    return int(value)


def _resets_loss_tracker(model: Any) -> bool:
    """Does Keras reset ``model``'s loss tracker as an epoch or an evaluation begins? It resets the
    metrics that ``model.metrics`` lists: a subclass whose ``metrics`` property lists only its own
    leaves the tracker counting on from every epoch and evaluation before (its count grows each
    epoch). A model without one (compiled without a loss) counts nothing, which is said elsewhere."""
    loss_tracker = getattr(model, "_loss_tracker", None)
    return loss_tracker is None or any(m is loss_tracker for m in model.metrics)


# What ``model.stop_evaluating`` holds while no evaluate of the model has run since we last looked:
# falsy, as Keras reads it, but not the ``False`` that every ``evaluate`` (Keras 3.3 to 3.15, every
# backend) sets as it begins, just before it resets the model's metrics.
_NOT_EVALUATED = 0


def _watch_evaluations(model: Any) -> bool:
    """Mark ``model`` so that ``_evaluated_since`` tells an ``evaluate`` of it that ran without this
    callback (a callback's ``self.model.evaluate(...)`` mid-epoch): Keras gives no other sign of one,
    and it resets the loss tracker and the token metric, which training then counts on from the
    evaluation's count (88 samples and 264 tokens recorded for an epoch of 40 and 120). False where
    the mark did not take: every earlier evaluate (the fit's validation) would look like one."""
    try:
        model.stop_evaluating = _NOT_EVALUATED
    except Exception:  # noqa: BLE001 - a model that refuses the attribute: not watched (the False below)
        pass
    return not _evaluated_since(model)


def _evaluated_since(model: Any) -> bool:
    """Has an ``evaluate`` of ``model`` begun since ``_watch_evaluations`` marked it?"""
    return getattr(model, "stop_evaluating", _NOT_EVALUATED) is False


def _one_step_per_batch(model: Any) -> bool:
    """Does the optimizer's step advance by exactly one each training batch? Keras's own
    ``train_step`` applies the optimizer once per batch; a custom step may not, gradient
    accumulation divides the step, and loss scaling skips the steps that overflowed."""
    optimizer = getattr(model, "optimizer", None)
    loss_scale = getattr(keras.optimizers, "LossScaleOptimizer", ())
    return (
        optimizer is not None
        and not _custom_step(model, "train")
        and not getattr(optimizer, "gradient_accumulation_steps", None)
        and not isinstance(optimizer, loss_scale)
    )


def _step_range(reported: int, per_execution: int, planned: int | None) -> tuple[int, int]:
    """The steps a loop ran, fewest and most, from the highest ``batch + 1`` its batch hooks reported.

    With ``steps_per_execution=k`` each hook covers an execution of up to k steps, reported at its
    last step (Keras 3.11+; a short last execution too: 10 steps by 4 reported as 12) or at its
    first (before: 10 steps by 4 reported as 9). Capped by the steps Keras planned, where it knows them.
    """
    if reported <= 0:
        return 0, 0
    if hooks_report_last_step(_KERAS_VERSION):
        fewest, most = reported - per_execution + 1, reported
    else:
        fewest, most = reported, reported + per_execution - 1
    if planned is not None:
        most = min(most, planned)
    return max(1, min(fewest, most)), most


def _per_execution(model: Any) -> int:
    """The model's ``steps_per_execution`` (1 where it has none)."""
    per_execution = getattr(model, "steps_per_execution", 1)
    return per_execution if isinstance(per_execution, int) and per_execution >= 1 else 1


def _may_run_past_the_data(model: Any) -> bool:
    """Can a loop of ``model`` that ran out of data inside a compiled call have counted steps without
    data? (see ``_backend.may_run_past_the_data``)."""
    return may_run_past_the_data(keras.backend.backend(), _KERAS_VERSION, _per_execution(model),
                                 bool(getattr(model, "run_eagerly", False)))


def _past_the_data(count: int | None, begun: int, ended: int, exact_rule: bool) -> int | None:
    """A loop's count where its last compiled call ran out of data (``_may_run_past_the_data``): the
    samples, or None where they cannot be told.

    With ``steps_per_execution=1`` the call that found no data can only have counted one batch of
    a batch size fixed in the data set's shape (a count that waits for the data cannot run without
    it): then every batch the ``ended`` calls ran had that size too, and the count is ``ended + 1``
    such batches. A count that ``ended + 1`` does not divide is therefore exact (a data set with a
    variable last batch: a Python generator, or ``.filter()`` before ``.batch()``); one that it
    divides may be either. ``exact_rule``: the loop is Keras's own step on one replica at one step
    per execution, where that holds (a custom step may count steps; each replica of a
    ``tf.distribute`` strategy may or may not add its share).
    """
    if count is None or not exact_rule or ended < 1 or begun != ended + 1 or count % (ended + 1) == 0:
        return None
    return count


def _a_number(value: Any) -> bool:
    """A plain Python number, as Keras makes of a one-element output (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
