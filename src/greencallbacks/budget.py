"""Energy and CO2eq budgets: warn once at ``warn_at`` and at 100 %, and optionally stop the run.

``Budget`` is pure bookkeeping with no framework in it. The adapters call ``Budget.check`` after
every epoch (and at step logs where step values exist) with the run's totals so far and the
tracker's prediction of the whole run, and map the returned ``BudgetDecision`` onto their
framework: each message to a warning, ``stop`` to Lightning's ``trainer.should_stop``, Keras's
``model.stop_training`` or HF's ``control.should_training_stop``, so that checkpoints and loggers
finish the framework's own clean way.

When does the prediction trigger ``on_exceed``?
    When the *lower* end of the prediction's 95 % interval is above the limit, i.e. the run will
    exceed the budget even if the remaining epochs turn out as cheap as the data plausibly
    allows (about 97.5 % one-sided confidence under the prediction's model). The central
    prediction is not enough: near the limit it is above the limit about half of the time for
    runs that would have finished within it, and a stop throws away the rest of a run, which a
    user cannot get back, whereas a run that does overrun is still caught by its measured total
    at 100 %. When only the central prediction is above the limit the budget warns once ("may
    exceed") and does not stop. The prediction is NaN until two epochs after warm-up are done;
    NaN values are ignored.

Resume: ``state_dict()`` holds the warnings already given, whether the budget stopped the run and
why. ``load_state_dict()`` restores them when the limits and action are the ones saved, so a
resumed run neither repeats its warnings nor trains on past a budget it already exhausted (a
stopped budget keeps answering ``stop``). With different limits (the user raised the budget to
go on) nothing is restored and the new limits are judged afresh against the run's totals, which
are the whole run's, not the new attempt's. A checkpoint misses the warnings given after it and
before a crash; ``recall`` and ``recall_checks`` take them from the run's previous summary and its
records, so that they are not given again and the summary keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from greencallbacks.checks import as_float, keywords_checked, shown

ACTIONS = ("warn", "stop")
DEFAULT_WARN_AT = 0.8
STATE_VERSION = 1

# One entry per limited quantity: the key in ``Budget.limits``, the words used in messages, the
# unit, and the prediction keys the tracker logs (see ``greencallbacks.tracker.PREDICTION_STEMS``).
_QUANTITIES = {
    "kwh": ("energy", "kWh", "energy_kwh_predicted"),
    "co2eq_g": ("co2eq_g", "g", "co2eq_g_predicted"),
}


def _number(value: float) -> str:
    return f"{value:.4g}"


def _limit(name: str, value: object) -> float | None:
    if value is None:
        return None
    number = as_float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0 (or None for no limit on it), got {shown(value)}")
    return number


def _threshold_of(message: str) -> str | None:
    """The threshold (``"kwh:warn_at"``, ...) a message of ``Budget.check`` warned of; None for
    any other text. The inverse of the message templates in ``check``."""
    for key, (words, _, _) in _QUANTITIES.items():
        if message.startswith(f"{words} total "):
            if " reached the budget of " in message:
                return f"{key}:limit"
            if " % of the budget of " in message:
                return f"{key}:warn_at"
        elif message.startswith(f"predicted {words} "):
            if " may exceed the budget of " in message:
                return f"{key}:predicted_central"
            if " exceeds the budget of " in message:
                return f"{key}:predicted"
    return None


def _extrapolation_note(key: str, prediction: Mapping[str, float] | None) -> str:
    """Said where the CO2eq to come is priced at an intensity series past its data (see
    ``greencallbacks.prediction.priced_by_series``), as records so priced say it."""
    if key == "co2eq_g" and prediction and prediction.get("co2eq_g_predicted_extrapolated") == 1.0:
        return ", priced at the intensity series ahead, extrapolated past its data (its nearest value held)"
    return ""


def _known(value: object) -> float | None:
    """A total or predicted value, or None where it is not available (None, NaN, not a number)."""
    number = as_float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class BudgetDecision:
    """What one ``Budget.check`` found.

    Attributes:
        messages: warnings newly due (each is given once per run); empty most of the time.
        crossed: the thresholds newly crossed, e.g. ``("kwh:warn_at", "co2eq_g:limit")``; the
            kinds are ``warn_at``, ``limit``, ``predicted_central`` and ``predicted``.
        stop: the run must stop (``on_exceed="stop"`` and a limit was reached or predicted with
            confidence); stays True on every later check, also after a resume.
        newly_stopped: True only on the check that decided to stop.
        reason: why the run stops (or, with ``on_exceed="warn"``, why it would have); None if
            no limit was reached or confidently predicted.
        used_fraction: the largest share of a limit used so far (total / limit).
    """

    messages: tuple[str, ...]
    crossed: tuple[str, ...]
    stop: bool
    newly_stopped: bool
    reason: str | None
    used_fraction: float

    def metrics(self) -> dict[str, float]:
        """The values to log with the epoch metrics."""
        return {"budget_used_fraction": self.used_fraction, "budget_stop": 1.0 if self.stop else 0.0}

    def emit(self) -> None:
        """Issue each new message as an ``EnergyWarning`` pointing at the caller's code."""
        from greencallbacks.meter import warn

        for message in self.messages:
            warn("greencallbacks: " + message)


@keywords_checked
class Budget:
    """A limit on the run's energy (``kwh``) and/or CO2eq (``co2eq_g``).

    Args:
        kwh: the run's energy budget in kWh (the facility energy the tracker totals), or None.
        co2eq_g: the run's CO2eq budget in grams (operational CO2eq, the tracker's ``co2eq_g``
            total; embodied emissions are reported apart and not counted), or None. At least
            one of the two.
        on_exceed: ``"warn"`` (warn once and go on) or ``"stop"`` (also end training cleanly).
        warn_at: the share of a limit at which to warn once beforehand, in (0, 1); None for no
            early warning.
    """

    def __init__(
        self,
        kwh: float | None = None,
        co2eq_g: float | None = None,
        on_exceed: str = "warn",
        warn_at: float | None = DEFAULT_WARN_AT,
    ) -> None:
        limits = {"kwh": _limit("kwh", kwh), "co2eq_g": _limit("co2eq_g", co2eq_g)}
        if all(v is None for v in limits.values()):
            raise ValueError("Budget needs kwh= or co2eq_g= (or both): a budget with no limit checks nothing")
        if not isinstance(on_exceed, str) or on_exceed not in ACTIONS:
            raise ValueError(f"on_exceed must be one of {', '.join(repr(a) for a in ACTIONS)}, got {on_exceed!r}")
        if warn_at is not None and not 0 < as_float(warn_at) < 1:  # NaN: not a number, or none a float holds
            raise ValueError(f"warn_at must be a number in (0, 1) (share of the limit) or None, got {shown(warn_at)}")
        self.limits: dict[str, float] = {k: v for k, v in limits.items() if v is not None}
        self.on_exceed = on_exceed
        self.warn_at = None if warn_at is None else float(warn_at)
        self._given: set[str] = set()
        self._messages: list[str] = []
        self.stopped = False
        self.reason: str | None = None
        self.used: dict[str, float] = {k: 0.0 for k in self.limits}

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v:g}" for k, v in self.limits.items())
        return f"Budget({limits}, on_exceed={self.on_exceed!r}, warn_at={self.warn_at!r})"

    @property
    def kwh(self) -> float | None:
        return self.limits.get("kwh")

    @property
    def co2eq_g(self) -> float | None:
        return self.limits.get("co2eq_g")

    @property
    def used_fraction(self) -> float:
        return max((self.used[k] / limit for k, limit in self.limits.items()), default=0.0)

    # -- the check ------------------------------------------------------------------------

    def check(
        self,
        energy_kwh: float | None,
        co2eq_g: float | None,
        prediction: Mapping[str, float] | None = None,
    ) -> BudgetDecision:
        """Judge the run's totals so far and its prediction against the limits.

        Args:
            energy_kwh: the run's total energy so far (kWh, facility energy as logged).
            co2eq_g: the run's total CO2eq so far (g).
            prediction: the tracker's prediction (``energy_kwh_predicted``, ``_low``, ``_high``,
                ``co2eq_g_predicted``; optionally ``co2eq_g_predicted_low``/``_high``, and
                ``co2eq_g_predicted_extrapolated`` = 1.0 where they price past an intensity
                series' data, which its messages then say), or None. NaN values (no prediction
                yet) are ignored.

        Totals that are None or NaN are skipped, never an error: a budget must not break training.
        """
        totals = {"kwh": _known(energy_kwh), "co2eq_g": _known(co2eq_g)}
        crossed: list[str] = []
        messages: list[str] = []
        exceeded: str | None = None
        for key, limit in self.limits.items():
            words, unit, _ = _QUANTITIES[key]
            total = totals[key]
            if total is None:
                continue
            self.used[key] = max(self.used[key], total)
            fraction = total / limit
            if fraction >= 1.0:
                text = f"{words} total {_number(total)} {unit} reached the budget of {_number(limit)} {unit}"
                exceeded = exceeded or text
                self._give(f"{key}:limit", text, crossed, messages)
            elif self.warn_at is not None and fraction >= self.warn_at:
                # Below the limit, never "100 %": 99.9 % rounded would say the budget is reached.
                percent = min(round(fraction * 100), 99)
                text = f"{words} total {_number(total)} {unit} is {percent} % of the budget of {_number(limit)} {unit}"
                self._give(f"{key}:warn_at", text, crossed, messages)
            if fraction < 1.0:
                predicted = self._predicted(key, prediction)
                if predicted is None:
                    continue
                central, low, high = predicted
                interval = (
                    f" (95 % interval {_number(low)}-{_number(high)})" if low is not None and high is not None else ""
                )
                note = _extrapolation_note(key, prediction)
                if low is not None and low > limit:
                    text = (
                        f"predicted {words} {_number(central)} {unit}{interval} exceeds the budget of "
                        f"{_number(limit)} {unit}{note}"
                    )
                    exceeded = exceeded or text
                    self._give(f"{key}:predicted", text, crossed, messages)
                    # A "may exceed" after a confident "exceeds" would read as a retraction.
                    self._given.add(f"{key}:predicted_central")
                elif central > limit:
                    text = (
                        f"predicted {words} {_number(central)} {unit}{interval} may exceed the budget of "
                        f"{_number(limit)} {unit} (the interval still includes it){note}"
                    )
                    self._give(f"{key}:predicted_central", text, crossed, messages)
        newly_stopped = False
        if exceeded is not None and self.reason is None:
            self.reason = exceeded
        if exceeded is not None and self.on_exceed == "stop" and not self.stopped:
            self.stopped = newly_stopped = True
            stopping = f"{exceeded}; stopping training"
            if exceeded in messages:
                messages = [stopping if m == exceeded else m for m in messages]
            else:  # said already: recalled from an attempt that stopped after the checkpoint resumed from
                messages.append(stopping)
            # The summary lists what was said, the stop with it (once: a recalled text is replaced).
            said = [i for i, m in enumerate(self._messages) if m == exceeded]
            if said:
                self._messages[said[-1]] = stopping
            else:
                self._messages.append(stopping)
        return BudgetDecision(
            messages=tuple(messages),
            crossed=tuple(crossed),
            stop=self.stopped,
            newly_stopped=newly_stopped,
            reason=self.reason,
            used_fraction=self.used_fraction,
        )

    def _give(self, key: str, text: str, crossed: list[str], messages: list[str]) -> None:
        if key in self._given:
            return
        self._given.add(key)
        crossed.append(key)
        messages.append(text)
        self._messages.append(text)

    @staticmethod
    def _predicted(key: str, prediction: Mapping[str, float] | None) -> tuple[float, float | None, float | None] | None:
        """(central, low, high) of the prediction for one quantity; None where not available."""
        if not prediction:
            return None
        stem = _QUANTITIES[key][2]
        central = _known(prediction.get(stem))
        if central is None:
            return None
        low, high = _known(prediction.get(stem + "_low")), _known(prediction.get(stem + "_high"))
        if key == "co2eq_g" and (low is None or high is None):
            # Given in kWh only (a constant intensity): CO2eq is energy times the run's mean
            # intensity, so the same ratio carries the interval over.
            energy = _known(prediction.get("energy_kwh_predicted"))
            e_low = _known(prediction.get("energy_kwh_predicted_low"))
            e_high = _known(prediction.get("energy_kwh_predicted_high"))
            if energy and e_low is not None and e_high is not None:
                ratio = central / energy
                low, high = e_low * ratio, e_high * ratio
        return central, low, high

    # -- logging, summary and resume --------------------------------------------------------

    def summary(self, energy_kwh: float | None = None, co2eq_g: float | None = None) -> dict[str, Any]:
        """The ``budget`` field of the run summary.

        ``energy_kwh``, ``co2eq_g``: the run's final totals, written in the same summary. The last
        check was at an epoch's end; what came after it (the rest of a crashed epoch, the last
        gap, test, predict) is in the totals, so ``used`` must count it too, or the two disagree.
        They only report: no warning or stop follows from them (the run is over).
        """
        final = {"kwh": _known(energy_kwh), "co2eq_g": _known(co2eq_g)}
        used = {k: max(v, final[k]) if final[k] is not None else v for k, v in self.used.items()}
        return {
            "limits": dict(self.limits),
            "on_exceed": self.on_exceed,
            "warn_at": self.warn_at,
            "used": used,
            "used_fraction": max((used[k] / limit for k, limit in self.limits.items()), default=0.0),
            "stopped": self.stopped,
            "reason": self.reason,
            "warnings": list(self._messages),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "limits": dict(self.limits),
            "on_exceed": self.on_exceed,
            "warn_at": self.warn_at,
            "given": sorted(self._given),
            "messages": list(self._messages),
            "stopped": self.stopped,
            "reason": self.reason,
            "used": dict(self.used),
        }

    def same_settings(self, fields: Mapping[str, Any]) -> bool:
        """Whether ``fields`` (a saved state, or a summary's ``budget``) hold these limits and action;
        TypeError or ValueError where its limits are not numbers."""
        limits = {k: float(v) for k, v in dict(fields.get("limits") or {}).items()}
        return limits == self.limits and fields.get("on_exceed") == self.on_exceed and fields.get("warn_at") == self.warn_at

    def recall(self, messages: Iterable[str]) -> None:
        """Take as given the warnings in ``messages``: this run's, given after the checkpoint this
        budget was loaded from and before a crash (the previous summary lists them). None of their
        thresholds is warned of again, and the summary keeps them. A message of a threshold given
        already, of a quantity without a limit here, or not a budget's, is skipped."""
        for message in messages:
            key = _threshold_of(message) if isinstance(message, str) else None
            if key is None or key in self._given or key.split(":")[0] not in self.limits:
                continue
            self._given.add(key)
            self._messages.append(message)
            if key.endswith(":predicted"):  # as in ``check``: no "may exceed" after "exceeds"
                self._given.add(key + "_central")

    def recall_checks(self, totals: Iterable[tuple[float | None, float | None]]) -> None:
        """Take as given what checks at ``totals`` (energy kWh, CO2eq g) warned of: the run's
        totals at the epoch ends of its earlier attempts, from its records, for a process killed
        outright, which wrote no summary. Only the totals are judged (a prediction is not in the
        records)."""
        replica = Budget(**self.limits, on_exceed=self.on_exceed, warn_at=self.warn_at)
        for energy_kwh, co2eq_g in totals:
            replica.check(energy_kwh, co2eq_g)
        self.recall(replica._messages)

    def load_state_dict(self, state: Mapping[str, Any]) -> bool:
        """Continue a saved budget; returns whether the saved state applied (same limits and action).

        The largest totals seen are restored either way (they are the run's); the warnings, the
        stop and its reason only when the limits, ``on_exceed`` and ``warn_at`` are unchanged.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a Budget state (version {STATE_VERSION}): {state!r}")
        for key, value in dict(state.get("used") or {}).items():
            if key in self.used and _known(value) is not None:
                self.used[key] = max(self.used[key], float(value))
        if not self.same_settings(state):
            return False
        self._given = set(state.get("given") or ())
        self._messages = list(state.get("messages") or ())
        self.stopped = bool(state.get("stopped"))
        self.reason = state.get("reason")
        return True
