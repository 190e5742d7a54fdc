"""The whole run's energy, predicted at each epoch end from what the past epochs cost.

An epoch costs everything billed to it: its training phase, its validation and the gap after it
(checkpoints, logging). At the end of epoch ``e``'s training phase the rest of the run is the
tail of epoch ``e`` (what usually follows a training phase: HF's evaluation and checkpoint, the
gap) plus the epochs not yet run; both are estimated from the epochs that are complete (asked
later, at a step log or as a resumed fit starts, what was billed since that end is counted once). The
first epoch of every attempt is left out of the means: it pays for compilation and warm-up, or,
after a mid-epoch resume, holds only the rest of an epoch.

The 95 % interval is a prediction interval for that sum: with ``n`` complete epochs of mean
``c`` and standard deviation ``s_c`` (tails: ``t``, ``s_t``) and ``m`` epochs to go, the
variance of the remaining cost around its estimate is
``s_t^2 (1 + 1/n) + m s_c^2 + m^2 s_c^2 / n``, scaled by Student's t with ``n - 1`` degrees of
freedom.

CO2eq: ``predict`` prices the energy to come at the run's mean intensity so far, which holds for
a constant intensity. Where the intensity is a time series that already gives the values to come
(a ``series=`` file), ``priced_by_series`` prices it at the series instead: at its mean over the
time the rest of the run is expected to take from its last training end (an epoch's mean tail,
then the epochs the prediction counts, each of the mean epoch's wall time). That time is as
uncertain as the energy: an epoch's wall time varies as its energy does at a training loop's
steady power, so the interval's ends take the lowest and the highest series mean over the
windows that long, from the shortest to the longest. Where those windows reach past the series'
data, it holds its nearest value, as it does for records, and the prediction says it is
extrapolated (``co2eq_g_predicted_extrapolated``).
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

from greencallbacks.ledger import Ledger

if TYPE_CHECKING:
    from greencallbacks.carbon.series import IntensitySeries

PREDICTION_STEMS = (
    "energy_kwh_predicted",
    "energy_kwh_predicted_low",
    "energy_kwh_predicted_high",
    "co2eq_g_predicted",
)

# The series steps inside the windows looked at: the mean over a window turns only at one. Past
# this many, every k-th (a remaining week of one-minute data would be ~10,000 at each epoch end).
MAX_STEPS_LOOKED_AT = 512

# Two-sided 95 % Student t quantiles by degrees of freedom (1..10); 1.96 beyond.
_T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


def predict(
    ledger: Ledger, planned_epochs: int | None, planned_steps: int | None = None, seconds_left: float | None = None
) -> dict[str, float]:
    """The run's predicted energy (kWh) and CO2eq (g) with a 95 % interval; NaN until two
    complete epochs after warm-up are known, or when no limit is known."""
    stats = ledger.stats
    n = stats.n
    remaining = epochs_left(ledger, planned_epochs, planned_steps, seconds_left)
    if remaining is None or n < 2:
        return {k: math.nan for k in PREDICTION_STEMS}
    mean_cost, s_cost = _mean_and_sd(n, *stats.cost)
    mean_tail, s_tail = _mean_and_sd(n, *stats.tail)
    so_far_kwh = ledger.energy_j / 3.6e6
    tail_billed, later_billed = _billed_since_training_end(ledger)
    predicted = so_far_kwh + max(0.0, mean_tail - tail_billed) + remaining * mean_cost - later_billed
    variance = s_tail**2 * (1 + 1 / n) + remaining * s_cost**2 + remaining**2 * s_cost**2 / n
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half_width = t * math.sqrt(variance)
    g_per_kwh = ledger.co2eq_g / so_far_kwh if so_far_kwh > 0 else 0.0
    return {
        "energy_kwh_predicted": predicted,
        "energy_kwh_predicted_low": max(so_far_kwh, predicted - half_width),
        "energy_kwh_predicted_high": predicted + half_width,
        "co2eq_g_predicted": predicted * g_per_kwh,
    }


def _billed_since_training_end(ledger: Ledger) -> tuple[float, float]:
    """kWh billed since the last training phase ended (in the total already): to that epoch's tail,
    and by this attempt to the epochs after it. A prediction made then, not at that end (a budget
    checked at a step log, after a mid-epoch validation closed the gap; or as a resumed fit starts),
    must not add them again with the mean tail and the epochs left. Pauses are no part of a tail;
    an earlier attempt's work on a later epoch is spent, and this attempt redoes it."""
    last = ledger.epochs.get(ledger.last_finished_epoch)
    if last is None or last.kwh_at_train_end is None:
        return 0.0, 0.0
    tail = last.kwh - last.paused_kwh - last.kwh_at_train_end
    later = sum(c.kwh - c.paused_kwh for e, c in ledger.epochs.items()
                if e > ledger.last_finished_epoch and c.attempt == ledger.attempt)
    later += ledger.held_kwh(ledger.attempt, ledger.last_finished_epoch)
    return max(0.0, tail), later


def epochs_left(
    ledger: Ledger, planned_epochs: int | None, planned_steps: int | None, seconds_left: float | None = None
) -> float | None:
    """Epochs the framework will still train after the last one finished; None when unknown.

    ``planned_epochs`` is where the framework stops counting epochs (``max_epochs``),
    ``planned_steps`` where it stops counting optimizer steps (``max_steps``), ``seconds_left``
    the time it had left when that epoch's training ended (Lightning's ``max_time``); the run ends
    at whichever comes first, so the last epoch may be a fraction of one.

    The epochs left are those after the last one trained, not ``planned_epochs`` less the epochs
    counted, which a run that began at a later epoch (a second fit on one Trainer, Keras'
    ``initial_epoch``) or went back to an earlier one (a resume from an older checkpoint) would
    get wrong. Steps left are priced at the steps the last epoch took (once two adjacent epochs
    have finished), time left (less an epoch's mean tail) at the mean wall time of the complete
    epochs.
    """
    left = None if planned_epochs is None else float(max(0, planned_epochs - 1 - ledger.last_finished_epoch))
    steps_per_epoch, step = ledger.steps_per_epoch, ledger.last_finished_step
    if planned_steps is not None and steps_per_epoch is not None and step is not None:
        by_steps = max(0, planned_steps - step) / steps_per_epoch
        left = by_steps if left is None else min(left, by_steps)
    n, (seconds, tail_seconds) = ledger.stats.n, ledger.stats.seconds
    if seconds_left is not None and n > 0 and seconds > 0:
        # The time left also runs through the ending epoch's tail, which is priced apart.
        by_time = max(0.0, seconds_left - tail_seconds / n) / (seconds / n)
        left = by_time if left is None else min(left, by_time)
    return left


def _mean_and_sd(n: int, total: float, total_of_squares: float) -> tuple[float, float]:
    mean = total / n
    # Clamped: rounding can leave a hair below zero when every epoch cost the same.
    return mean, math.sqrt(max(0.0, (total_of_squares - n * mean * mean) / (n - 1)))


def priced_by_series(prediction: dict[str, float], ledger: Ledger, series: "IntensitySeries") -> dict[str, float]:
    """``prediction`` (from ``predict``) with the CO2eq of the energy to come priced at ``series``
    over the time the rest of the run is expected to take (see the module docstring), and with its
    own interval, ``co2eq_g_predicted_low`` / ``_high``; ``co2eq_g_predicted_extrapolated`` is 1.0
    where those windows reach past the series' data. Unchanged while there is no prediction."""
    so_far_kwh = ledger.energy_j / 3.6e6
    ahead_kwh = prediction["energy_kwh_predicted"] - so_far_kwh
    start = _last_training_end_unix(ledger)
    seconds = _seconds_ahead(ledger, ahead_kwh) if math.isfinite(ahead_kwh) and ahead_kwh > 0 else None
    if start is None or seconds is None:
        return prediction
    low_kwh = prediction["energy_kwh_predicted_low"] - so_far_kwh
    high_kwh = prediction["energy_kwh_predicted_high"] - so_far_kwh
    shortest, longest = seconds * low_kwh / ahead_kwh, seconds * high_kwh / ahead_kwh
    lowest, highest = _extreme_means(series, start, shortest, longest)
    covered_from, covered_until = series.coverage
    extrapolated = start < covered_from or start + longest > covered_until or bool(series.gaps_between(start, start + longest))
    return {
        **prediction,
        "co2eq_g_predicted": ledger.co2eq_g + ahead_kwh * _mean(series, start, start + seconds),
        "co2eq_g_predicted_low": ledger.co2eq_g + low_kwh * lowest,
        "co2eq_g_predicted_high": ledger.co2eq_g + high_kwh * highest,
        "co2eq_g_predicted_extrapolated": 1.0 if extrapolated else 0.0,
    }


def _last_training_end_unix(ledger: Ledger) -> float | None:
    """When the last finished training phase ended (unix s): the moment the prediction is made
    from. None where its record is not at hand."""
    record = ledger.last.get("train")
    if record is None or record.partial or record.epoch != ledger.last_finished_epoch:
        return None
    return ledger.last_train_end_unix  # not start + duration: the validations inside it are billed apart


def _seconds_ahead(ledger: Ledger, ahead_kwh: float) -> float | None:
    """The wall time of ``ahead_kwh`` as ``predict`` counts it: the mean tail, then that many
    epochs at the mean cost, each taking the mean epoch's time. None without a cost to count by."""
    stats = ledger.stats
    if stats.n < 1 or stats.cost[0] <= 0:
        return None
    mean_cost, mean_tail = stats.cost[0] / stats.n, stats.tail[0] / stats.n
    epochs = max(0.0, (ahead_kwh - mean_tail) / mean_cost)
    return stats.seconds[1] / stats.n + epochs * stats.seconds[0] / stats.n


def _mean(series: "IntensitySeries", start: float, end: float) -> float:
    if end <= start:
        return series.value_at(start)
    return series.integral(start, end) / (end - start)


def _extreme_means(series: "IntensitySeries", start: float, shortest: float, longest: float) -> tuple[float, float]:
    """The lowest and the highest mean of ``series`` over [start, start + T] for T from
    ``shortest`` to ``longest``. The mean of a step series moves monotonically between its
    steps, so it is extreme at the two ends or at a step between them."""
    first, last = start + shortest, start + longest
    times = series.times_unix
    inside = times[bisect.bisect_right(times, first):bisect.bisect_left(times, last)]
    stride = max(1, math.ceil(len(inside) / MAX_STEPS_LOOKED_AT))
    means = [_mean(series, start, end) for end in (first, last, *inside[::stride])]
    return min(means), max(means)
