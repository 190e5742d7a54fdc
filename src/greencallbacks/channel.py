"""A meter's channels (``_Channel``: one sensor plus what replaces it if it fails) and the one
background thread that keeps them read (``_Poller``). See ``greencallbacks.meter`` for how they
are read at snapshots."""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from greencallbacks.clock import unix_now, utc_text
from greencallbacks.energy_warning import warn
from greencallbacks.sensors.base import Method, Sensor

# Estimates are models, not measurements: report them with a wide, stated relative uncertainty.
ESTIMATE_RELATIVE_UNCERTAINTY = 0.5
# Off-thread counters: instantaneous power is sampled this often between two counter reads (a
# ~4 us NVML field read plus the binding's Python, which holds the GIL), and a read older than
# STALE_READ_S, or 2.5 read intervals if longer (a reader starved of CPU or stopped), is not
# carried forward, since its power samples are as old: the boundary reads in place.
POWER_SAMPLE_INTERVAL_S = 0.02
DEFAULT_READ_INTERVAL_S = 0.1
STALE_READ_S = 0.25
# A boundary that must read in place (a run's first and last, ``exact``) waits this long for a
# read in progress on the reader (NVML: ~3 ms, p99 ~15 ms). A read that hangs (a GPU falling off
# the bus) would hold the end of training for as long: past this the latest read is carried
# forward instead, and its uncertainty grows with the span carried, as at any other boundary.
EXACT_READ_WAIT_S = 0.5
STOP_WAIT_S = 1.0  # how long stopping waits for the background thread (see _Poller.stop)
ESTIMATED, SAMPLED = Method.ESTIMATED.value, Method.SAMPLED.value  # plain str: compared at every boundary
POWER_HISTORY = 64  # samples kept: ~1.3 s, more than the span between two counter reads
SLOPE_HISTORY = 16  # counter slopes kept (~1.6 s of 100 ms updates): the power's recent spread
# Finding a quantised counter's update phase: steps to observe (at most), the precision at which
# to stop early, inconsistent steps tolerated before concluding it has no steady period, and how
# often to search again (the GPU's clock and the host's drift apart slowly).
PHASE_STEPS, PHASE_PRECISION_S, PHASE_MAX_CONFLICTS, PHASE_REFRESH_S = 20, 0.0015, 3, 60.0
# Once a step has been seen the search reads back to back only around where the next one is due
# (each NVML read costs ~3.4 ms of CPU in the driver: reading for whole periods, the search took
# ~350 reads, 1.2 s of CPU, in a run's first 4 s, and as much again every PHASE_REFRESH_S). The
# zone is the window the steps can lie in, widened by this margin each side, so that its first
# read (~3 ms, p99 15 ms) most likely ends before the step; a refresh starts from the known phase,
# widened by PHASE_REFRESH_MARGIN_S (the clocks' drift over PHASE_REFRESH_S, a few ms at most).
PHASE_ZONE_MARGIN_S, PHASE_REFRESH_MARGIN_S = 0.005, 0.01
# A sensor call failing with a transient fault (``SensorError.transient``: an NVML timeout) is
# held at its last value, since a cumulative counter's next good read recovers every joule. Once
# it has failed this many times in a row over at least TRANSIENT_HOLD_S, its replacement (a GPU's
# sampled power) takes over where one can read now; where none can (the whole device not
# answering), the channel is held and retried, never given up: it counts again when the device
# answers. (Given up at the third failure, a 0.25 s NVML outage stopped counting the GPU for the
# rest of the run, as its power read failed in the same outage.) Any other fault (GPU lost,
# permission denied) degrades at once. Instantaneous power, which only refines the estimate, is
# given up after FAILURES_BEFORE_DEGRADE failures in a row where the binding says it is not
# supported; after as many of any other kind it is tried again POWER_RETRY_S later, twice as long
# after each failed try, up to POWER_RETRY_MAX_S (a failed field read costs microseconds; given
# up for good, half a second of failures cost every later 1 s epoch of a 50/700 W load 3-14 % on
# average, up to 42 %, instead of 0.2-1.5 %). A transient one ends the samples, not the sampling.
# TRANSIENT_HOLD_S: past a busy driver's hiccup, and within the power history (POWER_HISTORY)
# that boundaries are carried with meanwhile.
FAILURES_BEFORE_DEGRADE = 3
TRANSIENT_HOLD_S = 1.0
POWER_RETRY_S, POWER_RETRY_MAX_S = 0.5, 2.0


def _integral_at(samples: Sequence[tuple[float, float, float]], t: float) -> float:
    """Cumulative joules at ``t`` from (t, joules, watts) samples: interpolated inside them,
    carried at the last power beyond the newest (and back from the oldest)."""
    if t >= samples[-1][0]:
        t_s, joules, power_w = samples[-1]
        return joules + power_w * (t - t_s)
    i = bisect.bisect_right(samples, t, key=lambda sample: sample[0])
    if i == 0:
        t_s, joules, power_w = samples[0]
        return joules - power_w * (t_s - t)
    (t0, j0, _), (t1, j1, _) = samples[i - 1], samples[i]
    return j0 + (j1 - j0) * (t - t0) / (t1 - t0)



@dataclass
class _Held:
    """A counter value read while its update phase is not known, and the span [lo, hi] in which
    the update that set it lies (see _Channel._held_update_time)."""

    value: float
    lo: float
    hi: float
    first: float  # the middle of the first read that returned it: when a continuous counter took it


class _Channel:
    """One sensor plus what replaces it if it fails; its reading never goes backwards."""

    def __init__(
        self,
        sensor: Sensor,
        fallback: Callable[[], Sensor | None] | None,
        clock,
        off_thread: bool = False,
        wall_clock: Callable[[], float] = unix_now,
    ) -> None:
        self.sensor = sensor
        self.name = sensor.name
        self.kind = str(sensor.kind)
        self._fallback = fallback
        self._clock = clock
        self._wall_clock = wall_clock  # the meter's stamps: a failure's note names the time they use
        self._lock = threading.Lock()
        self._offset_j = 0.0  # energy counted by sensors this channel used before the current one
        self._base_j = 0.0  # the current sensor's reading when it took over
        self._last_j = 0.0
        self._started = clock()
        self.note = getattr(sensor, "note", "") or ""
        self._sensor_note = self.note  # the sensor's own caveat, which an outage's note is added to
        self.failed = False  # stopped counting altogether
        self._failures = 0  # sensor calls failed in a row (see FAILURES_BEFORE_DEGRADE)
        self._fault: tuple[float, BaseException] | None = None  # (when, error) of the first of them
        self._holding = False  # a transient fault persisted with nothing to replace the sensor: retried
        self._said_holding = False  # warned of it (once per channel)
        self._good_t: float | None = None  # when the sensor last answered
        self.bridged_j = 0.0  # joules estimated, not measured (see Snapshot.bridged_j)
        self.bridge_error_j = 0.0  # what those estimates may be off by (see Snapshot.bridge_error_j)
        self._power_failures = 0
        self._method_seen: object = None
        self._method_text = ""
        # Off-thread reading. The reader thread writes these under _state_lock, which is never held
        # across a sensor call, so a boundary on the training thread never waits for a slow read.
        self._off_thread_allowed = off_thread
        self._state_lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one read and phase update at a time (reader or in place)
        self._anchor: tuple[float, float, float | None] | None = None  # (t, value_j, slope_w) of the latest read
        self._anchor_on_update = False  # its t is an update of the known phase (see _update_held)
        self._slopes: deque[float] = deque(maxlen=SLOPE_HISTORY)  # the mean power of recent updates
        # Instantaneous power integrated since the reader started: (t, cumulative J, W) samples.
        self._power: deque[tuple[float, float, float]] = deque(maxlen=POWER_HISTORY)
        self._power_ok = True  # False: the sensor has no instantaneous power (never tried again)
        self._power_down = False  # the latest power sample failed: none is due soon
        self._power_retry_s, self._power_retry_at = 0.0, -math.inf  # the back-off (see POWER_RETRY_S)
        # (when a power sample first failed, the samples before it): where the device stopped
        # answering, for a failure nothing replaces (see _degrade). None while samples succeed.
        self._power_until_gap: tuple[float, list] | None = None
        self._boundary_j = 0.0  # high-water of the values handed out at boundaries
        # The counter's update phase: a time at which it stepped (None: not known). Reader thread
        # only, or a boundary reading in place.
        self._phase: float | None = None
        self._phase_error_s = 0.0  # how far the true update can be from it, either way
        self._last_read: tuple[float, float, float] | None = None  # (before, after, value)
        # While the phase is not known: the update the latest read holds (see _held_update_time),
        # that of the anchor, and that of the latest boundary carried from such an anchor, with
        # what it was carried with (anchor time, slope, power samples); put right once the phase
        # is found (see _settle).
        self._held: _Held | None = None
        self._anchor_held: _Held | None = None
        self._unsettled: tuple[_Held, float, float | None, tuple, float] | None = None  # (+ the error applied)
        self._settled_j = 0.0  # added to every value handed out (see _settle)
        # The latest boundary, where it was carried over a span before the first power sample (a
        # meter's first): (its time, its value less _settled_j, _settled_j then, how long it was
        # carried unsampled, (time, value) of the update it was put right from, the move applied),
        # see _settle_back.
        self._unsampled: tuple[float, float, float, float, tuple[float, float] | None, float] | None = None
        self._search: dict | None = None  # a phase search under way (see _learn_phase)
        self._locked_at = 0.0
        self._search_again_at = -math.inf  # after a search that found no steady period
        self._continuous = False  # the last search found it moving between any two reads

    @property
    def source(self) -> str:
        """What the energy comes from (the current sensor's: a replacement's after a failure)."""
        try:
            return str(getattr(self.sensor, "source", "") or "")
        except Exception:  # noqa: BLE001 - a user's sensor whose property raises: only words
            return ""

    @property
    def off_thread(self) -> bool:
        """Read by the background thread, not at boundaries (a fallback sensor is read in place)."""
        return self._off_thread_allowed and not self.failed and bool(getattr(self.sensor, "off_thread", False))

    @property
    def read_interval_s(self) -> float:
        return getattr(self.sensor, "update_period_s", 0.0) or DEFAULT_READ_INTERVAL_S

    @property
    def method(self) -> str:
        # Read at every boundary: formatting the enum costs more than the rest of a cheap read,
        # so keep its text until the sensor (or its method, e.g. counter -> sampled) changes.
        method = self.sensor.method
        if method is not self._method_seen:
            self._method_seen, self._method_text = method, str(method)
        return self._method_text

    @property
    def poll_interval_s(self) -> float | None:
        return None if self.failed else self.sensor.poll_interval_s

    def read(self) -> float:
        return self._read()[0]

    def _read(self, exact: bool = False) -> tuple[float, bool]:
        """(the channel's value, whether the sensor answered): a failed call holds the last value.
        ``exact``: the sensor's ``exact_energy_j`` where it has one (see ``Sensor.exact_energy_j``)."""
        with self._lock:
            if self.failed:
                return self._last_j, False
            read = (getattr(self.sensor, "exact_energy_j", None) if exact else None) or self.sensor.energy_j
            try:
                value = self._offset_j + read() - self._base_j
            except Exception as error:  # noqa: BLE001 - any sensor failure degrades, never raises
                self._failed_once(error)
                return self._last_j, False
            self._answered(value)
            return self._last_j, True

    def _answered(self, value: float) -> None:
        """The sensor answered ``value`` (under ``_lock``)."""
        if self._holding:
            self._recovered(value)
        self._failures, self._fault = 0, None
        self._good_t = self._clock()
        # A sensor must never make a window negative; hold the high-water mark.
        self._last_j = max(self._last_j, value)

    def _failed_once(self, error: BaseException) -> None:
        """A failed sensor call (under ``_lock``): a transient fault is held at its last value
        (see TRANSIENT_HOLD_S); any other degrades the channel now."""
        now = self._clock()
        self._failures += 1
        if self._fault is None:
            self._fault = (now, error)
        if not getattr(error, "transient", False):
            self._failures, self._fault, self._holding = 0, None, False
            self._degrade(error)
        elif self._failures >= FAILURES_BEFORE_DEGRADE and now - self._fault[0] >= TRANSIENT_HOLD_S:
            # Persisted: a replacement that reads now takes over; else held and retried (the
            # device answers again, or training on it could not go on either).
            if not self._degrade(error, hold=True):
                self._hold(now, error)

    def _outage_started(self, now: float) -> str:
        since = self._fault[0] if self._fault is not None else now
        try:
            return utc_text(self._wall_clock() - (now - since))
        except Exception:  # noqa: BLE001 - an injected clock failing: the note only loses its time
            return "an unknown time"

    def _hold(self, now: float, error: BaseException) -> None:
        if self._holding:
            return
        self._holding = True
        error = self._without_name(self.sensor, error)
        when = self._outage_started(now)
        carried = "carried forward at its last power" if self.off_thread else "held at its last read"
        self.note = "; ".join(filter(None, [self._sensor_note, f"no answer from {when} ({error}): {carried}"]))
        if not self._said_holding:
            self._said_holding = True
            sensor = self.sensor
            warn(
                f"greencallbacks: sensor {self.name} ({sensor.scope or sensor.name}) has not answered since {when}: "
                f"{error}. Its energy is {carried} and it is read again until it answers, which "
                f"{'recovers the span from its cumulative counter' if not self._sampled else 'bridges the span'}; "
                "labelled in the records; training continues."
            )

    @property
    def _sampled(self) -> bool:
        """Its energy is integrated power samples: its own method, or, for a share of a device
        (``Apportioned``), its device's (a MIG share read by sampling had an outage's bridge called
        "the counter's next read recovered the span", and not stated as estimated)."""
        return (getattr(self.sensor, "measured_by", "") or self.method) == SAMPLED

    def _recovered(self, value: float) -> None:
        """The sensor answers again after a held outage (under ``_lock``): a counter's read holds
        the energy of the gap; a sampled sensor's integral bridges it from its last sample, which
        is an estimate."""
        now = self._clock()
        since, error = self._fault if self._fault is not None else (now, None)
        when = self._outage_started(now)
        if self._sampled:
            self._estimated(max(0.0, value - self._last_j))
            how = "bridged between its last and next power sample"
        else:
            how = "the counter's next read recovered the span"
        error = self._without_name(self.sensor, error) if error is not None else "no answer"
        self.note = "; ".join(filter(None, [self._sensor_note, f"no answer for {now - since:.3g} s from {when} ({error}): {how}"]))
        self._holding = False

    def refresh(self) -> float:
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> float:
        """Read the counter and make it the anchor that boundaries are carried forward from.

        A quantised counter (NVML steps every 100 ms) holds the energy of its last update, not of
        the read's time. Once the update phase is known the anchor is put at that update, so no
        quantisation lag is carried into boundaries; until then (the first ~0.1-0.3 s of a run),
        in the middle of the span the update it holds can lie in (see _held_update_time).
        """
        before = self._clock()
        value, answered = self._read()
        after = self._clock()
        if not answered:
            # Nothing new: the anchor stays at the last read, and boundaries carry it forward from
            # there (moved to now with the held value, its slope fell to 0 and the outage was lost).
            return value
        t = 0.5 * (before + after)  # the counter is sampled somewhere inside a read of milliseconds
        period = getattr(self.sensor, "update_period_s", 0.0) or 0.0
        held, keep, on_update = None, False, False
        if period > 0:
            self._learn_phase(before, after, value, period)
            held = self._held_update_time(before, after, value, period)
            if self._phase is None:
                if self._continuous:
                    held = None
                else:
                    t = 0.5 * (held.lo + held.hi)
            else:
                held = None
                k = math.floor((before - self._phase) / period)
                k_after = math.floor((after - self._phase) / period)
                # Within the phase's own error of an update, the value tells which it holds: a
                # provisional phase 1.9 ms early took a read 1.6 ms before an update for the one
                # after it, and the boundaries carried from it lacked that update (-35 J at 350 W).
                first = math.floor((before - self._phase_error_s - self._phase) / period)
                last = math.floor((after + self._phase_error_s - self._phase) / period)
                held_k = self._update_held(value, first, last, period) if first != last else None
                if held_k is not None:
                    k = k_after = held_k
                if k == k_after:
                    t, on_update = self._phase + k * period, True
                elif self._anchor is not None and before - self._anchor[0] < 2 * period:
                    # The read straddled an update: which one it holds is unknown. Keep carrying
                    # the previous anchor rather than risk one period's lag.
                    keep = True
                else:
                    # Reads slower than the period straddle every time: the middle of the updates
                    # it may hold is at most half the span off, where an anchor never moved would age.
                    t = self._phase + 0.5 * (k + k_after) * period
            # The value was taken inside the read: the update it holds came before the read
            # returned, wherever a provisional phase (ms off) puts it. Put after it, a step value
            # carried it back at the power sampled so far, and a boundary 1 ms later along a sample
            # taken since: 1.1 J below that step value.
            t = min(t, after)
        self._last_read = (before, after, value)
        with self._state_lock:
            if not keep:
                previous = self._anchor
                slope = previous[2] if previous is not None else None
                # A slope over less than one update period is mostly quantisation: keep the last one.
                if previous is not None and t - previous[0] >= max(period, 1e-3):
                    slope = (value - previous[1]) / (t - previous[0])
                    self._slopes.append(slope)
                self._anchor, self._anchor_held = (t, value, slope), held
                self._anchor_on_update = on_update
            if period > 0:
                self._settle(period)
                self._settle_back(period)
        return value

    def _update_held(self, value: float, k: int, k_after: int, period: float) -> int | None:
        """Which of updates ``k``..``k_after`` (of the known phase) a read of ``value`` holds, told
        by the anchor's, where that is at an update: the same value, the same update; a higher
        one, a later update. None where that leaves more than one."""
        anchor = self._anchor
        if anchor is None or not self._anchor_on_update:  # (between updates: slow reads)
            return None
        # (Put by an earlier estimate of the phase, it is a few ms off the current one's update.)
        j = round((anchor[0] - self._phase) / period)
        if value == anchor[1]:
            return j if k <= j <= k_after else None
        first = max(k, j + 1)
        return first if value > anchor[1] and first == k_after else None

    def _held_update_time(self, before: float, after: float, value: float, period: float) -> _Held:
        """Where the update this read holds can lie, the phase not known: before the read took
        its value, less than a period before it, and after the last read that held an older value;
        reads that hold the same value again narrow it (each one's period before it), and so does
        the step to the next value (one period after it). The anchor is put in its middle. (Half a
        period before each read, as it was, put an update that reads kept seeing at most half a
        period back: on average it is older, and a boundary carried from it lacked that power.)"""
        last, held = self._last_read, self._held
        lo, hi = before - period, after
        if last is not None and last[2] == value:
            if held is not None and held.value == value and max(lo, held.lo) <= min(hi, held.hi):
                held.lo, held.hi = max(lo, held.lo), min(hi, held.hi)  # (the anchor's and a boundary's too)
                return held
        elif last is not None:
            lo = max(lo, last[0])  # it stepped after the last read began
            if held is not None and held.value == last[2]:
                step_lo, step_hi = max(held.lo, last[0] - period), min(held.hi, after - period)
                if step_lo <= step_hi:
                    held.lo, held.hi = step_lo, step_hi
        if lo > hi:  # reads that contradict a steady period: as if nothing else were known
            lo, hi = before - period, after
        self._held = _Held(value, lo, hi, 0.5 * (before + after))
        return self._held

    def _settle(self, period: float) -> None:
        """The latest boundary was carried from an anchor put where its update could lie, the
        phase not known yet (a run's first boundary, and epoch 0's when it begins at once: HF,
        Keras). Once the phase is known (or that the counter moves continuously), so is when that
        update was, and that boundary was off by the power over the difference, up to half a
        period of it: 34 J at 680 W. Every later value takes the same error (``_settled_j``), so
        that the window after that boundary is right, as is every one after it; the anchor, if
        still the current one, is moved to its update. A provisional phase (from one step, up to
        ~10 ms off) is refined by the search's next steps: so is the error, until the search ends
        or the next boundary is handed out, after which moving it would move that window's.
        (Under ``_state_lock``.)"""
        if self._unsettled is None:
            return
        held, t_a, slope, power, applied_j = self._unsettled
        if self._continuous:
            when = held.first
        elif self._phase is not None:
            margin = 0.05 * period  # a provisional phase is a few milliseconds off
            k = math.floor((held.lo - margin - self._phase) / period)
            updates = [self._phase + j * period for j in (k, k + 1, k + 2)
                       if held.lo - margin <= self._phase + j * period <= held.hi + margin]
            if len(updates) != 1:  # a read that straddled an update: which one, unknown
                # No later read can tell any more, nor, the phase final, a later step of the search:
                # what was applied stays. Left pending, a step value gave the last boundary's value
                # until the next one (a counter stepping up to 25 ms off its grid: ~2 J logged to
                # the end of a 6 s epoch 0 of 2-3 kJ).
                if held is not self._held and (not applied_j or self._search is None):
                    self._unsettled = None
                return
            when = updates[0]
        elif self._search is not None and (self._anchor_held is held or held.hi - held.lo < period):
            # Not known yet: the middle of the span its update can lie in, which the reads since
            # narrow: reads of the same update, which move the anchor with it (left where the
            # boundary put it, the windows after it lacked that shift's power: an evaluation of
            # 30 ms, over before the phase was found, read 30 % low), or the step after it, where
            # that leaves less than a period (reads slower than the period bound it no better).
            when = 0.5 * (held.lo + held.hi)
        else:
            if self._search is None:
                # The search gave up (no steady period; tried again PHASE_REFRESH_S later): nothing
                # tells the update's time sooner. What was applied stays; left pending, step values
                # gave the last boundary's value until the next one, as above.
                self._unsettled = None
            return
        # With the power samples the boundary was carried with: samples taken since would bridge
        # a gap in them (a reader starved of CPU) at the mean of its two ends' power.
        error_j = 0.0
        if power:
            error_j = _integral_at(power, when) - _integral_at(power, t_a)
        elif slope is not None:
            error_j = slope * (when - t_a)
        self._settled_j += error_j - applied_j
        final = self._continuous or self._search is None
        if self._anchor_held is held and self._anchor is not None:
            # Until final, the anchor stays tied to that update, so that a later estimate of when
            # it was moves the anchor with the boundary (a provisional one moved the boundary alone).
            self._anchor = (when, self._anchor[1], self._anchor[2])
            self._anchor_on_update = self._phase is not None and not self._continuous
            self._anchor_held = None if final else held
        self._unsettled = None if final else (held, t_a, slope, power, error_j)

    def _settle_back(self, period: float) -> None:
        """The latest boundary was carried from its anchor's update at the power sampled after it
        (a meter's first read holds an update up to a period old, and no power was sampled before
        it): a power step in between was billed at the wrong power (+5 to +7 J on a 3.5 J
        validation begun just after training's higher power). The next update's read tells its
        value too, carried back to the boundary with the power sampled since, from just after it,
        where that is surer (the update's time, a held one's span, and the samples' gap after the
        boundary are shorter than the span carried unsampled). The two differ by the error of
        that span, common to every boundary carried from that anchor, and by the steps sampled
        from its end to the update (each integrated as a ramp: off by at most its size times half
        the gap around it), which are each boundary's own: the boundary is moved the least that
        leaves the difference within the steps' share, so that a step sampled just after it (a
        phase's own power) leaves it as _settle put it. Every later value takes the move, as in
        _settle, and again as the phase search tells when the updates were; a counter found to
        move continuously takes it back (its reads were no updates). (Under ``_state_lock``.)"""
        pending, anchor, power, held = self._unsampled, self._anchor, self._power, self._anchor_held
        if pending is None:
            return
        t, value_j, settled_j, unsampled_s, update, applied_j = pending
        if self._continuous:
            self._settled_j -= applied_j
            self._unsampled = None
            return
        if not power:
            if not self._power_ok or self._power_down:
                # No sample will come (a GPU that reports no instantaneous power), or none soon (its
                # reads failing): left pending, every step value gave the last boundary's value,
                # flat through every epoch (through the failure).
                self._unsampled = None
            return
        if update is None:  # the first read of an update after the boundary
            if anchor is None or anchor[0] <= t:
                return
            if self._anchor_on_update:
                unsure_s = self._phase_error_s
            elif held is not None:
                unsure_s = 0.5 * (held.hi - held.lo)
            else:
                return
            update = anchor[:2]
        elif self._phase is not None:  # (else as it was first put)
            unsure_s = self._phase_error_s
            update = (self._phase + round((update[0] - self._phase) / period) * period, update[1])
        else:
            if self._search is None:  # the search gave up: as in _settle, what was applied stays
                self._unsampled = None
            return
        if unsure_s + max(0.0, power[0][0] - t) >= unsampled_s:
            if self._search is None:
                # Nor will it be surer: the phase is final and the oldest sample only moves on
                # (64 kept, ~1.3 s: the search took ~3 s). What was applied stays; left pending, a
                # step value gave the last boundary's value until the next one (epoch 0 begun at
                # once, as HF and Keras do, read ~2 J to its end, 2-3 kJ in 6 s).
                self._unsampled = None
            return
        forward_j = value_j - (self._settled_j - settled_j - applied_j)  # as _settle put it
        back_j = update[1] - (_integral_at(power, update[0]) - _integral_at(power, t))
        steps_j = sum(0.5 * abs(p1 - p0) * (t1 - t0) for (t0, _, p0), (t1, _, p1) in zip(power, list(power)[1:])
                      if t0 < update[0])
        move_j = math.copysign(max(0.0, abs(back_j - forward_j) - steps_j), back_j - forward_j)
        self._settled_j += -move_j - applied_j
        self._unsampled = None if self._search is None else (t, value_j, settled_j, unsampled_s, update, -move_j)

    def _learn_phase(self, before: float, after: float, value: float, period: float) -> None:
        """Find when the counter steps. While searching, reads follow each other closely; a step
        seen between two reads happened after the first began and before the second returned,
        whatever the reads' latency or the GIL's delays. Those spans, taken modulo the period,
        are intersected down to a few milliseconds. The search runs first, again every
        PHASE_REFRESH_S (clock drift), and again at once if a period passes without a step.
        Reads follow each other closely only in the search's zone, around where the next step is
        due (see PHASE_ZONE_MARGIN_S), and everywhere until a step has been seen or when zones
        pass without one (see _missed)."""
        last, locked = self._last_read, self._phase is not None
        if self._search is None and before >= self._search_again_at and (
            not locked or before - self._locked_at > PHASE_REFRESH_S
        ):
            # A refresh looks around the known phase: its zone is wide enough for the two close
            # reads without a step between that every search needs before it (see "rests").
            zone = self._zone(self._phase, self._phase, before, period, PHASE_REFRESH_MARGIN_S) if locked else None
            self._search = self._new_search(provisional=not locked, zone=zone)
        search = self._search
        if (last is not None and value == last[2] and search is not None and before > last[1]
                and after - last[0] < 0.9 * period):
            search["rests"] += 1  # two close reads, no step between: it does not move continuously
        if last is None or value == last[2]:
            if last is not None and locked and search is None and before - last[1] > 1.5 * period:
                self._phase = None  # wrong: until found again, reads are anchored as if unknown
                self._search = self._new_search(provisional=True)
            elif search is not None and search["zone"] is not None and before > search["zone"][1]:
                self._missed(search, after, period)  # the zone passed without a step
            return
        if search is None:
            return
        lo, hi, zone = last[0], after, search["zone"]
        # A longer span might hold two updates. In a zone, a span from a read before it (a period
        # earlier, less the zone) narrows no right window, and could cut a wrong one (a restarted
        # counter's) to a sliver that passes for precise: only the zone's own reads count.
        if hi - lo >= 0.9 * period or (zone is not None and lo < zone[0] - PHASE_ZONE_MARGIN_S):
            if zone is not None and before >= zone[0]:
                self._missed(search, after, period)  # it stepped before the zone's first read ended
            return
        if not search["rests"]:
            # Steps between reads closer than its period, and never a rest: a counter that moves
            # continuously (or reads too slow to tell), which has no phase to find.
            if self._inconsistent(search, before):
                self._continuous = True
            return
        if search["window"] is not None:
            w_lo, w_hi = search["window"]
            shift = round((lo + hi - w_lo - w_hi) / 2 / period) * period
            lo, hi = max(w_lo, lo - shift), min(w_hi, hi - shift)
            if lo > hi:  # no common update time: it does not step at a steady period
                if self._inconsistent(search, before):
                    return
                lo, hi, search["steps"] = last[0], after, 0
        search["window"], search["steps"] = (lo, hi), search["steps"] + 1
        search["zone"], search["missed"] = self._zone(lo, hi, after, period, PHASE_ZONE_MARGIN_S), 0
        # Provisional at once when none is known (a few ms off beats a period's lag); a search
        # that refreshes a known phase replaces it only once it is as precise.
        done = search["steps"] >= PHASE_STEPS or (search["steps"] >= 2 and hi - lo < PHASE_PRECISION_S)
        if done or search["provisional"]:
            self._phase, self._phase_error_s = 0.5 * (lo + hi), 0.5 * (hi - lo)
        if done:
            self._search, self._locked_at, self._continuous = None, before, False

    @staticmethod
    def _new_search(provisional: bool, zone: tuple[float, float] | None = None) -> dict:
        return {"window": None, "steps": 0, "conflicts": 0, "rests": 0, "provisional": provisional,
                "zone": zone, "missed": 0}

    def _inconsistent(self, search: dict, t: float) -> bool:
        """The counter did not step as a steady period would. Past PHASE_MAX_CONFLICTS the search
        ends without a phase, to be tried again PHASE_REFRESH_S later: returns whether it did."""
        search["conflicts"] += 1
        if search["conflicts"] <= PHASE_MAX_CONFLICTS:
            return False
        self._phase, self._search, self._search_again_at = None, None, t + PHASE_REFRESH_S
        return True

    def _missed(self, search: dict, t: float, period: float) -> None:
        """The step due in the search's zone was not seen between two of its reads: mostly a first
        read that began late (the reader waits for the GIL, up to its 5 ms switch interval) or
        took long, else a window gone wrong (the counter restarted). The next period's zone is
        tried, twice as wide; past a second miss in a row the reads follow each other everywhere
        until the next step, which tests the window as every step does (a conflict starts a new
        one, see PHASE_MAX_CONFLICTS)."""
        search["missed"] += 1
        window, phase = search["window"], self._phase
        if search["missed"] > 1 or (window is None and phase is None):
            search["zone"] = None
        elif window is not None:
            search["zone"] = self._zone(*window, t, period, 2 * PHASE_ZONE_MARGIN_S)
        else:  # a refresh that has seen no step yet
            search["zone"] = self._zone(phase, phase, t, period, 2 * PHASE_REFRESH_MARGIN_S)

    @staticmethod
    def _zone(lo: float, hi: float, t: float, period: float, margin: float) -> tuple[float, float]:
        """Where to look for the next step after ``t``, for a counter stepping in [lo, hi] shifted
        by whole periods: the first such span that begins after ``t``, widened by ``margin`` each
        side. (After the read that saw a step, whose end is often that step's ``hi``.)"""
        shift = (math.floor((t - lo) / period) + 1) * period
        return lo + shift - margin, hi + shift + margin

    def _straddled(self, period: float) -> bool:
        """Whether the latest read spans an update of the known phase (which one it holds: unknown)."""
        phase, last = self._phase, self._last_read
        if phase is None or last is None:
            return False
        return math.floor((last[0] - phase) / period) != math.floor((last[1] - phase) / period)

    def next_read_at(self, now: float) -> float:
        """When the reader should read next: while searching for the phase, back to back in the
        search's zone (everywhere without one) and not before it; mid-way between two updates
        once it is known (far from either, so a read's latency cannot blur which update it saw);
        at the update period otherwise."""
        period = getattr(self.sensor, "update_period_s", 0.0) or 0.0
        search = self._search  # (a boundary reading in place may end the search meanwhile)
        if period > 0 and search is not None and self._fault is None:  # (not while it fails: retried as usual)
            zone = search["zone"]
            if zone is None:
                return now + period / 50
            if now < zone[0] and self._straddled(period):
                # The read that saw the step may hold either update: one more holds the new one,
                # so that boundaries are not carried from the one before until the next zone.
                return now
            return max(now, zone[0])
        if period <= 0 or self._phase is None:
            return now + self.read_interval_s
        return self._phase + (math.floor((now - self._phase) / period) + 1.5) * period

    def sample_power(self) -> None:
        """One instantaneous-power sample, integrated (reader thread)."""
        if not self._power_ok:
            return
        # Stamped before the call: the read itself takes microseconds, but getting the GIL back
        # after it can take milliseconds while the training thread runs Python.
        t = self._clock()
        if t < self._power_retry_at:  # failing: tried again later (see POWER_RETRY_S)
            return
        try:
            power = self.sensor.power_now_w()
        except Exception as error:  # noqa: BLE001 - power only refines the estimate; the counter still counts
            power = None
            if not getattr(error, "transient", False):  # (a timeout: sampling goes on after it)
                self._power_failures += 1
            unsupported = False
            if self._power_failures >= FAILURES_BEFORE_DEGRADE:
                unsupported = bool(getattr(error, "unsupported", False))
                self._power_retry_s = min(POWER_RETRY_MAX_S, 2 * self._power_retry_s or POWER_RETRY_S)
                self._power_retry_at = t + self._power_retry_s
        else:
            self._power_failures, self._power_retry_s = 0, 0.0
            unsupported = power is None
        self._power_down = power is None
        if power is None:
            # The samples end here: carrying the last one's watts over the gap would bill the power
            # of a moment for seconds. Without them, boundaries carry the counter's slope.
            with self._state_lock:
                if self._power and self._power_until_gap is None:
                    self._power_until_gap = (t, list(self._power))
                self._power.clear()
            self._power_ok = not unsupported
            return
        with self._state_lock:
            self._power_until_gap = None
            if self._power and t > self._power[-1][0]:
                t_p, joules, last_w = self._power[-1]
                self._power.append((t, joules + 0.5 * (last_w + power) * (t - t_p), power))
            elif not self._power:
                self._power.append((t, 0.0, power))

    @property
    def samples_power(self) -> bool:
        return self._power_ok

    def estimate(self, now: float, stale_ok: bool = False, hand_out: bool = False) -> tuple[float, float, float] | None:
        """(value, seconds carried, joules that carrying may be off by for lack of power samples)
        at ``now`` from the latest read; None if there is none (or none recent, unless
        ``stale_ok``). ``hand_out``: a boundary's, settled later with its anchor if that is not
        known well yet (see _settle)."""
        with self._state_lock:
            anchor = self._anchor
            if anchor is None or (not stale_ok and abs(now - anchor[0]) > max(STALE_READ_S, 2.5 * self.read_interval_s)):
                return None
            t_a, value, slope = anchor
            power = self._power
            if power:  # (carried back at the oldest sample's power if the anchor predates it)
                value += _integral_at(power, now) - _integral_at(power, t_a)
            elif slope is not None:
                value += slope * (now - t_a)
            unsampled_s = min(power[0][0] if power else now, now) - t_a
            if hand_out:
                held = self._anchor_held
                self._unsettled = None if held is None else (held, t_a, slope, tuple(power), 0.0)
                self._unsampled = (now, value, self._settled_j, unsampled_s, None, 0.0) if unsampled_s > 0 else None
            value += self._settled_j
            # Carried without power samples (their field failing, or a GPU without it), at the
            # counter's slope: off by up to the power's swing over that span, which a spiky load
            # makes far more than the window's power times the span (a 50/700 W load: |error| above
            # the stated uncertainty in a third of 1 s windows, up to 7.8 times it). Bounded by the
            # spread of the mean power of recent updates (the counter's own reads tell it); zero
            # where samples span it, so sampled windows state what they did.
            spread_w = max(self._slopes) - min(self._slopes) if unsampled_s > 0 and self._slopes else 0.0
        return value, abs(now - t_a), max(0.0, unsampled_s) * spread_w

    def boundary(self, now: float, exact: bool = False) -> tuple[float, float, float]:
        """The value a snapshot at ``now`` records, how many seconds it was carried forward, and
        the joules that carrying may be off by for lack of power samples (see ``estimate``)."""
        if not self.off_thread:
            value, answered = self._read(exact)
            value += self._settled_j  # (from when it was read off the thread)
            # A sensor not answering (held through a transient fault): the span since its last
            # answer widens this boundary's uncertainty, as a carried read's does.
            held = not answered and not self.failed and self._fault is not None and self._good_t is not None
            carried = max(0.0, now - self._good_t) if held else 0.0  # type: ignore[operator]
            slope_error_j = 0.0
        else:
            # While the sensor does not answer (a fault held), the reader retries it: a boundary
            # carries the last read forward rather than try again itself, and wait for it.
            estimate = None if exact else self.estimate(now, stale_ok=self._fault is not None, hand_out=True)
            if estimate is None:
                estimate = self._read_in_place(now, exact)
            value, carried, slope_error_j = estimate
        with self._state_lock:
            # Never below a value already handed out: windows stay non-negative and telescoping.
            self._boundary_j = max(self._boundary_j, value)
            return self._boundary_j, carried, slope_error_j

    def _read_in_place(self, now: float, exact: bool) -> tuple[float, float, float]:
        """Read the counter now (the reader carries on from this read), then carry it from the
        update it holds to ``now`` like any other read. Where the reader is inside a read (a slow
        or hung one: GPU in an error state), a boundary that need not be exact does not wait for
        it: it carries the latest read forward, however old, and its uncertainty grows with that.

        The read runs on a thread of its own, waited for up to EXACT_READ_WAIT_S: one that hangs
        held the training thread for as long (the end of a fit, 3 s a read), and is carried
        forward from the latest read instead. Where no power was sampled yet (a run's first
        boundary, the first after a pause) the read takes one sample with it, so that it is carried
        from the update it holds to ``now`` like any other: back, from a read that holds a time
        after ``now`` (50-300 ms reads: the run's first window read 0 J, and epoch 0 had its
        energy), and forward, from where its update can lie (the phase not known yet). Not carried
        forward, it lacked the power of the counter's age (0-100 ms), and so did epoch 0's start
        when it began at once: each run's first epoch was high by up to 68 J at 680 W (+36 J on
        average in simulation; +30 to +63 J on an H200)."""
        if exact or self._anchor is None:
            free = self._refresh_lock.acquire(timeout=EXACT_READ_WAIT_S)
        else:
            free = self._refresh_lock.acquire(blocking=False)
        if not free:
            return self.estimate(now, stale_ok=True, hand_out=True) or (self._boundary_j, 0.0, 0.0)
        done, read = threading.Event(), []

        def read_and_sample() -> None:
            try:
                read.append(self._refresh())
                if not self._power and self._anchor is not None:
                    self.sample_power()
            finally:
                self._refresh_lock.release()
                done.set()

        threading.Thread(target=read_and_sample, name="greencallbacks-read", daemon=True).start()
        if not done.wait(EXACT_READ_WAIT_S) or not read:
            return self.estimate(now, stale_ok=True, hand_out=True) or (self._boundary_j, 0.0, 0.0)
        # Carried to `now` from when the read was made: after a wait, later than `now`.
        return self.estimate(now, stale_ok=True, hand_out=True) or (read[0] + self._settled_j, 0.0, 0.0)

    def peek(self, now: float) -> tuple[float, float]:
        """Like ``boundary`` but never reads a slow counter: a slow channel gives its latest
        counter read, not carried forward to ``now``. The next boundary carries that read forward,
        so it can only be higher: a live figure never exceeds the total the next phase end logs
        (it lags by at most one update period instead). While a correction to the values handed out
        is pending (``_settle``, ``_settle_back``: the counter's update phase not yet found, a
        meter's first second), it gives the last boundary's value, which no correction moves."""
        if not self.off_thread:
            # A live figure never waits for the reader thread, which holds the channel while it
            # polls (the CPU estimate lists the process tree: ~2 ms every 2 s on a 2-CPU VM):
            # then it gives the channel's last value, which the next boundary carries on from.
            # So does one whose read adds a power sample: the records would depend on when step
            # values were logged (a GPU read on by sampled power after its counter failed: an
            # epoch of 445.2 J read 455.0 J with a step value every 30 ms).
            if getattr(self.sensor, "samples_when_read", False) or not self._lock.acquire(blocking=False):
                return self._last_j + self._settled_j, 0.0
            self._lock.release()
            return self.read() + self._settled_j, 0.0
        with self._state_lock:
            anchor = self._anchor
            # A pending correction moves every later value, down too: the search for the update
            # phase moved them by up to 14 J between two logging steps (50-700 W), the step values
            # went back by it, and an epoch's total came out below the step value before it.
            # Holding the figure given as a boundary instead made the records depend on whether
            # step values were logged (4.2 J of a 30 ms validation's 21 J billed to the epoch before).
            if anchor is None or self._unsettled is not None or self._unsampled is not None:
                return self._boundary_j, 0.0
            if anchor[0] <= now:
                return max(self._boundary_j, anchor[1] + self._settled_j), now - anchor[0]
        # An anchor at its update's time, which the phase puts a few milliseconds after the read
        # returned: a boundary carries it back to now, so must this (the next boundary came out
        # 0.06 J below the step value before it).
        carried = self.estimate(now, stale_ok=True)
        return (self._boundary_j, 0.0) if carried is None else (max(self._boundary_j, carried[0]), carried[1])

    def forget(self) -> None:
        with self._state_lock:
            self._anchor, self._unsampled = None, None
            self._power.clear()
            if self._search is not None and self._search["provisional"]:
                # A phase a few ms off tells which update a read holds only against the anchor's
                # value (see _update_held); without it the first read after the pause took the
                # update before it for the one it held: that boundary read a period low, and the
                # first window after it billed 68 J too many at 700 W. Found again, as at a start.
                self._phase, self._search = None, None

    def poll(self) -> None:
        with self._lock:
            if self.failed:
                return
            try:
                value = self.sensor.poll()
            except Exception as error:  # noqa: BLE001
                self._failed_once(error)
                return
            if isinstance(value, (int, float)) and math.isfinite(value):
                # What a failure keeps (_degrade): the energy to this poll. Kept only at boundaries,
                # a RAPL zone or a sampled GPU failing 50 s into an epoch recorded 0 J for it.
                self._answered(self._offset_j + value - self._base_j)
            else:
                self._failures = 0

    def _degrade(self, error: BaseException, hold: bool = False) -> bool:
        """Replace the failed sensor by its fallback, or stop counting it; with ``hold`` (a
        transient fault), only where a replacement reads now. Returns whether the sensor went."""
        broken = self.sensor
        replacement = None
        if self._fallback is not None:
            try:
                replacement = self._fallback()
                if replacement is not None:
                    base_j = replacement.energy_j()
            except Exception:  # noqa: BLE001
                replacement = None
        if replacement is None and hold:
            return False
        now = self._clock()
        when = self._outage_started(now) if hold else None
        try:
            when = when or utc_text(self._wall_clock())
        except Exception:  # noqa: BLE001 - an injected clock failing: the note only loses its time
            when = "an unknown time"
        failure, error = error, self._without_name(broken, error)
        if replacement is not None:
            # The energy from the broken sensor's last read to the replacement's first was lost at
            # every switch (a tenth of a second of a counter turned sampled, more after an outage).
            bridge_j, watts = self._bridge(now, replacement, failure)
        try:
            broken.close()
        except Exception:  # noqa: BLE001
            pass
        self._failures, self._fault, self._holding = 0, None, False
        if replacement is not None:
            self._offset_j = self._last_j = self._last_j + bridge_j
            self._base_j = base_j
            self._estimated(bridge_j)
            self.sensor = replacement
            self._sensor_note = getattr(replacement, "note", "") or ""
            bridged = f" (the {bridge_j / watts:.2g} s before it estimated at {watts:.4g} W)" if bridge_j > 0 else ""
            # How each measured (a share of a device: by its device's counter, or sampled power).
            was, now_by = (getattr(s, "measured_by", "") or s.method for s in (broken, replacement))
            self.note = f"{was} until {when} ({error}); {now_by} since{bridged}"
            warn(
                f"greencallbacks: sensor {self.name} ({broken.scope or broken.name}) failed: {error}. "
                f"Its energy is {now_by} from now on and labelled so; training continues."
            )
        else:
            # Nothing reads it on. Up to when it stopped answering (its power samples tell, read
            # off the thread; else its last good read and this failed one bound it), its energy
            # since the last counter read is estimated, not dropped: boundaries had carried it
            # past that read, so the epoch a GPU was lost in read 0 J.
            bridge_j, error_j, bridge_s = self._bridge_to_failure(now)
            self._offset_j = self._last_j = self._last_j + bridge_j
            self._estimated(bridge_j, error_j)
            self.failed = True
            # Labelled as the switch to a replacement is: the span to the loss is an estimate.
            self.note = f"stopped counting at {when} ({error})"
            if bridge_s > 0:
                self.note += f"; the {bridge_s:.2g} s before it estimated at {bridge_j / bridge_s:.4g} W"
            warn(
                f"greencallbacks: sensor {self.name} ({broken.scope or broken.name}) failed: {error}. "
                "It is no longer counted (labelled in the records); training continues."
            )
        return True

    @staticmethod
    def _without_name(sensor: Sensor, error: BaseException) -> str:
        """The error's text without the sensor's name, which the sensor's message may start with
        ("gpu0 (GPU-...): NVML ... failed"): the channel's own text says it once."""
        text = str(error)
        for prefix in (f"{sensor.name} ({sensor.scope}): ", f"{sensor.name}: "):
            if text.startswith(prefix):
                return text[len(prefix):]
        return text

    def _estimated(self, joules: float, error_j: float | None = None) -> None:
        """``joules`` were estimated, not measured: off by ``error_j`` at most (by default
        ESTIMATE_RELATIVE_UNCERTAINTY of them)."""
        self.bridged_j += joules
        self.bridge_error_j += ESTIMATE_RELATIVE_UNCERTAINTY * joules if error_j is None else error_j

    def _bridge_to_failure(self, now: float) -> tuple[float, float, float]:
        """(joules, what they may be off by, seconds) from the latest read to when the device
        stopped answering, less what the latest read already holds. Where power samples span it,
        to the middle of the last good one and the first call that failed (a power sample's, else
        this one at ``now``); else at the counter's last slope (see _bridge_at_slope). Nothing
        where it was not read off the thread (no anchor)."""
        with self._state_lock:
            anchor, gap, slopes = self._anchor, self._power_until_gap or (now, list(self._power)), list(self._slopes)
        failed_at, samples = gap
        if anchor is None:
            return 0.0, 0.0, 0.0
        if not samples or not samples[0][0] <= anchor[0] <= failed_at:
            return self._bridge_at_slope(anchor, slopes, now)
        end = 0.5 * (samples[-1][0] + failed_at)
        carried = anchor[1] + _integral_at(samples, end) - _integral_at(samples, anchor[0])
        joules = max(0.0, carried - self._last_j)  # (a read after the anchor may hold part of it)
        return joules, ESTIMATE_RELATIVE_UNCERTAINTY * joules, end - anchor[0]

    def _bridge_at_slope(self, anchor: tuple[float, float, float | None], slopes: list[float],
                         now: float) -> tuple[float, float, float]:
        """The span from the anchor's update to a loss with no power samples (a GPU without the
        field, or while it fails): the device answered the last read, so was lost between then
        and this failed call. Left out, a 300 W GPU's epoch was 29 J low on average (up to 45 J)
        and stated a median of 15 J (84 % of epochs beyond it, up to 91x). Now estimated at the
        counter's last slope to the middle of that span, and stated as far as a power within the
        recent updates' range (their per-update means, as in ``estimate``) over the shortest and
        the longest span can take it."""
        t_a, value_j, slope = anchor
        if slope is None or self._good_t is None or now <= t_a:
            return 0.0, 0.0, 0.0
        alive_s = max(0.0, self._good_t - t_a)  # it answered then: drew power this long at least
        lost_s = max(alive_s, now - t_a)
        watts = [*slopes, slope]
        low_j, high_j = min(watts) * alive_s, max(watts) * lost_s
        span_s = 0.5 * (alive_s + lost_s)
        joules = min(max(slope * span_s, low_j), high_j)
        error_j = max(joules - low_j, high_j - joules)
        held_j = max(0.0, self._last_j - value_j)  # (a read that straddled an update: the anchor before it)
        return max(0.0, joules - held_j), error_j, span_s

    def _bridge(self, now: float, replacement: Sensor, error: BaseException | None = None) -> tuple[float, float]:
        """(joules, mean watts) from the current sensor's last good read to ``now``, estimated:
        from the instantaneous power samples where they span the gap, else at the mean of the
        latest power known (a sample, the counter's slope, the run's mean) and the replacement's.
        A sensor that answered without counting (``SensorError.stalled_since``: an AMD accumulator
        standing still) is bridged from then at the power it gave: its reads, and the run's mean
        from them, hold none of that span (an accumulator still from the start bridged 0 J)."""
        stalled, stalled_w = getattr(error, "stalled_since", None), getattr(error, "watts", None)
        if (stalled is not None and isinstance(stalled_w, (int, float)) and math.isfinite(stalled_w)
                and stalled_w > 0 and not self.off_thread and now > stalled):
            return stalled_w * (now - stalled), float(stalled_w)
        with self._state_lock:
            anchor, power = self._anchor, list(self._power)
        # The last read holds the energy to its anchor's time (a quantised counter's update).
        from_anchor = self.off_thread and anchor is not None
        start = anchor[0] if from_anchor else self._good_t
        if start is None or now <= start:
            return 0.0, 0.0
        gap = now - start
        # What the latest read holds past the anchor: a read that may hold the next update (it
        # straddled one) keeps the anchor before it, and the bridge from there billed that update
        # twice (+30 J at 300 W where the counter turned unsupported just after such a read).
        held_j = max(0.0, self._last_j - anchor[1]) if from_anchor else 0.0
        if power and power[0][0] <= start:
            joules = max(0.0, _integral_at(power, now) - _integral_at(power, start) - held_j)
            return joules, joules / gap
        last_w = power[-1][2] if power else anchor[2] if anchor is not None and anchor[2] is not None else None
        if last_w is None:  # the mean power of what the sensor read, up to its last read
            last_w = self._last_j / (start - self._started) if start > self._started else 0.0
        try:
            new_w = replacement.power_now_w()
        except Exception:  # noqa: BLE001 - only refines the estimate
            new_w = None
        watts = last_w if not isinstance(new_w, (int, float)) or not math.isfinite(new_w) else 0.5 * (last_w + new_w)
        watts = max(0.0, watts)
        joules = max(0.0, watts * gap - held_j)
        return joules, joules / gap

    def uncertainty_j(self, energy_j: float, duration_s: float, carried_s: float = 0.0, bridge_error_j: float = 0.0,
                      slope_error_j: float = 0.0) -> float:
        """The window's stated error; its estimated energy (Snapshot.bridged_j) may be off by
        ``bridge_error_j``, its boundaries carried without power samples by ``slope_error_j``.
        Those two are bounds, added as the boundaries' are (see Meter.between): a GPU lost without
        power samples is off by the start's carried slope and by its span to the loss (in
        quadrature, 3.5 % of 1 s windows of a 50/700 W load beat it, by up to 1.34x)."""
        if self.method == ESTIMATED:
            bridge_error_j = 0.0  # (the whole window is stated as estimated)
        return math.hypot(self._measured_uncertainty_j(energy_j, duration_s, carried_s), slope_error_j + bridge_error_j)

    def _measured_uncertainty_j(self, energy_j: float, duration_s: float, carried_s: float) -> float:
        method = self.method
        if method == ESTIMATED:
            return ESTIMATE_RELATIVE_UNCERTAINTY * energy_j
        # A stated share of a device (apportioned) errs in proportion to the energy, whatever the window.
        stated_j = (getattr(self.sensor, "relative_uncertainty", 0.0) or 0.0) * energy_j
        # A boundary carried forward from a read is off by at most the power change over that span.
        period = max(getattr(self.sensor, "update_period_s", 0.0) or 0.0, carried_s)
        if method == SAMPLED:
            period = max(period, self.sensor.poll_interval_s or 0.0)
        if period <= 0:
            return stated_j
        # A quantised counter can be off by one update period at the window's end; use the
        # window's power, or the channel's long-run power when the window read 0 J.
        power_w = energy_j / duration_s if duration_s > 0 and energy_j > 0 else self.mean_power_w()
        return (stated_j**2 + (period * power_w) ** 2) ** 0.5

    def mean_power_w(self) -> float:
        """The power to state a 0 J window's uncertainty with: the latest instantaneous sample,
        else the mean of what the channel read or handed out. (From the counter's reads alone it
        was 0 W in a measurement's first update period, so a window that a boundary's overshoot
        cut to 0 J said ± 0 J while the device drew hundreds of watts.)"""
        with self._state_lock:
            if self._power:
                return self._power[-1][2]
        elapsed = self._clock() - self._started
        return max(self._last_j, self._boundary_j) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        try:
            self.sensor.close()
        except Exception:  # noqa: BLE001
            pass


class _Poller:
    """The one background daemon thread. Starts lazily, stops cleanly, can start again.

    ``manual = True`` (tests on a fake clock) starts no thread: the caller runs ``step()``.
    """

    def __init__(self, channels: Sequence[_Channel], clock) -> None:
        self._channels = channels
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._due: dict[tuple[str, int], float] = {}
        self.restarts = 0
        self.manual = False

    def needed(self) -> bool:
        return any(c.poll_interval_s or c.off_thread for c in self._channels)

    def step(self) -> float | None:
        """Run whatever is due; returns the seconds until the next task (None: nothing to do)."""
        waits = []
        for channel in self._channels:
            tasks = []
            if channel.poll_interval_s:
                tasks.append(("poll", channel.poll_interval_s, channel.poll))
            if channel.off_thread:
                tasks.append(("read", None, channel.refresh))
                if channel.samples_power:
                    tasks.append(("power", POWER_SAMPLE_INTERVAL_S, channel.sample_power))
            for kind, interval, task in tasks:
                key = (kind, id(channel))
                now = self._clock()
                due = self._due.get(key, now)
                if now >= due:
                    task()
                    if interval is None:  # counter reads: timed against the counter's updates
                        due = channel.next_read_at(self._clock())
                    else:  # fixed cadence; resynchronised after a stall
                        due = due + interval if due + interval > now else now + interval
                    self._due[key] = due
                waits.append(due - self._clock())
        return min(waits) if waits else None

    def ensure_running(self) -> None:
        with self._lock:
            if self.manual:
                return
            if self._thread is not None and self._thread.is_alive():
                return
            if self._thread is not None and not self._stop.is_set():
                self.restarts += 1
                warn("greencallbacks: the energy sampling thread had stopped; restarted it.")
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="greencallbacks-meter", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            # Between two reads it stops within a poll; inside a hung read (a GPU off the bus) it
            # cannot, and the run's stop (where a Ctrl-C is held) must not wait for it: a daemon,
            # it ends with its read or with the process.
            thread.join(timeout=STOP_WAIT_S)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        self._due = {}
        while not stop.is_set():
            wait = self.step()
            if wait is None:
                return
            stop.wait(max(0.001, wait))
