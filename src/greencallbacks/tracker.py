"""The tracker: framework-neutral bookkeeping that all three adapters share.

An adapter maps its framework's hooks onto ``begin`` / ``end`` / ``add_samples`` and logs the
dict from ``metrics``. The tracker turns phase boundaries into records:

* The run is partitioned at boundaries. Every interval between two snapshots belongs to the
  innermost open phase, or to the gap (phase ``other``) when none is open, so the records of a
  run add up to the run's total. A validation loop inside a training epoch is billed to
  validation, and the epoch's training record excludes it.
* At the end of each phase, every rank's local records are gathered and summed (see
  ``distributed``), so all ranks report the same numbers; rank 0 writes them.
* What the records add up to is the ledger's (``greencallbacks.ledger``): totals, ``seq``,
  attempts, and the run's continuation after a resume, re-derived from its records on disk.

Beside it, each in a module of its own: an open phase's sums (``open_phase``), the run's id
(``run_ids``), the resume of a checkpoint's run (``resume``), the heartbeat's file
(``heartbeat``), the summary (``summaries``), a GPU that several ranks measure
(``shared_gpus``), the embodied figure (``embodied_run``), threads (``concurrency``) and forks
(``forks``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as _dt
import functools
import math
import numbers
import os
import socket
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from greencallbacks import concurrency, embodied_run, forks, interrupts, run_ids
from greencallbacks._version import __version__
from greencallbacks.checks import as_count, check_output_dir, keywords_checked, one_line
from greencallbacks.distributed import LocalReducer, Reducer
from greencallbacks.forks import not_in_a_forked_child
from greencallbacks.ledger import Ledger, PhaseTotals, read_run_records
from greencallbacks.open_phase import OpenPhase, component_uncertainty_j
from greencallbacks.resume import resume
from greencallbacks.runlock import RunLock
from greencallbacks.meter import joules_between
from greencallbacks.prediction import PREDICTION_STEMS, predict
from greencallbacks.heartbeat import heartbeat_path, write_heartbeat
from greencallbacks.records import PHASES, RECORDS_FILE, Record, RecordWriter, combine_ranks, with_per_sample
from greencallbacks.shared_gpus import gpus_of, split_measurement, split_shared
from greencallbacks.summaries import SUMMARY_FILE, write_every_ranks_summary, write_run_summary
from greencallbacks.units import J_PER_KWH

RANK_RECORDS_FILE = "energy-records.rank{rank}.jsonl"  # rank r's own parts of a failed multi-rank run's phases

if TYPE_CHECKING:
    from greencallbacks.carbon import Carbon
    from greencallbacks.embodied import Embodied
    from greencallbacks.meter import Measurement, Meter, Snapshot

__all__ = ["METRIC_STEMS", "PREDICTION_STEMS", "PhaseTotals", "SUMMARY_FILE", "Tracker"]

# The metric names every adapter logs (with its framework's prefix for non-training phases).
METRIC_STEMS = (
    "energy_kwh",
    "co2eq_g",
    "energy_kwh_total",
    "co2eq_g_total",
    "energy_j_per_sample",
    "co2eq_g_per_sample",
    "power_w",
)

RECORDS_KEPT_IN_MEMORY = 1000
# A gap is written with the next phase's record, at its end (one write per phase), unless it lasted
# this long: the end of an epoch in Keras holds every later callback's epoch-end work (a checkpoint
# save of seconds), and a process killed in the next phase must not lose it. Writing costs ~0.2-0.5
# ms, under 0.1 % of such a gap. On several ranks writing is a collective that begin is not: there
# a gap still waits for the next end.
GAP_WRITTEN_AT_BEGIN_S = 0.5
# The live power_w is the mean over at least this long (ten update periods of a channel read off
# the training thread: within 10 % of the power however fast the logging steps come).
LIVE_POWER_WINDOW_S = 1.0
# The open phases, as a resume would carry them, are written beside the records at most this often
# (asked at every Lightning and HF step, by Keras' watch thread and at every `add_samples`: see
# `heartbeat`): a process killed without any handler running (SIGKILL, the OOM killer, a preemption)
# loses at most this long of its last phase, where the checkpoint's open phases alone lost
# everything since the last checkpoint (hours, in a long epoch).
# One small atomic write a minute: ~1 ms, never per batch.
HEARTBEAT_S = 60.0

_thread_id = threading.get_ident  # per batch in add_samples (see concurrency.say_two_threads)


def utc_iso(unix_s: float) -> str:
    return _dt.datetime.fromtimestamp(unix_s, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _holding_phases(method: Callable | None = None, *, settled: bool = False) -> Callable:
    """Run ``method`` holding the tracker's phase lock: a heartbeat asked from another thread (the
    Keras watch's) reads the open phases only between such calls, never half changed (a phase popped
    and not yet closed, a segment added before the snapshot it ends at). Reentrant, ~0.3 us a call.

    ``settled``: first wait for the write-up of a call that just failed (``watch.settle``; a script
    catching the exception and resuming at once), outside the lock: that write-up, on the watch
    thread, may abort this very tracker, and would wait for the lock the resume held.

    Whole against Ctrl-C too (``interrupts.held``, entered before the lock, ~2 us): landing inside,
    it lost a phase popped and not yet closed, billed an interval twice (added, the snapshot not
    yet moved on), or left a lock acquired (a ``with`` can be interrupted right after its acquire),
    hanging the next run in the process."""
    if method is None:
        return functools.partial(_holding_phases, settled=settled)

    @functools.wraps(method)
    def holding(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if settled:
            from greencallbacks import watch

            watch.settle()
        with interrupts.held(), self._phases_lock:
            return method(self, *args, **kwargs)
    return holding


def _check_phase(phase: object) -> None:
    if phase not in PHASES or phase == "other":
        raise ValueError(f"phase must be one of {PHASES[:-1]}, got {phase!r}")


@keywords_checked
class Tracker:
    """Phases, epochs, samples, ranks, records and totals for one run.

    Args:
        carbon: where intensity and PUE come from (default: world average, PUE 1.0, and every
            record says so).
        output_dir: where ``energy-records.jsonl`` and ``energy-summary.json`` go; ``None``
            keeps records in memory only.
        run_id: names the run in records (default: a new random id; kept across resume).
        framework: written into records.
        embodied: how to bill the hardware's manufacturing footprint (``greencallbacks.embodied``):
            ``None`` for the defaults (each GPU with a published footprint; the host machine is
            left out and said so), a dict of ``embodied_for`` arguments (``host="server"``,
            ``host_share``, ``ram_gb``, ``lifetime_years``, ``utilisation``), or ``False`` for none.
            Records carry ``embodied_co2eq_g`` only where some device has a footprint.
    """

    def __init__(
        self,
        *,
        carbon: "Carbon | None" = None,
        output_dir: str | os.PathLike | None = None,
        run_id: str | None = None,
        framework: str = "",
        embodied: "dict[str, Any] | bool | None" = None,
    ) -> None:
        from greencallbacks.carbon import Carbon

        if not isinstance(framework, str):  # every record carries it: a reader refuses any other type
            raise TypeError(f"framework must be a string (such as 'torch 2.13'), got {type(framework).__name__}")
        if carbon is None:
            carbon = Carbon()
        elif not isinstance(carbon, Carbon):
            raise ValueError(f"carbon must be a greencallbacks.carbon.Carbon (or None for the world average), got {carbon!r}")
        check_output_dir(output_dir)
        # One line: a run id heads the report and names its lines in the CLI's listings, where a
        # newline or a tab would break the Markdown (and could not be typed back).
        if run_id is not None and (not isinstance(run_id, str) or not run_id.strip() or not one_line(run_id)):
            raise ValueError(f"run_id must be a non-empty string without control characters, got {run_id!r}")
        self.carbon = carbon
        self.embodied_settings = embodied_run.checked_settings(embodied)
        # Embodied CO2eq per second of this process's hardware (found at start from the sensors'
        # device models); None: off, or no device with a published footprint.
        self.embodied_rate: Embodied | None = None
        self._embodied_found: Embodied | None = None
        self._embodied_left_out: list[dict[str, Any]] = []  # its missing, structured (embodied_for's left_out)
        # The other ranks' (rank, [sources, missing, left_out]), gathered at start, for the summary.
        self._embodied_elsewhere: list[tuple[int, Any]] = []
        # Fields the session adds to energy-summary.json (its policies: the budget), so the
        # tracker needs to know none of them. A callable value is called with the summary when
        # it is written, and gives the field.
        self.summary_extra: dict[str, Any] = {}
        self.output_dir = Path(output_dir) if output_dir is not None else None
        # A directory the user chose is kept on resume; the default one follows the run's records.
        self._output_dir_chosen = output_dir is not None
        self._resolved_for: object = None  # see _records_path
        self._resolved = ""
        self.ledger = Ledger(run_id or uuid.uuid4().hex[:12])
        self._run_id_given = run_id is not None
        self._drawn_in_pid = forks.pid  # the process that drew the run id (see run_ids.draw_in_a_fork)
        self._renamed_from: str | None = None  # the run id given, taken by an earlier run (see start)
        self._renamed_why = ""
        # Directories of the same experiment beside output_dir (Lightning's other version_N), whose
        # run ids a new run under a given run_id must not take either: `report` over them refuses two.
        self.sibling_dirs: list[Path] = []
        self._run_lock: RunLock | None = None  # held by rank 0 while it measures the run (see runlock)
        self.framework = framework
        self.meter: Meter | None = None
        self.reducer: Reducer = LocalReducer()
        # The most recent records (all of them are on disk); bounded so a run of any length
        # keeps a flat memory footprint. The prediction keeps one float per epoch instead.
        self.records: deque[Record] = deque(maxlen=RECORDS_KEPT_IN_MEMORY)
        self._writer: RecordWriter | None = None
        self._stack: list[OpenPhase] = []
        # Phases closed on this rank, not yet published: (the phase, partial, its step). Records are
        # built when published, so a gap closed by `begin` costs the training thread no record.
        self._pending: list[tuple[OpenPhase, bool, int | None]] = []
        self._last_snapshot: Snapshot | None = None
        self._in_boundary = False  # see state_dict
        self._phases_lock = threading.RLock()  # see _holding_phases
        self._started_pid: int | None = None  # the process that started the run (see forks.not_in_a_forked_child)
        self._heartbeat_at: float | None = None  # the meter's monotonic time of the last heartbeat (or start)
        self._heartbeat_written: Path | None = None  # where it was written (the run id may change at a resume)
        self._heartbeats_carried: list[Path] = []  # the killed attempts' heartbeats the resume read
        # `live`: the previous call's peek (its power interval) and each open phase's billed sums.
        self._live_history: collections.deque[Snapshot] = collections.deque()  # earlier live() readings
        self._live_billed: dict[int, tuple[int, float, float]] = {}
        self._logged_totals = (0.0, 0.0)  # the run's highest logged totals, kWh and g (see _never_back)
        # (unix time, joules since the last boundary) at each heartbeat since it: see open_phase.priced_apart.
        self._price_marks: list[tuple[float, float]] = []
        self._marks_priced: tuple[int, float, float, float] = (0, 0.0, 0.0, 0.0)  # see _open_interval_g
        self.step: int | None = None
        # Where the framework stops, set by adapters to enable the run prediction: the epoch it
        # stops before (max_epochs) and the global step it stops at (max_steps), either or both.
        self.planned_epochs: int | None = None
        self.planned_steps: int | None = None
        # ...and the seconds it has left (Lightning's max_time), asked when a training phase ends:
        # the moment the epochs left are counted from. Rank 0's answer, shared by the records'
        # gather, so every rank predicts (and judges a budget) alike.
        self.seconds_left: Callable[[], float | None] | None = None
        self._seconds_left_at_train_end: float | None = None
        self._resume_state: dict[str, Any] | None = None  # loaded before start, applied at start
        self._session_id: str | None = None  # drawn at start: tells this tracker's own checkpoints apart
        self._failing = False  # the call ends in abort: the summary says it failed
        self._own_sessions: set[str] = set()  # every session id this tracker drew (see `wrote`)
        self._concurrency_checked = True  # False from start to the first phase (see concurrency.say_measured_at_once)
        self._said_not_started = False
        self._records_elsewhere: list[str] = []  # the run's earlier records, where not in output_dir
        self._records_at_stop: tuple | None = None  # the records file as this session left it (see _run_went_on)
        self._carried: list[Record] = []  # a checkpoint's open phases that no record holds, to write (see resume._carry)
        self._carried_apart: list[tuple[int, Record]] = []  # a killed rank's parts, for its own file (see resume._carry_ranks)
        # Started again after finish: a later call of the run, which trains no more (see begin); its
        # records say so (``Record.later_call``), and bill no epoch's cost.
        self._later_call = False
        # The thread that began the outermost open phase, and another that counted into it (see concurrency.say_two_threads).
        self._phase_thread = 0
        self._counted_elsewhere = ""
        self._said_two_threads = False
        # GPUs: each GPU sensor's UUID by name (records carry it), the share of a GPU that other
        # ranks measure too billed to this rank by name (see shared_gpus.split_shared), and for the
        # summary the GPUs shared by ranks and those this run could not measure. The session sets
        # `unmeasured_gpus` (discovery's) before start; start gathers every rank's.
        self._gpu_uuids: dict[str, str] = {}
        self._gpu_split: dict[str, tuple[float, str]] = {}
        self.gpus_shared: list[dict[str, Any]] = []
        self.unmeasured_gpus: list[dict[str, Any]] = []  # this process's
        self._unmeasured_all: list[dict[str, Any]] = []  # every rank's, for the summary

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_phases_lock"}  # a lock cannot be copied

    def __setstate__(self, state: dict) -> None:
        # A copy of a tracker that has measured nothing (a callback deep-copied or pickled before
        # its fit: scikit-learn's clone, ddp_spawn) measures a run of its own: with the drawn id
        # copied, two runs had one id, their records mixed.
        self.__dict__.update(state)
        self._phases_lock = threading.RLock()
        if state.get("_started_pid") is not None:
            self._started_pid = forks.pid  # a copy is its process's own (unlike a fork's memory)
        if not self._run_id_given and self.meter is None and self.ledger.next_seq == 0 and self.ledger.attempt == 0:
            self.ledger.run_id = uuid.uuid4().hex[:12]
            self._drawn_in_pid = forks.pid

    @property
    def run_id(self) -> str:
        return self.ledger.run_id

    @property
    def totals(self) -> dict[str, PhaseTotals]:
        return self.ledger.totals

    @property
    def last(self) -> dict[str, Record]:
        return self.ledger.last

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self.meter is not None

    @property
    def in_a_forked_child(self) -> bool:
        """This process is a fork of the one that started the run: its copy of the run is the parent's."""
        return self._started_pid is not None and self._started_pid != forks.pid

    @_holding_phases(settled=True)
    def start(
        self,
        meter: "Meter",
        *,
        reducer: Reducer | None = None,
        output_dir: str | os.PathLike | None = None,
    ) -> "Tracker":
        """Begin measuring: everything from now until ``finish`` is billed to some phase.

        Returns the tracker, so that a loop of your own can be measured in a ``with`` block that
        finishes the run, or writes it up as failed (``abort``) on any exception, Ctrl-C included::

            with Tracker(output_dir="energy").start(Meter(discover_sensors().sensors)) as tracker:
                for epoch in range(epochs):
                    with tracker.phase("train", epoch):
                        ...  # tracker.add_samples(count_samples(batch)) per batch (greencallbacks.samples)

        A Tracker measures one run. Started again after ``finish``, it measures later calls of
        that run (a test or a prediction after the training), in its records and totals, as the
        callbacks do; a training phase there is refused (a new run is a new Tracker).
        """
        if self.running:
            return self
        # Refused here, not at the first boundary or the run's last write (the records lost).
        if not callable(getattr(meter, "snapshot", None)):
            raise TypeError(f"Tracker.start(meter): meter must be a greencallbacks.Meter, got {meter!r}")
        if reducer is not None and not all(hasattr(reducer, name) for name in ("rank", "world_size", "all_gather")):
            raise TypeError(f"Tracker.start(reducer=...): a greencallbacks.distributed reducer or None, got {reducer!r}")
        check_output_dir(output_dir)
        run_ids.draw_in_a_fork(self)
        if output_dir is not None and self.output_dir is None:
            self.output_dir = Path(output_dir)
        if (self._session_id is not None and self._resume_state is None
                and (reducer is None or reducer.world_size == 1) and self._run_went_on()):
            # Another session continued this run since this one stopped (a resume in another
            # Trainer, or process): this later call goes on after its records, as the run's next
            # attempt; from this session's own view it numbered its records with seqs the other
            # had taken, and its summary left the other's epochs out.
            self._resume_state = self.state_dict()
        self.meter = meter
        self.reducer = reducer or LocalReducer()
        self._host = socket.gethostname()  # read once: a system call at every boundary adds up
        self._later_call = self._session_id is not None  # a test after the training, say (see begin)
        self._counted_elsewhere = ""
        self._failing = False
        self._session_id = uuid.uuid4().hex
        if self._run_id_given and self._resume_state is None and self.ledger.next_seq == 0 and self.ledger.attempt == 0:
            run_ids.avoid_a_run_id_taken(self)
        gpus = gpus_of(meter)
        self._gpu_uuids = {name: uuid for name, uuid, _ in gpus}
        self._gpu_split, self.gpus_shared, self._unmeasured_all = {}, [], list(self.unmeasured_gpus)
        if self.reducer.world_size > 1:
            # One run id on every rank (each drew its own), so that a rank's own records, written
            # when a run fails, belong to the run; one session id, so that every rank knows a
            # checkpoint of this session alike; and every rank's GPUs (see shared_gpus.split_shared). A
            # collective: every rank starts here.
            here = {"gpus": gpus, "unmeasured": [{**u, "rank": self.reducer.rank} for u in self.unmeasured_gpus]}
            gathered = self.reducer.all_gather((self.run_id, self._session_id, here))
            self.ledger.run_id, self._session_id = gathered[0][0], gathered[0][1]
            self._unmeasured_all = [u for *_, there in gathered for u in there["unmeasured"]]
            split_shared(self, [there["gpus"] for *_, there in gathered])
        self._own_sessions.add(self._session_id)
        self._started_pid = forks.pid
        if not self._hold_lock(self.output_dir, self.run_id) and self._run_id_given and self.reducer.world_size == 1:
            # Two fits started at once with one run_id: each would number its records from 0.
            run_ids.take_a_free_run_id(self, "is being measured by another process now")
        concurrency.register(self)
        embodied_run.find(self, meter)
        self._embodied_elsewhere = []
        if self.reducer.world_size > 1:
            # Each rank bills its own devices, and the summary (rank 0's) said what rank 0 billed
            # and left out alone: another rank's GPU without a footprint read as nothing missing.
            # A collective, as the gather above: every rank starts here.
            found = self._embodied_found
            mine = None if found is None else [list(found.sources), list(found.missing), self._embodied_left_out]
            self._embodied_elsewhere = [(rank, there) for rank, there in enumerate(self.reducer.all_gather(mine))
                                        if rank != self.reducer.rank and isinstance(there, (list, tuple)) and len(there) == 3]
        self._stack = [self._open("other", None)]
        self._last_snapshot = meter.snapshot()
        self._heartbeat_at = self._last_snapshot.monotonic_s
        self._live_history, self._live_billed = collections.deque(), {}  # a new meter: its counters start afresh
        self._forget_marks()
        if self._resume_state is not None:  # state loaded before start (Keras, HF)
            resume(self)
        self._open_writer()
        return self

    def __enter__(self) -> "Tracker":
        if not self.running:
            raise RuntimeError("a Tracker measures from start(meter): use `with tracker.start(meter):`")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        if kind is None:
            self.finish()
        else:  # the loop failed or was interrupted: its open phases are written as partial
            self.abort()

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

    @not_in_a_forked_child
    @_holding_phases
    def finish(self) -> None:
        """The run ends normally: close the last gap, write everything, stop the meter thread.

        A collective when several ranks run.
        """
        if not self.running:
            return
        try:
            self._boundary(exact=True)
            while self._stack:
                top = self._stack.pop()
                self._close(top, partial=top.phase != "other")
            self._publish(None)
        finally:
            # Whatever failed in the write-up, the run stops: its thread, its writer, its lock
            # (stopped already where a failed gather wrote the run up as a failing rank, see _publish).
            if self.running:
                self._stop()

    @not_in_a_forked_child
    @_holding_phases
    def abort(self) -> None:
        """The run is failing (exception, interrupt): write what was measured, without collectives.

        Unfinished phases are written as ``partial``. On several ranks each rank writes its own
        local records (rank ``r`` > 0 to ``energy-records.rank{r}.jsonl``), unsummed.
        """
        if not self.running:
            return
        self._failing = True
        try:
            self._boundary(exact=True)
        except Exception:  # noqa: BLE001 - the run is already failing; keep what we have
            pass
        try:
            while self._stack:
                # Every open phase is cut short, the gap between two epochs too: its partial record
                # is the only mark that a failure there ended the training.
                self._close(self._stack.pop(), partial=True)
            local = self._take_pending()
            if self.reducer.world_size > 1 and self.reducer.rank > 0 and self.output_dir is not None:
                if self._writer is not None:
                    self._writer.close()
                self._writer = RecordWriter(self.output_dir / RANK_RECORDS_FILE.format(rank=self.reducer.rank))
            for record in local:
                self._accept(record)
            if local and self._writer is not None:
                self._writer.write(*local)
        finally:
            self._stop(every_rank_on_disk=self.reducer.world_size > 1)

    def _stop(self, every_rank_on_disk: bool = False) -> None:
        """``every_rank_on_disk``: a failed multi-rank run, whose ranks each wrote their own records
        (rank r > 0 beside rank 0's): the summary is made from all of them, by every rank."""
        if self.meter is not None:
            self.meter.stop_sampling()
        if self._writer is not None:
            self._writer.close()  # on disk (fsynced) before the run is reported finished
            summary_written = True
            if every_rank_on_disk:
                summary_written = write_every_ranks_summary(self)
            elif self.reducer.rank == 0:
                summary_written = write_run_summary(self)
            # Lines still pending never reached the file (close is False too while a slow fsync goes
            # on, with their lines in the file: that one has warned already). Said once more here:
            # the warning at the first failure said they would be written later.
            if self._writer.pending:
                self._warn_records_not_written(summary_written)
            elif not summary_written:  # a full disk can take the records' last lines, not a new file
                self._warn_summary_not_written()
        self._records_at_stop = self._records_file_state()
        if self.output_dir is not None:
            # Its phases are written now: a later resume must not carry them again.
            # Rank 0 also removes the killed attempts' that its resume read (every rank read them then).
            self._forget_heartbeat(*(self._heartbeats_carried if self.reducer.rank == 0 else ()))
            self._heartbeats_carried = []
        self.meter = None
        concurrency.unregister(self)
        self._hold_lock(None, "")

    def _records_file_state(self) -> tuple | None:
        path = self._records_path()
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            return None
        return stat and (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _run_went_on(self) -> bool:
        """Whether the run's records hold an attempt or seq this session did not write: read only
        where the records file changed since this session stopped (a stat, not a read, per call)."""
        if self.output_dir is None or self._records_file_state() == self._records_at_stop:
            return False
        try:
            written = read_run_records(self.run_id, [self.output_dir])
        except (OSError, ValueError):  # unreadable: this session's view stands (the report says more)
            return False
        return any(r.attempt > self.ledger.attempt or r.seq >= self.ledger.next_seq for r in written)

    def _warn_records_not_written(self, summary_written: bool) -> None:
        from greencallbacks.meter import warn

        assert self._writer is not None
        count = len(self._writer.pending)
        warn(f"greencallbacks: run {self.run_id!r} ended with {count} energy record(s) NOT written"
             + ("" if summary_written else ", nor its summary")
             + f": {self._writer.path} could not be written (see the warning above), so they are not on disk. "
             "Check that output_dir is a directory this process can write to.")

    def _warn_summary_not_written(self) -> None:
        from greencallbacks.meter import warn

        assert self._writer is not None and self.output_dir is not None
        warn(f"greencallbacks: the summary of run {self.run_id!r} was NOT written: {self.output_dir / SUMMARY_FILE} "
             "could not be written (a full disk, or a directory this process cannot write to?). Its energy records "
             f"are complete in {self._writer.path}: `greencallbacks report {self.output_dir}` reads them.")

    def _hold_lock(self, directory: Path | None, run_id: str) -> bool:
        """Hold the lock of ``run_id`` in ``directory`` instead of the one held (none for None);
        False, keeping the one held, where another session holds it. Rank 0 only: it speaks for
        the job, and a multi-rank job never asks (its ranks would have to agree)."""
        lock = None
        if directory is not None and self.reducer.rank == 0:
            lock = RunLock(directory, run_id)
            if lock.same_claim(self._run_lock):
                return True  # held already (a resume of the run id given, restored after start)
            if not lock.acquire():
                return False
        if self._run_lock is not None:
            self._run_lock.release()
        self._run_lock = lock
        return True

    # ------------------------------------------------------------------------------- metrics
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

    @property
    def run_directories(self) -> list[Path]:
        """Where the run's records are: the earlier attempts' directories where a resume chose
        another output_dir (see ``resume``), then this attempt's."""
        earlier = [Path(p).parent for p in self._records_elsewhere]
        return earlier + ([self.output_dir] if self.output_dir is not None else [])

    # ------------------------------------------------------------------- checkpoint / resume
    @_holding_phases
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this run: its id, where its records are, and its
        totals so far (phases open now included, as measured so far: the fallback for a resume
        that cannot read the records)."""
        open_records = []
        if self.running:
            if not self._in_boundary:
                # Inside a boundary when a signal handler saves a checkpoint (Lightning's SLURM
                # requeue on SIGUSR1): that boundary bills the interval; billing it here too counted
                # it twice. The open phases are saved either way, as billed so far (see resume._carry).
                self._boundary()
            open_records = self._open_records()
            if self.reducer.world_size > 1 and self._last_snapshot is not None:
                # The checkpoint (rank 0's) holds rank 0's part: each rank's, measured as far, beside
                # it, for the resume to sum, and for a report of the run if it is never resumed. (Not
                # on one rank: Keras saves its state at every epoch end, and the checkpoint is whole.)
                self._heartbeat_at = self._last_snapshot.monotonic_s
                self._write_heartbeat(open_records, self._last_snapshot.unix_s)
        state = {**self.ledger.state_dict(open_records), "records_path": self._records_path(), "session_id": self._session_id,
                 "open_records": [r.to_dict() for r in open_records]}  # see resume._carry
        if self._records_elsewhere:  # the run's earlier attempts, written in other directories (see resume)
            state["earlier_records"] = self._records_elsewhere
        return state

    def _open_records(self, now: "Snapshot | None" = None) -> list[Record]:
        """This rank's phases closed but not yet published (a gap closed by `begin`), then those still
        open, as measured so far. ``now``: a peek, whose interval since the last boundary is added to
        a copy of the innermost phase, so that nothing is billed (the records are the same with or
        without a heartbeat: a boundary would add a segment, and its uncertainty)."""
        records = [self._local_record(*closed) for closed in self._pending]
        for opened in self._stack:
            if now is not None and opened is self._stack[-1] and self._last_snapshot is not None:
                opened = dataclasses.replace(opened, components={k: dict(v) for k, v in opened.components.items()},
                                             segments=list(opened.segments))
                opened.add(self._between(self._last_snapshot, now), now.unix_s, self._price_marks)
            if not opened.empty:
                records.append(self._local_record(opened, True, self.step))
        return records

    def heartbeat(self) -> None:
        """Write the open phases beside the records, as a resume would carry them, when
        ``HEARTBEAT_S`` has passed since the last time (else nothing: cheap at every step). ``live``
        calls it at the framework's logging steps, the Lightning and HF callbacks at every step,
        the Keras one from its watch thread, and ``add_samples`` at every count; a loop of your own
        that counts no samples may call it at any step, from any thread. A process killed without
        any handler running then loses at most that long of its last phase (see ``resume._carry``)."""
        meter = self.meter
        if meter is None or self._last_snapshot is None:
            return
        if self._heartbeat_at is not None and meter.monotonic_s() - self._heartbeat_at < HEARTBEAT_S:
            return  # not due: one clock read, at every step
        if self.in_a_forked_child:  # (asked only when due: see forks.not_in_a_forked_child)
            return
        # From another thread, never wait for a boundary in progress: the next call writes it.
        if not self._phases_lock.acquire(blocking=False):
            return
        try:
            if self.meter is not None:  # (the run may have ended meanwhile)
                self._beat(self.meter.peek())
        finally:
            self._phases_lock.release()

    def _beat(self, now: "Snapshot") -> None:
        # Not inside a boundary (a signal handler's live figures): the innermost phase may hold the
        # interval already while the last snapshot is still the one before it.
        due = self._heartbeat_at is None or now.monotonic_s - self._heartbeat_at >= HEARTBEAT_S
        if not due or self._in_boundary:
            return
        self._heartbeat_at = now.monotonic_s
        self._write_heartbeat(self._open_records(now), now.unix_s)
        self._price_marks.append((now.unix_s, self._joules_between(self._last_snapshot, now)))

    def _write_heartbeat(self, open_records: list[Record], unix_s: float) -> None:
        """This rank's part of the open phases, in a file of its own: on several ranks each measures
        its own devices, and a checkpoint holds rank 0's part alone (8 GPUs preempted an hour into
        an epoch: the resume carried one GPU's hour). The resume sums the parts (``resume._carry_ranks``)."""
        if self.output_dir is None:
            return
        path = heartbeat_path(self.output_dir, self.run_id, self.reducer.rank, self._session_id)
        if self._heartbeat_written != path:  # the run named anew by a resume (Lightning's, after start)
            self._forget_heartbeat()
        self._heartbeat_written = path
        write_heartbeat(path, run_id=self.run_id, attempt=self.ledger.attempt, rank=self.reducer.rank,
                        session_id=self._session_id, written=utc_iso(unix_s), open_records=open_records)

    def _forget_heartbeat(self, *paths: Path) -> None:
        """Remove the heartbeat this tracker wrote, and ``paths`` (its killed attempts', read by its resume)."""
        written, self._heartbeat_written = self._heartbeat_written, None
        for stale in {written, *paths} - {None}:
            with contextlib.suppress(OSError):
                stale.unlink(missing_ok=True)

    def wrote(self, state: dict[str, Any]) -> bool:
        """Was ``state`` saved by this tracker, or by an earlier attempt of the run it continues?
        Then loading it is the framework restoring its own checkpoint within one run (Lightning's
        learning-rate and batch-size tuners undo their trial steps so; ``trainer.test(ckpt_path=
        "best")`` after the fit), not a resume: the run goes on as it is in memory, the trial's
        joules in it, and no new attempt begins."""
        if state.get("session_id") in self._own_sessions:
            return True
        # A checkpoint of an earlier attempt of the run this tracker already continues
        # (test(ckpt_path="best") after a resumed fit, best saved by the attempt that crashed):
        # its records are in the ledger already.
        attempt = state.get("attempt")
        return state.get("run_id") == self.run_id and isinstance(attempt, int) and attempt < self.ledger.attempt

    def _records_path(self) -> str | None:
        """The records file's absolute path, resolved once per output directory (resolving walks
        the path with a system call per part: ~50 us, at every Keras epoch end). A relative
        directory is resolved again when the working directory changes, as the writer's is."""
        if self.output_dir is None:
            return None
        key = self.output_dir if self.output_dir.is_absolute() else (self.output_dir, os.getcwd())
        if self._resolved_for != key:
            self._resolved_for, self._resolved = key, str((self.output_dir / RECORDS_FILE).resolve())
        return self._resolved

    @_holding_phases(settled=True)
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpointed run of ``state`` as its next attempt (before or after ``start``);
        nothing to do for a state this tracker wrote (see ``wrote``)."""
        if self.wrote(state):
            return
        self._resume_state = dict(state)
        if self.running:  # Lightning restores callbacks after setup
            resume(self)

    def _open_writer(self) -> None:
        path = self.output_dir / RECORDS_FILE if self.output_dir is not None else None
        if self._writer is not None and self._writer.path != path:
            self._writer.close()
            self._writer = None
        if path is not None and self._writer is None:
            self._writer = RecordWriter(path)
        if self._carried and self._writer is not None:
            if self.reducer.rank == 0:  # one copy (of rank 0's share: the state a checkpoint saves is rank 0's)
                self._writer.write(*self._carried)
            self.records.extend(self._carried)  # in the ledger already (its totals)
            self._carried = []
        if self._carried_apart and self._writer is not None:
            if self.reducer.rank == 0:
                for rank, record in self._carried_apart:
                    apart = RecordWriter(self.output_dir / RANK_RECORDS_FILE.format(rank=rank))
                    apart.write(record)
                    apart.close()
            self.records.extend(record for _, record in self._carried_apart)
            self._carried_apart = []

    # ------------------------------------------------------------------------------ embodied
    def embodied_summary(self) -> dict[str, Any]:
        """The run's embodied CO2eq (apart from the operational total) and how it was found."""
        return embodied_run.summary(self)

    # ------------------------------------------------------------------------------ internals
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

    def _take_pending(self) -> list[Record]:
        # Emptied once every record is built: a failure building one keeps them all for the next
        # boundary (or the run's end) to write, where emptied first it lost them.
        records = [self._local_record(*closed) for closed in self._pending]
        self._pending = []
        return records

    def _local_record(self, opened: OpenPhase, partial: bool, step: int | None) -> Record:
        pue = self.carbon.pue
        # Each segment's energy at the intensity of its own interval (sum of E_i x I_i); the
        # record keeps the energy-weighted mean and every source that contributed.
        co2eq_g = 0.0
        intensities = []
        for t0, t1, energy_j in opened.segments:
            intensities.append(self.carbon.intensity_between(t0, t1))
            co2eq_g += energy_j * pue / J_PER_KWH * intensities[-1].g_per_kwh
        if not intensities:
            intensities.append(self.carbon.intensity_between(opened.start_unix or 0.0, opened.start_unix or 0.0))
        intensity = intensities[-1]
        # The year of the data that priced most of the energy: a record across New Year, or priced
        # by a live source and by its fallback table of another year, said its last part's.
        energies = [energy_j for _, _, energy_j in opened.segments] or [0.0]
        year = max(zip(energies, range(len(intensities)), intensities), key=lambda part: (part[0], part[1]))[2].year
        it_energy_j = sum(c["energy_j"] for c in opened.components.values())
        facility_kwh = it_energy_j * pue / J_PER_KWH
        mean_g_per_kwh = co2eq_g / facility_kwh if facility_kwh > 0 else intensity.g_per_kwh
        source = "; ".join(dict.fromkeys(i.source for i in intensities))
        # Every part's terms, as its source: cut at each heartbeat, an epoch priced by a live API
        # and by the static table (a bucket that failed) named the last part's licence alone.
        licence = "; ".join(dict.fromkeys(term for i in intensities for term in (i.licence or "").split("; ") if term))
        components = []
        rank, host = self.reducer.rank, self._host
        for c in opened.components.values():
            out = {"name": c["name"], "kind": c["kind"], "energy_j": c["energy_j"], "method": c["method"]}
            if c["note"]:
                out["note"] = c["note"]
            if c.get("source"):
                out["source"] = c["source"]
            out["uncertainty_j"] = component_uncertainty_j(c)
            if c["name"] in self._gpu_uuids:  # which physical GPU (two ranks' gpu0 may be one GPU, or two)
                out["uuid"] = self._gpu_uuids[c["name"]]
            out["rank"] = rank
            out["host"] = host
            components.append(out)
        # hypot: a sum of squares that overflows (a sensor gone wild) must not fail the boundary.
        uncertainty_j = math.hypot(*(component_uncertainty_j(c) for c in opened.components.values()))
        record = Record(
            run_id=self.run_id,
            phase=opened.phase,
            epoch=opened.epoch,
            seq=opened.seq,
            start_time=utc_iso(opened.start_unix or 0.0),
            duration_s=opened.duration_s,
            samples=opened.samples,
            samples_counted=opened.samples_counted,
            tokens=opened.tokens or None,
            tokens_counted=opened.tokens_counted,
            it_energy_kwh=it_energy_j / J_PER_KWH,
            energy_kwh=facility_kwh,
            co2eq_g=co2eq_g,
            intensity_gco2eq_per_kwh=mean_g_per_kwh,
            intensity_source=source,
            intensity_zone=intensity.zone,
            intensity_year=year,
            intensity_licence=licence,
            intensity_is_default=intensity.is_default,
            pue=pue,
            pue_source=self.carbon.pue_source,
            energy_j_per_sample=None,
            co2eq_g_per_sample=None,
            components=components,
            uncertainty_kwh=uncertainty_j * pue / J_PER_KWH,
            step=step,
            metric_prefix=opened.metric_prefix,
            partial=partial,
            attempt=self.ledger.attempt,
            framework=self.framework,
            tool_version=__version__,
            paused_s=opened.paused_s or None,
            later_call=self._later_call,
        )
        if self.embodied_rate is not None:
            rate = self.embodied_rate
            record.embodied_co2eq_g = rate.grams * opened.duration_s
            record.embodied_co2eq_g_low = rate.range_g[0] * opened.duration_s
            record.embodied_co2eq_g_high = rate.range_g[1] * opened.duration_s
        return with_per_sample(record)

    def _publish(self, seq: int | None) -> Record | None:
        """Gather pending local records from all ranks, sum them, write, and update totals: whole,
        or not at all (a Ctrl-C between counting and writing a record lost it from the file)."""
        with interrupts.held():
            try:
                return self._publish_now(seq)
            except Exception:
                if self.reducer.world_size > 1 and self.running:
                    # A gather fails when another rank's process has died: no collective completes
                    # again. This rank writes its part (still pending) and its open phases up as a
                    # failing rank does, where they were lost; the error goes on to the caller.
                    self.abort()
                raise

    def _publish_now(self, seq: int | None) -> Record | None:
        if self.reducer.world_size > 1:
            # Pending until every rank has them: a gather that fails leaves them for `abort`.
            local = [self._local_record(*closed) for closed in self._pending]
            gathered = self.reducer.all_gather(([r.to_dict() for r in local], self._seconds_left_at_train_end))
            self._pending = []
            combined = combine_ranks([[Record.from_dict(d) for d in rank_records] for rank_records, _ in gathered])
            self._seconds_left_at_train_end = gathered[0][1]
        else:
            combined = self._take_pending()
        result = None
        for record in combined:
            self._accept(record)
            if record.seq == seq:
                result = record
        if combined and self.reducer.rank == 0 and self._writer is not None:
            self._writer.write(*combined)  # the gap and the phase: one write
        return result

    def _accept(self, record: Record) -> None:
        self.records.append(record)
        self.ledger.add(record)


# How far below a logged total a later one may come from summing the same amounts in another order
# (a few ulps) and still be held at the logged one (Tracker._never_back).
ROUNDING_HELD = 1e-12


def _held(total: float, logged: float) -> float:
    """``total``, or ``logged`` where ``total`` is below it by rounding alone."""
    return logged if math.isfinite(total) and logged - ROUNDING_HELD * abs(logged) <= total < logged else total


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
