"""The values a run logs (``_LoggedValues``, part of ``Tracker``): ``metrics`` at the end of a
phase, ``live`` totals and power at logging steps (the open phases included, never a record),
the run's ``prediction``, and its totals as logged, never back (``_never_back``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from greencallbacks.meter import joules_between
from greencallbacks.phase_boundaries import _check_phase
from greencallbacks.phase_lock import _holding_phases
from greencallbacks.prediction import predict
from greencallbacks.units import J_PER_KWH

if TYPE_CHECKING:
    from greencallbacks.meter import Snapshot

# The live power_w is the mean over at least this long (ten update periods of a channel read off
# the training thread: within 10 % of the power however fast the logging steps come).
LIVE_POWER_WINDOW_S = 1.0



class _LoggedValues:
    """Part of ``Tracker``: its methods that give the values the adapters log. No state of its own:
    they read and write the tracker's (see ``Tracker.__init__``)."""

    def metrics(self, phase: str, prefix: str = "") -> dict[str, float]:
        """The shared metric stems for the last finished ``phase``, with ``prefix`` prepended.

        ``energy_kwh_total`` / ``co2eq_g_total``: for ``train`` everything the run has used so far
        (all phases and gaps); for other phases, the sum of that phase so far, or for a record with a
        ``metric_prefix``, of that prefix over every phase (the records logged under the same name).
        Per-sample values are NaN when no samples were counted.
        """
        _check_phase(phase)  # a typo ("val") gave {}, as for a phase not yet finished
        record = self.last.get(phase)
        if record is None:
            return {}
        if phase == "train":
            total_kwh, total_g = self._never_back(self.total_energy_j / J_PER_KWH, self.total_co2eq_g)
        else:
            # A prefixed record's total is its prefix's, whatever the phase: the metric's name (Ledger.prefix_total).
            totals = self.totals[phase] if record.metric_prefix is None else self.ledger.prefix_total(record.metric_prefix)
            total_kwh, total_g = totals.energy_j / J_PER_KWH, totals.co2eq_g
        values = {
            "energy_kwh": record.energy_kwh,
            "co2eq_g": record.co2eq_g,
            "energy_kwh_total": total_kwh,
            "co2eq_g_total": total_g,
            "energy_j_per_sample": _nan_if_none(record.energy_j_per_sample),
            "co2eq_g_per_sample": _nan_if_none(record.co2eq_g_per_sample),
            "power_w": record.it_energy_kwh * J_PER_KWH / record.duration_s if record.duration_s > 0 else 0.0,
        }
        # Where the framework counts tokens (HF's num_input_tokens_seen), and counted every batch's:
        # a count that failed on some left the others' tokens alone, too few for the phase's energy.
        if record.tokens and record.tokens_counted:
            values["energy_j_per_token"] = record.energy_kwh * J_PER_KWH / record.tokens
        if phase == "train" and self.ledger.embodied is not None:
            values["embodied_co2eq_g_total"] = self.ledger.embodied[0]  # apart from co2eq_g_total
        if phase == "train" and self.plans_run:
            values.update(self.prediction())
        return {prefix + k: float(v) for k, v in values.items()}

    @_holding_phases
    def live(self, prefix: str = "") -> dict[str, float]:
        """The run's totals so far, the open phases included, for step-level logging.

        ``energy_kwh_total`` / ``co2eq_g_total``: the ledger's totals, plus what the open phases
        have been billed so far, plus the interval since the last boundary (``Meter.peek``: no
        device sync, no slow read), times PUE; that interval's CO2eq at the intensity of its span.
        ``power_w``: IT power since the newest earlier call at least ``LIVE_POWER_WINDOW_S`` before
        this one (since the first call, or the last boundary before it, until one is). Adds no record
        and never touches the ledger, so records and per-epoch values are the same with or without
        it.

        On several ranks a collective, which every rank calls at the same logging steps: the
        ranks' open parts and powers are summed over a gloo gather of three floats (host to host:
        it waits for no device; ``benchmarks/hooks.py`` step_cadence times it), so that every
        rank holds the run's totals (the closed phases are summed at their boundaries) and judges
        a budget alike. Rank 0's part alone read about 1/N of an N-GPU epoch until its end.
        """
        if not self.running or self._last_snapshot is None:
            return {}
        if self.reducer.world_size == 1:
            open_j, co2eq_g, power_w = self._live_here()
        else:
            # The collective comes whatever this rank's part does: a rank that skipped it would
            # pair its next gather with the others' later ones. Its failure is raised after it;
            # the others get NaN totals, which the adapters do not log and a budget ignores.
            failure = None
            try:
                here = self._live_here()
            except Exception as error:  # noqa: BLE001 - raised below, once the ranks have met
                failure, here = error, (math.nan,) * 3
            # Summed in rank order from one gathered list: the same bits on every rank, which a budget needs.
            open_j, co2eq_g, power_w = (math.fsum(part) for part in zip(*self.reducer.gather_floats(here)))
            if failure is not None:
                raise failure
        total_kwh, total_g = self._never_back((self.total_energy_j + open_j) / J_PER_KWH, self.total_co2eq_g + co2eq_g)
        values = {"energy_kwh_total": total_kwh, "co2eq_g_total": total_g, "power_w": power_w}
        return {prefix + k: float(v) for k, v in values.items()}

    def _never_back(self, energy_kwh: float, co2eq_g: float) -> tuple[float, float]:
        """The run's totals as logged, never below totals logged before: the one owner of the
        running ``energy_kwh_total`` / ``co2eq_g_total`` of ``live`` and of the training's ``metrics``.

        The two sum the same joules in other orders: ``live`` adds the open phases' parts (IT
        joules by segment, then PUE) to the ledger's totals; an end closes those parts into
        records (IT joules by component, PUE, rounded through kWh), adds each to its phase's
        total, and the run's total is the sum of the phases'. Float sums of one amount in other
        orders differ in their last bits, either way: with nothing spent in between (a step
        logged at an epoch's last batch, on a counter that had not moved: NVML's update every
        100 ms), the epoch's total came out an ulp below the step value just before it
        (0.0027175314498869784 after 0.002717531449886979 kWh). Held at the higher within
        ROUNDING_HELD (relative), a total is at most those bits above its records' sum; a larger
        step back is no rounding and is logged as it is (a price for past time that a live source
        answered late, the README's known limit). A total that is not a number (a failed gather
        of several ranks) is passed on, not held."""
        logged_kwh, logged_g = self._logged_totals
        energy_kwh, co2eq_g = _held(energy_kwh, logged_kwh), _held(co2eq_g, logged_g)
        self._logged_totals = (energy_kwh if math.isfinite(energy_kwh) else logged_kwh,
                               co2eq_g if math.isfinite(co2eq_g) else logged_g)
        return energy_kwh, co2eq_g

    def _live_here(self) -> tuple[float, float, float]:
        """This rank's part of ``live``: the open phases' facility joules and CO2eq so far, and its power."""
        assert self.meter is not None and self._last_snapshot is not None
        peeked = self.meter.peek()
        pue = self.carbon.pue
        since = self._last_snapshot
        it_j = self._joules_between(since, peeked)
        co2eq_g = self._open_interval_g(since.unix_s, max(peeked.unix_s, since.unix_s), it_j)
        # Each phase's billed segments, summed once: a long epoch with many evaluations inside
        # keeps adding segments, and this runs at every logging step. The phases closed on this
        # rank but not yet published (a gap closes when a phase begins) count as well.
        billed = {}
        for opened in [closed[0] for closed in self._pending] + self._stack:
            count, joules, grams = self._live_billed.get(opened.seq, (0, 0.0, 0.0))
            for t0, t1, energy_j in opened.segments[count:]:
                joules += energy_j
                grams += self._grams(energy_j, t0, t1)
            billed[opened.seq] = (len(opened.segments), joules, grams)
            it_j += joules
            co2eq_g += grams
        self._live_billed = billed
        # Over the last LIVE_POWER_WINDOW_S at least: a channel read off the thread moves in steps
        # of its update period (0.1 s), so steps logged 20 ms apart read 0.4 W, then 10 W.
        history = self._live_history
        if not history:
            history.append(self._last_snapshot)
        while len(history) > 1 and peeked.monotonic_s - history[1].monotonic_s >= LIVE_POWER_WINDOW_S:
            history.popleft()
        previous = history[0]
        seconds = peeked.monotonic_s - previous.monotonic_s
        power_w = self._joules_between(previous, peeked) / seconds if seconds > 0 else 0.0
        history.append(peeked)
        self._beat(peeked)
        return it_j * pue, co2eq_g, power_w

    def _open_interval_g(self, t0: float, t1: float, energy_j: float) -> float:
        """CO2eq of the interval since the last boundary, ``energy_j`` over [t0, t1], cut at its
        marks as the boundary will cut it (``open_phase.priced_apart``). The parts up to the newest mark are
        priced once and kept (``_marks_priced``): priced anew at every logging step, a day-long
        epoch's 1440 parts took ``live`` from 41 us to 9 ms a call by its end. (A mark is held
        within the peeks before it, not within this one: peeks only grow until the boundary.)"""
        marks = self._price_marks
        count, start, done, grams = self._marks_priced
        while count < len(marks) and marks[count][0] < t1:
            unix_s, joules = marks[count]
            if start < unix_s:
                joules = max(joules, done)
                grams += self._grams(joules - done, start, unix_s)
                start, done = unix_s, joules
            count += 1
        self._marks_priced = (count, start, done, grams)
        # Never priced backwards (see OpenPhase.add: the meter's stamps never go back, a meter of the user's might).
        t1 = max(t1, start)
        return grams + self._grams(max(0.0, energy_j - done), start, t1)

    def _grams(self, it_energy_j: float, t0: float, t1: float) -> float:
        """CO2eq of IT energy used over [t0, t1]: at the facility (PUE), at that interval's intensity."""
        return it_energy_j * self.carbon.pue / J_PER_KWH * self.carbon.intensity_between(t0, t1).g_per_kwh

    def _joules_between(self, start: "Snapshot", end: "Snapshot") -> float:
        """``joules_between``, with this rank's share of a GPU that other ranks measure too."""
        if not self._gpu_split:
            return joules_between(start, end)
        before = start.energy_j
        return sum(max(0.0, joules - before.get(name, 0.0)) * self._gpu_split.get(name, (1.0, ""))[0]
                   for name, joules in end.energy_j.items())

    def prediction(self) -> dict[str, float]:
        """The whole run's energy and CO2eq with a 95 % interval (``greencallbacks.prediction``)."""
        return predict(self.ledger, self.planned_epochs, self.planned_steps, self._seconds_left_at_train_end)

    @property
    def plans_run(self) -> bool:
        """Whether the adapter said where the framework stops, so the run can be predicted."""
        return self.planned_epochs is not None or self.planned_steps is not None or self.seconds_left is not None

    @property
    def total_energy_j(self) -> float:
        return self.ledger.energy_j

    @property
    def total_co2eq_g(self) -> float:
        return self.ledger.co2eq_g


# How far below a logged total a later one may come from summing the same amounts in another order
# (a few ulps) and still be held at the logged one (Tracker._never_back).
ROUNDING_HELD = 1e-12

def _held(total: float, logged: float) -> float:
    """``total``, or ``logged`` where ``total`` is below it by rounding alone."""
    return logged if math.isfinite(total) and logged - ROUNDING_HELD * abs(logged) <= total < logged else total


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
