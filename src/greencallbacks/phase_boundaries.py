"""Phase boundaries (``_PhaseBoundaries``, part of ``Tracker``): ``begin`` and ``end`` of a phase
(and ``phase``, both around a block), the samples and tokens counted into the open phases, and
billing the interval since the last snapshot to the innermost of them (``_boundary``), where the
phases closed wait to be published as records (``phase_records``).
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from typing import TYPE_CHECKING, Iterator

from greencallbacks import concurrency, run_ids
from greencallbacks.checks import as_count
from greencallbacks.forks import not_in_a_forked_child
from greencallbacks.open_phase import OpenPhase
from greencallbacks.phase_lock import _holding_phases
from greencallbacks.records import PHASES, Record
from greencallbacks.shared_gpus import split_measurement

if TYPE_CHECKING:
    from greencallbacks.meter import Measurement, Snapshot
    from greencallbacks.tracker import Tracker

# A gap is written with the next phase's record, at its end (one write per phase), unless it lasted
# this long: the end of an epoch in Keras holds every later callback's epoch-end work (a checkpoint
# save of seconds), and a process killed in the next phase must not lose it. Writing costs ~0.2-0.5
# ms, under 0.1 % of such a gap. On several ranks writing is a collective that begin is not: there
# a gap still waits for the next end.
GAP_WRITTEN_AT_BEGIN_S = 0.5

_thread_id = threading.get_ident  # per batch in add_samples (see concurrency.say_two_threads)


def _check_phase(phase: object) -> None:
    if phase not in PHASES or phase == "other":
        raise ValueError(f"phase must be one of {PHASES[:-1]}, got {phase!r}")


class _PhaseBoundaries:
    """Part of ``Tracker``: its methods that open and close phases and bill the intervals between
    snapshots to them. No state of its own: they read and write the tracker's (see ``Tracker.__init__``)."""

    @contextlib.contextmanager
    def phase(self, phase: str, epoch: int | None = None) -> Iterator["Tracker"]:
        """``begin`` on entry, ``end`` on exit: on an exception (or a generator closed inside it)
        the phase ends there as cut short (``partial``) and the exception goes on, so that a loop
        that catches it and tries again (a smaller batch after running out of memory) records the
        failed try as one short partial phase, not one open around everything after it."""
        self.begin(phase, epoch)
        try:
            yield self
        except BaseException:
            self.end(phase, partial=True)
            raise
        self.end(phase)

    @not_in_a_forked_child
    @_holding_phases
    def begin(self, phase: str, epoch: int | None = None, metric_prefix: str | None = None) -> None:
        """A phase starts. Nested phases (validation inside a training epoch) are allowed.

        ``metric_prefix``: where one framework call logs several kinds of this phase (HF's
        ``eval_<data set>``), the prefix its values go under; their ``_total`` sums that prefix's
        records only (``Record.metric_prefix``).
        """
        _check_phase(phase)
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0):
            # Written as it is given: a reader refuses a record with an impossible epoch (records.py).
            raise ValueError(f"epoch must be None or an integer >= 0, got {epoch!r}")
        if not self.running:
            if self._session_id is None and not self._said_not_started:
                # A loop of the user's own calling begin before start: every phase would be lost unsaid.
                from greencallbacks.meter import warn

                self._said_not_started = True
                warn(f"greencallbacks: Tracker.begin({phase!r}) before start(meter): nothing is measured until "
                     "the tracker is started.")
            return
        if phase == "train" and self._later_call:
            self._refuse_training_after_finish()
        here = _thread_id()
        if len(self._stack) == 1:
            self._phase_thread = here
        elif here != self._phase_thread:
            concurrency.say_two_threads(self, f"begin({phase!r})", threading.current_thread().name)
        if self._renamed_from is not None:
            run_ids.say_renamed(self)
        if not self._concurrency_checked:
            concurrency.say_measured_at_once(self)
        self._boundary()
        if len(self._stack) == 1:  # leaving a gap: it becomes an `other` record
            gap = self._stack.pop()
            self._close(gap)
            self._stack.append(self._open("other", epoch))
            if gap.duration_s >= GAP_WRITTEN_AT_BEGIN_S and self.reducer.world_size == 1:
                self._publish(None)
        self._stack.append(self._open(phase, epoch, metric_prefix))

    def _refuse_training_after_finish(self) -> None:
        """Started again after ``finish``, a Tracker measures later calls of its run (a test or a
        prediction after the training, as the callbacks do) into that run's records and totals. A
        training there is another run's, or a resume's next attempt: mixed into the finished run,
        its epochs read as trained twice in one attempt. Refused, before it is measured; the later
        call ends here as it would have (its records written, the meter stopped)."""
        self.finish()
        raise RuntimeError(
            f"Tracker.begin('train'): run {self.run_id!r} has finished, and a Tracker measures one run. Started again, "
            "it measures that run's later calls (test, predict, a validation after the training), never a new "
            "training. For a new run, make a new Tracker; to continue this training as the run's next attempt (a "
            "resume), give a new Tracker this one's state: `resumed = Tracker(output_dir=...)`, "
            "`resumed.load_state_dict(tracker.state_dict())`, then `resumed.start(meter)`."
        )

    @_holding_phases
    def add_pause(self, seconds: float) -> None:
        """A carbon-aware pause of ``seconds`` in the innermost open phase (the gap between epochs)."""
        if self._stack and seconds > 0:
            self._stack[-1].paused_s += seconds

    def add_samples(self, samples: int | None, tokens: int | None = 0) -> None:
        """Count samples for the innermost open phase. Cheap enough for every batch.

        ``samples=None``: a batch that could not be counted; the phase's record then says
        ``samples_counted: false`` and carries no per-sample values. ``tokens=None`` alike: a batch
        whose tokens could not be counted (a ``token_counter`` that failed on it); the record says
        ``tokens_counted: false`` and logs no cost per token (the other batches' tokens alone would
        make it too high). 0: none counted, as a phase without a token count has.

        Also asks for the ``heartbeat`` (one clock read when not due): a loop of your own that counts
        its batches so keeps its open phase on disk for a resume or a report after a kill.
        """
        if self._stack:
            if _thread_id() != self._phase_thread and len(self._stack) > 1 and not self._said_two_threads:
                self._counted_elsewhere = threading.current_thread().name  # said at the phase's end
            top = self._stack[-1]
            if samples is None:
                top.samples_counted = False
            else:
                top.samples += samples if type(samples) is int and samples >= 0 else as_count("samples", samples)
            if tokens is None:
                top.tokens_counted = False
            else:
                top.tokens += tokens if type(tokens) is int and tokens >= 0 else as_count("tokens", tokens)
            # The adapters ask at every step themselves; a loop of the user's own counts its batches
            # here and nothing else: killed outright (the OOM killer), it lost its whole open phase.
            self.heartbeat()

    def add_tokens_to(self, phase: str, tokens: int | None) -> None:
        """``add_samples(0, tokens)`` for the innermost open ``phase``, where a phase inside it is open:
        a training epoch that failed in its validation trained its batches (their tokens) all the same."""
        opened = self._innermost_open(phase)
        if opened is None:
            return
        if tokens is None:
            opened.tokens_counted = False
        else:
            opened.tokens += tokens if type(tokens) is int and tokens >= 0 else as_count("tokens", tokens)

    def samples_so_far(self, phase: str, samples: int) -> None:
        """The innermost open ``phase`` has trained or evaluated exactly ``samples`` so far: for a
        phase a failure cut short, whose framework says how far it got (``end``'s ``samples`` for one
        that ends), written up by ``abort`` next. It may be under a loop that failed inside it (a
        Keras epoch's validation), whose own count ``add_samples`` keeps."""
        opened = self._innermost_open(phase)
        if opened is not None:
            opened.samples, opened.samples_counted = as_count("samples", samples), True

    def _innermost_open(self, phase: str) -> "OpenPhase | None":
        return next((opened for opened in reversed(self._stack[1:]) if opened.phase == phase), None)

    @not_in_a_forked_child
    @_holding_phases
    def end(
        self, phase: str, *, samples: int | None = None, step: int | None = None, metric_prefix: str | None = None,
        partial: bool = False,
    ) -> Record | None:
        """A phase ends: its record is summed over ranks, written, and returned.

        ``metric_prefix``: as in ``begin``, for a phase whose prefix is known only at its end.
        ``partial``: it was cut short (an exception the loop goes on from), as the phases inside
        it that had not ended are.
        A collective when several ranks run: every rank must call it.
        """
        _check_phase(phase)  # a typo ("training") left the phase open, and the next begin nested in it
        if samples is not None:
            samples = as_count("samples", samples)  # before anything is closed: refused, nothing is lost
        if not self.running:
            return None
        if self._counted_elsewhere:
            concurrency.say_two_threads(self, "add_samples", self._counted_elsewhere)
        if step is not None:
            self.step = step
        if not any(o.phase == phase for o in self._stack[1:]):
            return None  # never begun (e.g. a framework calls end without begin): nothing to bill
        if phase == "train" and self.seconds_left is not None:
            self._seconds_left_at_train_end = self.seconds_left()  # made alike on every rank in _publish
        self._boundary()
        while True:
            closed = self._stack.pop()
            if samples is not None and closed.phase == phase:
                closed.samples, closed.samples_counted = samples, True  # the framework's own count
            if metric_prefix is not None and closed.phase == phase:
                closed.metric_prefix = metric_prefix
            self._close(closed, partial=partial or closed.phase != phase)
            if closed.phase == phase:
                break
        if len(self._stack) == 1:
            # A new gap begins; numbering it now keeps `seq` in time order.
            self._stack[0] = self._open("other", closed.epoch)
        return self._publish(closed.seq)

    def _open(self, phase: str, epoch: int | None, metric_prefix: str | None = None) -> OpenPhase:
        epoch = None if epoch is None else int(epoch)  # a NumPy integer would be written as a string
        return OpenPhase(phase=phase, epoch=epoch, seq=self.ledger.take_seq(), metric_prefix=metric_prefix)

    def _boundary(self, exact: bool = False) -> None:
        """Bill the interval since the last snapshot to the innermost open phase.

        ``exact``: read slow counters in place (the run's last boundary) instead of carrying the
        background thread's latest read forward to now.
        """
        assert self.meter is not None and self._last_snapshot is not None
        self._in_boundary = True
        try:
            snapshot = self.meter.snapshot(exact=exact)
            self._stack[-1].add(self._between(self._last_snapshot, snapshot), snapshot.unix_s, self._price_marks)
            self._last_snapshot = snapshot
            self._forget_marks()
        finally:
            self._in_boundary = False

    def _forget_marks(self) -> None:
        """A new interval from the last snapshot: no marks inside it yet, none priced."""
        self._price_marks = []
        self._marks_priced = (0, self._last_snapshot.unix_s if self._last_snapshot is not None else 0.0, 0.0, 0.0)

    def _between(self, start: "Snapshot", end: "Snapshot") -> "Measurement":
        """The meter's measurement of the window, with this rank's share of a GPU other ranks measure too."""
        assert self.meter is not None
        measurement = self.meter.between(start, end)
        return split_measurement(measurement, self._gpu_split) if self._gpu_split else measurement

    def _close(self, opened: OpenPhase, partial: bool = False) -> None:
        if opened.phase == "other" and opened.empty:
            return
        self._pending.append((opened, partial, self.step))
