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
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime as _dt
import functools
import math
import numbers
import operator
import os
import socket
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from greencallbacks import interrupts
from greencallbacks._version import __version__
from greencallbacks.checks import keywords_checked, one_line
from greencallbacks.distributed import LocalReducer, Reducer
from greencallbacks.ledger import Ledger, PhaseTotals, read_run_records, run_ids_in
from greencallbacks.runlock import RunLock
from greencallbacks.textformat import rank_ranges
from greencallbacks.meter import joules_between
from greencallbacks.prediction import PREDICTION_STEMS, predict
from greencallbacks.heartbeat import heartbeat_files, heartbeat_parts, heartbeat_path, ranks_written
from greencallbacks.records import (PHASES, RECORDS_FILE, Record, RecordWriter, combine_ranks, with_per_sample,
                                   write_json_atomic)
from greencallbacks.summaries import SUMMARY_FILE, write_summary
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

# The trackers measuring now in this process, each with the thread it started in: two trainings
# measured from two threads at once each bill the whole process (see `_say_measured_at_once`).
# Weak: a tracker dropped without its end measures nothing more.
_running: "weakref.WeakKeyDictionary[Tracker, threading.Thread]" = weakref.WeakKeyDictionary()
_running_lock = threading.Lock()
# The threads each thread's trackers were said to measure at once with: a thread pool's trials
# (optuna n_jobs=4) form new pairs of trackers at every trial, but few pairs of threads.
_told_at_once: "weakref.WeakKeyDictionary[threading.Thread, weakref.WeakSet[threading.Thread]]" = weakref.WeakKeyDictionary()
_thread_id = threading.get_ident  # per batch in add_samples (see _say_two_threads)


def _history_before(records: list[Record], state: dict[str, Any]) -> list[Record]:
    """The records a checkpoint's state comes after: of its attempt's earlier seq, and of the
    attempts before it."""
    attempt, seq = int(state.get("attempt", 0)), int(state.get("seq", 0))
    return sorted((r for r in records if (r.attempt, r.seq) < (attempt, seq)), key=lambda r: (r.attempt, r.seq))


def _distinct(directories: list[Path], excluding: Path | None) -> list[Path]:
    """``directories`` in order, each once however it is spelled (a symlink, a relative path), without ``excluding``."""
    kept: list[Path] = []
    for directory in directories:
        if not any(_same_directory(directory, other) for other in [*kept, *([excluding] if excluding else [])]):
            kept.append(directory)
    return kept


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them is not there
        return False


def utc_iso(unix_s: float) -> str:
    return _dt.datetime.fromtimestamp(unix_s, _dt.timezone.utc).isoformat(timespec="milliseconds")


# Methods whose error is a bias, the same in every window (a TDP model, a MIG share): a phase's
# segments add it linearly, where a counter's errors at its segments' boundaries add in quadrature.
# A phase cut into n segments (a checkpoint every step) said 50 %/sqrt(n) for a +-50 % estimate.
_BIASED = ("estimated", "apportioned")


def _component_uncertainty_j(slot: dict) -> float:
    return slot.get("bias_j", 0.0) + math.sqrt(slot["uncertainty_j2"])


@dataclass
class _Open:
    """A phase being measured: the sum of the intervals billed to it so far."""

    phase: str
    epoch: int | None
    seq: int
    metric_prefix: str | None = None
    start_unix: float | None = None
    duration_s: float = 0.0
    samples: int = 0
    samples_counted: bool = True
    tokens: int = 0
    tokens_counted: bool = True  # False: some batch's token count failed (see add_samples)
    paused_s: float = 0.0
    components: dict[str, dict] = field(default_factory=dict)
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, joules)

    def add(self, measurement: "Measurement", end_unix: float, marks: list[tuple[float, float]] | None = None) -> None:
        """Bill ``measurement`` (ending at ``end_unix``) to this phase; ``marks``: see ``_priced_apart``."""
        if self.start_unix is None:
            self.start_unix = measurement.start_unix
        self.duration_s += measurement.duration_s
        for c in measurement.components:
            slot = self.components.setdefault(
                c.name, {"name": c.name, "kind": c.kind, "energy_j": 0.0, "uncertainty_j2": 0.0, "bias_j": 0.0}
            )
            slot["energy_j"] += c.energy_j
            if c.method in _BIASED:  # the same model's error in every segment: it adds up
                slot["bias_j"] += c.uncertainty_j
            else:  # a counter's or sampled power's, at each segment's boundaries
                slot["uncertainty_j2"] += c.uncertainty_j * c.uncertainty_j  # inf, never OverflowError as ** raises
            slot["method"] = c.method
            slot["note"] = c.note
            slot["source"] = c.source
        # A segment never ends before it begins: priced over [t0, t1], which a carbon source refuses
        # the other way round, one bad stamp lost the whole phase's record. (The meter's stamps never
        # go backwards; a meter of the user's, or a future one, must not undo that here.)
        t0 = measurement.start_unix
        self.segments += _priced_apart(t0, max(t0, end_unix), measurement.energy_j, marks or [])

    @property
    def empty(self) -> bool:
        return self.start_unix is None or (self.duration_s == 0 and not self.samples)


def _priced_apart(t0: float, t1: float, energy_j: float, marks: list[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """The interval [t0, t1] of ``energy_j`` as segments (t0, t1, joules) cut at its ``marks``:
    (unix time, joules since t0) read at the heartbeats inside it.

    Each segment is priced at its own interval's intensity, so an epoch of hours with no boundary
    inside is priced at the energy-weighted intensity to a heartbeat's resolution: priced at the
    interval's time-weighted mean, a data stall (30 W) while the grid turned clean billed 1.14 g
    where 3.5 g were emitted. The joules are the interval's: a mark only splits them (a peek read
    ahead of the boundary's exact read is held within it)."""
    segments, done = [], 0.0
    for unix_s, joules in marks:
        if t0 < unix_s < t1:
            joules = min(max(joules, done), energy_j)
            segments.append((t0, unix_s, joules - done))
            t0, done = unix_s, joules
    segments.append((t0, t1, energy_j - done))
    return segments


# This process's id, kept by a fork hook rather than asked of the kernel (a system call) at every
# step's heartbeat.
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def _not_in_a_forked_child(method: Callable) -> Callable:
    """Do nothing in a process forked from the one that started the run (a user's ``os.fork``
    inside a phase): the child's copy of the run is its parent's, and so are its records. A child
    that left through the interpreter (``sys.exit``) ended the phase and the run there (a
    ``phase`` block's and a ``with`` block's exit, Lightning's ``on_exception``): it wrote the
    parent's open phase as a partial record into the parent's records file, which no longer summed
    to its summary, and ``report`` refused it."""

    @functools.wraps(method)
    def guarded(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if self.in_a_forked_child:
            return None
        return method(self, *args, **kwargs)
    return guarded


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
        self.embodied_settings = _embodied_settings(embodied)
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
        self._drawn_in_pid = _pid  # the process that drew the run id (see _draw_in_a_fork)
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
        self._stack: list[_Open] = []
        # Phases closed on this rank, not yet published: (the phase, partial, its step). Records are
        # built when published, so a gap closed by `begin` costs the training thread no record.
        self._pending: list[tuple[_Open, bool, int | None]] = []
        self._last_snapshot: Snapshot | None = None
        self._in_boundary = False  # see state_dict
        self._phases_lock = threading.RLock()  # see _holding_phases
        self._started_pid: int | None = None  # the process that started the run (see _not_in_a_forked_child)
        self._heartbeat_at: float | None = None  # the meter's monotonic time of the last heartbeat (or start)
        self._heartbeat_written: Path | None = None  # where it was written (the run id may change at a resume)
        self._heartbeats_carried: list[Path] = []  # the killed attempts' heartbeats the resume read
        # `live`: the previous call's peek (its power interval) and each open phase's billed sums.
        self._live_history: collections.deque[Snapshot] = collections.deque()  # earlier live() readings
        self._live_billed: dict[int, tuple[int, float, float]] = {}
        self._logged_totals = (0.0, 0.0)  # the run's highest logged totals, kWh and g (see _never_back)
        # (unix time, joules since the last boundary) at each heartbeat since it: see _priced_apart.
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
        self._concurrency_checked = True  # False from start to the first phase (see _say_measured_at_once)
        self._said_not_started = False
        self._records_elsewhere: list[str] = []  # the run's earlier records, where not in output_dir
        self._records_at_stop: tuple | None = None  # the records file as this session left it (see _run_went_on)
        self._carried: list[Record] = []  # a checkpoint's open phases that no record holds, to write (see _carry)
        self._carried_apart: list[tuple[int, Record]] = []  # a killed rank's parts, for its own file (see _carry_ranks)
        # Started again after finish: a later call of the run, which trains no more (see begin); its
        # records say so (``Record.later_call``), and bill no epoch's cost.
        self._later_call = False
        # The thread that began the outermost open phase, and another that counted into it (see _say_two_threads).
        self._phase_thread = 0
        self._counted_elsewhere = ""
        self._said_two_threads = False
        # GPUs: each GPU sensor's UUID by name (records carry it), the share of a GPU that other
        # ranks measure too billed to this rank by name (see _split_shared_gpus), and for the
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
            self._started_pid = _pid  # a copy is its process's own (unlike a fork's memory)
        if not self._run_id_given and self.meter is None and self.ledger.next_seq == 0 and self.ledger.attempt == 0:
            self.ledger.run_id = uuid.uuid4().hex[:12]
            self._drawn_in_pid = _pid

    def _draw_in_a_fork(self) -> None:
        """A tracker that has measured nothing, started in a fork of the process that drew its id,
        draws its own, as a copy does (``__setstate__``). Lightning's ``ddp_notebook`` / ``ddp_fork``
        fork the ranks of every fit from a notebook whose callback never measures: each fit took the
        notebook's id and numbered its records from 0 again, in one run with the fit before it. (On
        several ranks, rank 0's new id is every rank's: see ``start``.)"""
        if (not self._run_id_given and self.meter is None and self.ledger.next_seq == 0 and self.ledger.attempt == 0
                and getattr(self, "_drawn_in_pid", _pid) != _pid):
            self.ledger.run_id = uuid.uuid4().hex[:12]
            self._drawn_in_pid = _pid

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
        return self._started_pid is not None and self._started_pid != _pid

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
        self._draw_in_a_fork()
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
            self._avoid_a_run_id_taken()
        gpus = _gpus_of(meter)
        self._gpu_uuids = {name: uuid for name, uuid, _ in gpus}
        self._gpu_split, self.gpus_shared, self._unmeasured_all = {}, [], list(self.unmeasured_gpus)
        if self.reducer.world_size > 1:
            # One run id on every rank (each drew its own), so that a rank's own records, written
            # when a run fails, belong to the run; one session id, so that every rank knows a
            # checkpoint of this session alike; and every rank's GPUs (see _split_shared_gpus). A
            # collective: every rank starts here.
            here = {"gpus": gpus, "unmeasured": [{**u, "rank": self.reducer.rank} for u in self.unmeasured_gpus]}
            gathered = self.reducer.all_gather((self.run_id, self._session_id, here))
            self.ledger.run_id, self._session_id = gathered[0][0], gathered[0][1]
            self._unmeasured_all = [u for *_, there in gathered for u in there["unmeasured"]]
            self._split_shared_gpus([there["gpus"] for *_, there in gathered])
        self._own_sessions.add(self._session_id)
        self._started_pid = _pid
        if not self._hold_lock(self.output_dir, self.run_id) and self._run_id_given and self.reducer.world_size == 1:
            # Two fits started at once with one run_id: each would number its records from 0.
            self._take_a_free_run_id("is being measured by another process now")
        self._register_running()
        self._find_embodied(meter)
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
            self._resume()
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

    def _register_running(self) -> None:
        with _running_lock:
            _running[self] = threading.current_thread()
            self._concurrency_checked = False

    def _say_measured_at_once(self) -> None:
        """Warn where a tracker started in another thread of this process measures now (two fits
        in a thread pool): the process's CPU and memory sensors measure the process, the GPU's the
        whole device, so each run is billed both trainings, and nothing here can split them by
        thread. Said at the first phase, when a resume has named the run (Lightning restores after
        start), by the later of the two to get there: once per pair of threads (40 trials of a pool
        of 4 threads said it 39 times, once per pair of runs). Trackers started in one thread
        (two callbacks in one Trainer: two pricings of one training) measure one training, and
        ranks of one run (one run id) run as threads are one job: neither is said."""
        with _running_lock:
            here, self._concurrency_checked = _running.get(self), True
            if here is None:  # a copy of a running tracker, never started itself
                return
            told = _told_at_once.setdefault(here, weakref.WeakSet())
            at_once = [(tracker.run_id, thread) for tracker, thread in list(_running.items())
                       if thread is not here and thread.is_alive() and tracker.running
                       and tracker._concurrency_checked and tracker.run_id != self.run_id]
            others = [run_id for run_id, thread in at_once if thread not in told]
            for _, thread in at_once:
                told.add(thread)
                _told_at_once.setdefault(thread, weakref.WeakSet()).add(here)
        if others:
            from greencallbacks.meter import warn

            names = ", ".join(repr(run_id) for run_id in others)
            warn(f"greencallbacks: runs {names} and {self.run_id!r} are measured at once in this process, from "
                 "different threads: each bills the whole process's CPU time and memory and the whole devices "
                 "(no sensor tells a process's threads apart), so each run's figures are both trainings' "
                 "and their sum counts that energy twice.")

    def _split_shared_gpus(self, per_rank: list[list[tuple[str, str, float]]]) -> None:
        """Bill each physical GPU once over the ranks. Ranks on one GPU (two DDP ranks given one
        device, processes sharing GPU 0) each read the whole GPU's counter: summed, the run counted
        that GPU's energy once per rank. Where the ranks' shares of a GPU (1 each, a MIG
        instance's fraction) add up to more than the whole, each rank bills its share scaled so
        that they add up to 1: two ranks on one GPU bill half of it each, in their own records
        too (a failed run's unsummed ones). Said once, by rank 0, and in the summary."""
        holders: dict[str, list[tuple[int, str, float]]] = {}
        for rank, gpus in enumerate(per_rank):
            for name, gpu_uuid, share in gpus:
                holders.setdefault(gpu_uuid, []).append((rank, name, share))
        for gpu_uuid, held in holders.items():
            ranks = sorted({rank for rank, _, _ in held})
            total = sum(share for _, _, share in held)
            if len(ranks) < 2 or total <= 1.0 + 1e-9:  # its own GPU, or MIG instances' shares of one
                continue
            factor = 1.0 / total
            note = (f"{gpu_uuid} is measured by ranks {', '.join(map(str, ranks))}: each bills its share of the whole "
                    f"GPU's energy, {factor:.4g} of what it reads here")
            self.gpus_shared.append({"uuid": gpu_uuid, "ranks": ranks, "scaled_by": factor})
            for rank, name, _ in held:
                if rank == self.reducer.rank:
                    self._gpu_split[name] = (factor, note)
        if self.gpus_shared and self.reducer.rank == 0:
            from greencallbacks.meter import warn

            shared = "; ".join(f"{g['uuid']} by ranks {', '.join(map(str, g['ranks']))}" for g in self.gpus_shared)
            warn(f"greencallbacks: several ranks measure the same GPU ({shared}): each reads the whole GPU's energy, "
                 "so it is billed once over them, each rank its share (labelled in the records and the summary). "
                 "Usual causes: ranks given one CUDA device, or CUDA_VISIBLE_DEVICES the same for every rank.")

    def _avoid_a_run_id_taken(self) -> None:
        """A new run whose given id already has records where it writes (a second fit with one
        callback; the script run again) would add to that run's records: its seq numbers repeat and
        each summary covers half of them. It takes the first free ``<id>-N`` instead, said at its
        first phase: a Lightning resume, restored after start, continues the given run after all."""
        if self.run_id in self._run_ids_taken():
            self._take_a_free_run_id(f"already has records in {self.output_dir}, and this training is a new run "
                                     "(not a resume)")

    def _take_a_free_run_id(self, why: str) -> None:
        """Record as the first ``<id>-N`` that has no records here and no session measuring it (the
        claim is taken here), said at the first phase with ``why``."""
        given, taken = self.run_id, self._run_ids_taken()
        n = 2
        while f"{given}-{n}" in taken or not self._hold_lock(self.output_dir, f"{given}-{n}"):
            n += 1
        self._renamed_from, self._renamed_why, self.ledger.run_id = given, why, f"{given}-{n}"

    def _run_ids_taken(self) -> set[str]:
        """The run ids with records where this run writes, and beside it (``sibling_dirs``)."""
        taken = run_ids_in(self.output_dir)
        for directory in self.sibling_dirs:
            taken |= run_ids_in(directory)
        return taken

    def _say_renamed(self) -> None:
        given, self._renamed_from = self._renamed_from, None
        if self.reducer.rank == 0:
            from greencallbacks.meter import warn

            warn(f"greencallbacks: run_id {given!r} {self._renamed_why}: this training is recorded as "
                 f"{self.run_id!r}, so the two are not mixed.")

    @_not_in_a_forked_child
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
            self._say_two_threads(f"begin({phase!r})", threading.current_thread().name)
        if self._renamed_from is not None:
            self._say_renamed()
        if not self._concurrency_checked:
            self._say_measured_at_once()
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

    def _say_two_threads(self, call: str, thread: str) -> None:
        """Phases of one tracker used from two threads: a call bills, and ``add_samples`` counts,
        to the innermost open phase whatever thread opened it, so one thread's samples and time go
        into the other's phases. Said once per tracker. The check costs ``add_samples`` an int
        comparison, no lock: a count from another thread is noted there and said at the phase's
        end, so a run aborted meanwhile says nothing (the Keras watch counts a failed call's last
        batches from its own thread, then aborts the run)."""
        self._counted_elsewhere = ""
        if self._said_two_threads or len(self._stack) < 2:
            return
        self._said_two_threads = True
        names = {t.ident: t.name for t in threading.enumerate()}
        opened = self._stack[1]
        from greencallbacks.meter import warn

        warn(f"greencallbacks: Tracker.{call} came from thread {thread!r} while phase "
             f"{opened.phase!r} of run {self.run_id!r} was open, begun by thread "
             f"{names.get(self._phase_thread, self._phase_thread)!r}: a Tracker bills and counts into its innermost "
             "open phase whatever the thread, so one thread's samples and time land in the other's phases. Begin, "
             "count and end a Tracker's phases from one thread (two trainings at once: a Tracker each).")

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
                top.samples += samples if type(samples) is int and samples >= 0 else _count("samples", samples)
            if tokens is None:
                top.tokens_counted = False
            else:
                top.tokens += tokens if type(tokens) is int and tokens >= 0 else _count("tokens", tokens)
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
            opened.tokens += tokens if type(tokens) is int and tokens >= 0 else _count("tokens", tokens)

    def samples_so_far(self, phase: str, samples: int) -> None:
        """The innermost open ``phase`` has trained or evaluated exactly ``samples`` so far: for a
        phase a failure cut short, whose framework says how far it got (``end``'s ``samples`` for one
        that ends), written up by ``abort`` next. It may be under a loop that failed inside it (a
        Keras epoch's validation), whose own count ``add_samples`` keeps."""
        opened = self._innermost_open(phase)
        if opened is not None:
            opened.samples, opened.samples_counted = _count("samples", samples), True

    def _innermost_open(self, phase: str) -> "_Open | None":
        return next((opened for opened in reversed(self._stack[1:]) if opened.phase == phase), None)

    @_not_in_a_forked_child
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
            samples = _count("samples", samples)  # before anything is closed: refused, nothing is lost
        if not self.running:
            return None
        if self._counted_elsewhere:
            self._say_two_threads("add_samples", self._counted_elsewhere)
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

    @_not_in_a_forked_child
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

    @_not_in_a_forked_child
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
                summary_written = self._write_summary_of_every_rank()
            elif self.reducer.rank == 0:
                summary_written = self._write_summary()
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
        with _running_lock:
            _running.pop(self, None)
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

    def _write_summary_of_every_rank(self) -> bool:
        """A failed multi-rank run's summary, from every rank's records on disk: rank 0's own
        ledger lacks what the others measured after their last gather (their unfinished phases).
        Every rank writes it after its own records, and again while the records changed meanwhile
        (ranks failing at one instant): whichever rank replaces it last read every rank's records.
        Only where rank 0's records are (a shared directory): a host of its own holds a part.
        False where the summary could not be written."""
        if self.output_dir is None or not (self.output_dir / RECORDS_FILE).is_file():
            return True
        own = self.ledger
        written = False
        records = read_run_records(self.run_id, [self.output_dir])
        try:
            for _ in range(5):
                merged = Ledger(self.run_id)
                merged.resume({"run_id": self.run_id}, records)
                merged.attempt = own.attempt
                self.ledger = merged
                written = self._write_summary()
                again = read_run_records(self.run_id, [self.output_dir])
                if len(again) == len(records):
                    break
                records = again
        finally:
            self.ledger = own
        return written

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
        this one (since the first call, or the last boundary before it, until one is). Adds no record and never touches the ledger, so records and per-epoch values are
        the same with or without it.

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
        marks as the boundary will cut it (``_priced_apart``). The parts up to the newest mark are
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
        # Never priced backwards (see _Open.add: the meter's stamps never go back, a meter of the user's might).
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
        another output_dir (see ``_resume``), then this attempt's."""
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
                # it twice. The open phases are saved either way, as billed so far (see _carry).
                self._boundary()
            open_records = self._open_records()
            if self.reducer.world_size > 1 and self._last_snapshot is not None:
                # The checkpoint (rank 0's) holds rank 0's part: each rank's, measured as far, beside
                # it, for the resume to sum, and for a report of the run if it is never resumed. (Not
                # on one rank: Keras saves its state at every epoch end, and the checkpoint is whole.)
                self._heartbeat_at = self._last_snapshot.monotonic_s
                self._write_heartbeat(open_records, self._last_snapshot.unix_s)
        state = {**self.ledger.state_dict(open_records), "records_path": self._records_path(), "session_id": self._session_id,
                 "open_records": [r.to_dict() for r in open_records]}  # see _carry
        if self._records_elsewhere:  # the run's earlier attempts, written in other directories (see _resume)
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
        any handler running then loses at most that long of its last phase (see ``_carry``)."""
        meter = self.meter
        if meter is None or self._last_snapshot is None:
            return
        if self._heartbeat_at is not None and meter.monotonic_s() - self._heartbeat_at < HEARTBEAT_S:
            return  # not due: one clock read, at every step
        if self.in_a_forked_child:  # (asked only when due: see _not_in_a_forked_child)
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
        an epoch: the resume carried one GPU's hour). The resume sums the parts (``_carry_ranks``)."""
        if self.output_dir is None:
            return
        path = heartbeat_path(self.output_dir, self.run_id, self.reducer.rank, self._session_id)
        if self._heartbeat_written != path:  # the run named anew by a resume (Lightning's, after start)
            self._forget_heartbeat()
        self._heartbeat_written = path
        write_json_atomic(path, {
            "schema": "greencallbacks.open/1",
            "run_id": self.run_id,
            "attempt": self.ledger.attempt,
            "rank": self.reducer.rank,
            "session_id": self._session_id,  # see _heartbeat_parts
            "written": utc_iso(unix_s),
            "open_records": [r.to_dict() for r in open_records],
        })

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
            self._resume()

    def _resume(self) -> None:
        # (A call that just failed may have been writing up on the watch thread: settled before, see start.)
        state, self._resume_state = self._resume_state, None
        self._renamed_from = None  # the given run id continues after all
        self._logged_totals = (0.0, 0.0)  # the totals go on from the checkpoint's run (maybe another one)
        ledger, output_dir = copy.copy(self.ledger), self.output_dir  # `resume` rebinds, never mutates
        try:
            home = Path(state["records_path"]).parent if state.get("records_path") else None
            run_id = state.get("run_id", self.run_id)
            if not isinstance(run_id, str) or not run_id:
                raise ValueError(f"run_id {run_id!r}")
            copied = self._copy_of(home, run_id, state)
            if copied is not None:  # a copy of the run's directory, resumed from the copy: its own history
                self.output_dir = home = copied
            elif home is not None and (home.is_dir() or home.parent.is_dir()) and not self._output_dir_chosen:
                # The run goes on in its own records file (one run, one ledger), even when the framework
                # made a new log directory for this attempt (Lightning's version_N), unless the user chose
                # a directory, or the run's is not on this machine (its parent is missing too).
                self.output_dir = home
            if self.reducer.world_size == 1 and not self._hold_lock(home if home is not None and home.is_dir() else self.output_dir, run_id):
                self.output_dir = output_dir
                if run_id == self.run_id:  # the id given: a run of its own needs an id of its own
                    self._take_a_free_run_id("")
                    self._renamed_from = None  # said here
                from greencallbacks.meter import warn

                warn(f"greencallbacks: run {run_id} is being measured by another process now (an evaluation job "
                     "while it trains? two fits resumed from one checkpoint?); this one is measured as a run of its own "
                     f"({self.run_id}), not as its next attempt, so that neither writes over the other's records.")
                return
            # The run's history is where this attempt writes, when the run has records there: a
            # copy of its directory resumed from the copy continues the copy's history, not the
            # original's (which may have gone on since: its later attempts are no part of this
            # one's). Else where the checkpoint says it was written (a directory chosen anew).
            records = read_run_records(run_id, [self.output_dir])
            # Attempts written in other directories (a resume into an output_dir chosen anew, and
            # the resumes after it): the history is theirs and this one's, or the third attempt
            # lost the first's energy.
            earlier = [Path(p).parent for p in state.get("earlier_records") or () if isinstance(p, str)]
            moved = home is not None and self.output_dir is not None and not _same_directory(home, self.output_dir)
            if moved and read_run_records(run_id, [home]):
                earlier.append(home)  # (also where this directory holds some of the run: A, then B, then A)
            elif not records and home is not None:
                records = read_run_records(run_id, [home])
            earlier = _distinct(earlier, self.output_dir)
            gone = [d for d in earlier if not (d / RECORDS_FILE).is_file()]
            if gone:
                # The run's history is not all here to read: the checkpoint's totals are (the
                # records found would leave the missing directories' energy out of the run).
                records = []
                from greencallbacks.meter import warn

                warn(f"greencallbacks: the records of run {run_id} in {', '.join(map(str, gone))} are gone; its totals go "
                     "on from the checkpoint's, and a report of the directories left covers only their attempts.")
            elif earlier:
                records = read_run_records(run_id, [*earlier, self.output_dir])
            if earlier:
                self._records_elsewhere = [str(d / RECORDS_FILE) for d in earlier]
                if moved:
                    self._say_records_elsewhere(run_id, earlier)
            if gone:
                self.ledger.resume(state, records)
            else:
                self._resume_carrying(state, records, [home, self.output_dir])
        except (TypeError, ValueError, KeyError, AttributeError, OSError) as error:
            # A checkpoint's entry edited, damaged or from an unknown version: the framework's
            # restore must not fail for it. This training is measured, as a run of its own.
            self.ledger, self.output_dir = ledger, output_dir
            from greencallbacks.meter import warn

            warn(f"greencallbacks: the energy state saved in the checkpoint is unreadable ({error!r}); "
                 f"this training is measured as a new run ({self.run_id}), without the checkpoint's totals.")
            return
        for opened in self._stack:  # numbered before the run was known
            opened.seq = self.ledger.take_seq()
        if self.running:
            self._open_writer()

    def _resume_carrying(self, state: dict[str, Any], records: list[Record], directories: list[Path | None]) -> None:
        """Continue the run from ``records`` (or the checkpoint's totals where there are none), with
        the phases its killed attempt left open (``_carry``), each counted once."""
        self.ledger.resume(state, records)  # names the run
        found = _distinct([d for d in directories if d is not None], None)
        self._heartbeats_carried = [path for path, _ in heartbeat_files(self.run_id, found)]
        parts = heartbeat_parts(self.run_id, found, not_of=self._session_id)
        saved = self._carry(state, records)
        beaten = self._carry_heartbeat(state, records, saved, parts.pop(0, []))
        # Rank 0's part of each phase left open: the checkpoint's measure, or its heartbeat's later one;
        # then summed with the other ranks' parts.
        carried = {(r.seq, r.attempt): r for r in saved}
        carried.update({(r.seq, r.attempt): r for r in beaten})
        carried = self._carry_ranks(state, records, carried, parts)
        as_saved = {(r.seq, r.attempt): r for r in saved}
        changed = [r for key, r in carried.items() if as_saved.get(key) is not r]
        uncounted = list(carried.values())
        if not records:
            # The ledger goes on from the checkpoint's totals, which count the phases it saved open
            # as they were then: a later or summed measure of such a phase replaces that one.
            self.ledger.resume(_uncounted(state, [r for key, r in as_saved.items() if carried[key] is not r]), records)
            uncounted = changed
        self._carried = sorted(carried.values(), key=_in_order)
        for record in sorted([*uncounted, *(r for _, r in self._carried_apart)], key=_in_order):
            self.ledger.add(record)
        if changed:
            # An attempt that wrote no record of its own (killed before its first) is numbered
            # from the records: the one after it must not take its attempt number or its seqs.
            self.ledger.attempt = max(self.ledger.attempt, max(r.attempt for r in changed) + 1)
            self.ledger.next_seq = max(self.ledger.next_seq, max(r.seq for r in changed) + 1)

    def _carry_ranks(self, state: dict[str, Any], records: list[Record], carried: dict[tuple[int, int], Record],
                     others: dict[int, list[Record]]) -> dict[tuple[int, int], Record]:
        """Each phase left open, summed over the ranks that measured it. A checkpoint holds rank 0's
        part alone; each other rank wrote its own in its heartbeat (``others``, by rank; at the
        checkpoint too, see ``state_dict``): 8 GPUs preempted an hour into an epoch carried one
        GPU's hour, not eight."""
        written = ranks_written(records)  # a rank killed alone wrote no part of the phases it had open
        self._carried_apart = []
        after = (int(state.get("attempt", 0)), int(state.get("seq", 0)))
        parts: dict[tuple[int, int], list[Record]] = {}
        for rank, part in others.items():
            for record in part:
                key = (record.seq, record.attempt)
                held = written.get((record.run_id, record.attempt, record.seq), ())
                if held is None or rank in held:
                    continue  # this rank's part is in the records
                if held:
                    # Other ranks wrote their parts of it as they failed: this one's goes beside
                    # theirs, in its own rank's file, as it would have written it (one record of
                    # that seq in the run's file, and the report sums the parts).
                    self._carried_apart.append((rank, dataclasses.replace(record, carried=True)))
                # A phase closed before the checkpoint is in its records or its totals already.
                elif key in carried or (record.attempt, record.seq) >= after:
                    parts.setdefault(key, []).append(record)
        summed = dict(carried)
        for key, others_parts in parts.items():
            record = combine_ranks(([[carried[key]]] if key in carried else []) + [[part] for part in others_parts])[0]
            record.carried = True
            summed[key] = record
        return summed

    def _carry_heartbeat(self, state: dict[str, Any], records: list[Record], saved: list[Record],
                         heartbeat: list[Record]) -> list[Record]:
        """The open phases of the run's last heartbeat (``heartbeat``: rank 0's part) that no record holds and that
        the checkpoint does not hold as long: a phase open at the checkpoint, measured further (the
        killed attempt's heartbeat is later than its checkpoint), or begun after the checkpoint.
        A phase closed before the checkpoint is in its records (or its totals) already."""
        written = _held_with_rank_0(records)
        at_checkpoint = {(r.seq, r.attempt): r.duration_s for r in saved}
        after = (int(state.get("attempt", 0)), int(state.get("seq", 0)))
        carried = []
        for record in heartbeat:
            key = (record.seq, record.attempt)
            if key in written:
                continue
            if key in at_checkpoint:
                later = record.duration_s > at_checkpoint[key]
            else:
                later = (record.attempt, record.seq) >= after
            if later:
                record.carried = True
                carried.append(record)
        return carried

    def _carry(self, state: dict[str, Any], records: list[Record]) -> list[Record]:
        """The phases the checkpoint saved open (as measured so far) that no record holds: their
        attempt was killed before writing them (preempted, SIGKILL: no handler runs). The totals
        count them; without these lines the records did not (a single-epoch fine-tune preempted
        inside its epoch: summary 2.15e-6 kWh, records 1.59e-6), or, where the run had written a
        record before, the totals lost them too."""
        written = _held_with_rank_0(records)
        carried = [Record.from_dict(saved) for saved in state.get("open_records") or ()]
        carried = [r for r in carried if r.run_id == self.run_id and (r.seq, r.attempt) not in written]
        for record in carried:
            record.carried = True
        return carried

    def _say_records_elsewhere(self, run_id: str, earlier: list[Path]) -> None:
        """A resume into an ``output_dir`` chosen anew: this attempt's records go there, the
        earlier ones stay where they were written, and the summary (of the whole run) is more
        than the records beside it. Said, and named in the summary, so that neither place is
        read as the whole run."""
        if self.reducer.rank == 0:
            from greencallbacks.meter import warn

            places = " ".join(map(str, earlier))
            warn(f"greencallbacks: run {run_id} continues in {self.output_dir} (the output_dir given), and its "
                 f"earlier attempts' records stay in {', '.join(map(str, earlier))}: its energy-summary.json here covers "
                 f"the whole run. For the whole run: greencallbacks report {places} {self.output_dir}")

    def _copy_of(self, home: Path | None, run_id: str, state: dict[str, Any]) -> Path | None:
        """Where this attempt's directory, or the one of the same name beside it (Lightning's
        ``version_0`` beside the ``version_1`` it opened), holds the run's history up to the
        checkpoint though the checkpoint names another directory (``home``): a copy of the run's
        directory (``cp -r``; or the run's directory moved), resumed from the copy. Its history
        is the copy's, not the original's, which may have gone on since; this attempt writes
        there, never into the original. The same records, not the same id: a run_id given is
        unique only within a directory, and another directory may hold another run under it."""
        if home is None or self.output_dir is None:
            return None
        for here in dict.fromkeys((self.output_dir, self.output_dir.parent / home.name)):
            if here.is_dir() and not _same_directory(here, home) and run_id in run_ids_in(here):
                history = _history_before(read_run_records(run_id, [here]), state)
                if history and (not home.is_dir() or history == _history_before(read_run_records(run_id, [home]), state)):
                    return here
        return None

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
    def _find_embodied(self, meter: "Meter") -> None:
        """Embodied CO2eq per second of the measured hardware: linear in a record's duration, so
        it is found once here and each record is only a multiplication (no table look-up per boundary)."""
        self.embodied_rate = self._embodied_found = None
        self._embodied_left_out = []
        if self.embodied_settings is None:
            return
        from greencallbacks.embodied import embodied_for

        described = meter.describe()
        for device in described:  # a GPU other ranks measure too: this rank's share of its footprint
            if device.get("name") in self._gpu_split:
                device["share"] = float(device.get("share", 1.0)) * self._gpu_split[device["name"]][0]
        models = {d["name"]: d["model"] for d in described if d.get("model")}
        left_out: list[dict[str, Any]] = []
        try:
            found = embodied_for(described, 1.0, models=models, left_out=left_out, **self.embodied_settings)
        except Exception as error:  # noqa: BLE001 - embodied is extra; it must not stop a run
            from greencallbacks.meter import warn

            warn(f"greencallbacks: embodied emissions left out ({error!r}).")
            return
        self._embodied_found, self._embodied_left_out = found, left_out
        # Billed only when some device had a footprint; otherwise the record says nothing rather than 0.
        self.embodied_rate = found if any("kgco2eq" in s for s in found.sources) else None

    def embodied_summary(self) -> dict[str, Any]:
        """The run's embodied CO2eq (apart from the operational total) and how it was found."""
        totals = self.ledger.embodied
        found = self._embodied_found
        missing = list(found.missing) if found else (["turned off (embodied=False)"] if self.embodied_settings is None else [])
        # The same, structured: what the report reads (it parsed the words above, which are for people).
        left_out = [dict(part) for part in self._embodied_left_out] if found else (
            [_left_out("run", "turned off")] if self.embodied_settings is None else [])
        # What the sources and the missing above describe is this attempt; an earlier one (resumed
        # on another GPU, or with embodied=False) may have billed nothing, or this one nothing of
        # the run that earlier ones billed: the total then covers part of the run, said here.
        count = sum(t.count for t in self.ledger.totals.values())
        unbilled = count - sum(t.embodied_count for t in self.ledger.totals.values())
        if totals and unbilled:
            missing.append(f"{unbilled} of the run's {count} records carry no embodied figure (an attempt or call "
                           "where none was known or it was turned off): embodied_co2eq_g covers the others only")
            left_out.append({**_left_out("records", "records unbilled"), "records": unbilled, "of": count})
        sources = list(found.sources) if found else []
        if self._embodied_elsewhere:
            sources, missing, left_out = _with_other_ranks(sources, missing, left_out, self._embodied_elsewhere)
        return {
            "embodied_co2eq_g": totals[0] if totals else None,
            "embodied_co2eq_g_low": totals[1] if totals else None,
            "embodied_co2eq_g_high": totals[2] if totals else None,
            "embodied_sources": sources,
            "embodied_missing": missing,
            "embodied_left_out": left_out,
        }

    # ------------------------------------------------------------------------------ internals
    def _open(self, phase: str, epoch: int | None, metric_prefix: str | None = None) -> _Open:
        epoch = None if epoch is None else int(epoch)  # a NumPy integer would be written as a string
        return _Open(phase=phase, epoch=epoch, seq=self.ledger.take_seq(), metric_prefix=metric_prefix)

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
        return _split(measurement, self._gpu_split) if self._gpu_split else measurement

    def _close(self, opened: _Open, partial: bool = False) -> None:
        if opened.phase == "other" and opened.empty:
            return
        self._pending.append((opened, partial, self.step))

    def _take_pending(self) -> list[Record]:
        # Emptied once every record is built: a failure building one keeps them all for the next
        # boundary (or the run's end) to write, where emptied first it lost them.
        records = [self._local_record(*closed) for closed in self._pending]
        self._pending = []
        return records

    def _local_record(self, opened: _Open, partial: bool, step: int | None) -> Record:
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
            out["uncertainty_j"] = _component_uncertainty_j(c)
            if c["name"] in self._gpu_uuids:  # which physical GPU (two ranks' gpu0 may be one GPU, or two)
                out["uuid"] = self._gpu_uuids[c["name"]]
            out["rank"] = rank
            out["host"] = host
            components.append(out)
        # hypot: a sum of squares that overflows (a sensor gone wild) must not fail the boundary.
        uncertainty_j = math.hypot(*(_component_uncertainty_j(c) for c in opened.components.values()))
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

    def _write_summary(self) -> bool:
        """False where it could not be written (its directory is not writable)."""
        assert self.output_dir is not None
        summary = {
            "schema": "greencallbacks.summary/1",
            "run_id": self.run_id,
            "framework": self.framework,
            "tool_version": __version__,
            "energy_kwh": self.total_energy_j / J_PER_KWH,
            "co2eq_g": self.total_co2eq_g,
            **self.embodied_summary(),
            "phases": {p: t.as_dict() for p, t in self.totals.items() if t.count},
            "carbon": self.carbon.describe(),
            "sensors": self.meter.describe() if self.meter is not None else [],
            "ranks": self.reducer.world_size,
            "attempts": self.ledger.attempt + 1,
            # How the call that wrote it ended: "failed" (an exception or Ctrl-C; its open phases are
            # partial records), else "finished". The totals alone read alike either way.
            "ended": "failed" if self._failing else "finished",
        }
        if self._records_elsewhere:  # earlier attempts written in another directory (see _say_records_elsewhere)
            summary["earlier_records"] = self._records_elsewhere
        if self.gpus_shared:
            summary["gpus_shared"] = self.gpus_shared
        if self._unmeasured_all:  # in no record: without this, nothing said the GPU energy left them out
            summary["gpus_unmeasured"] = self._unmeasured_all
        for key, value in self.summary_extra.items():
            # A callable field is made from the totals being written (the budget's use), so that
            # it agrees with them however the run ended.
            value = value(summary) if callable(value) else value
            if value is not None:  # None: nothing to say (a field made only when there is)
                summary[key] = value
        return write_summary(self.output_dir, self.run_id, summary)


def _uncounted(state: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """``state`` with ``records`` (phases it saved open) taken out of its totals again."""
    if not records:
        return state
    totals = {phase: dict(values) for phase, values in (state.get("totals") or {}).items()}
    prefix_totals = [[phase, prefix, dict(values)] for phase, prefix, values in state.get("prefix_totals") or []]
    for record in records:
        counted = PhaseTotals()
        counted.add(record)
        slots = [totals.get(record.phase)] + [values for phase, prefix, values in prefix_totals
                                              if (phase, prefix) == (record.phase, record.metric_prefix)]
        for slot in filter(None, slots):
            for name, value in vars(counted).items():
                if name == "tokens_counted":  # which record made it false is not known: kept
                    continue
                if name == "tokens":  # None: counted none; what the open phases alone counted is none again
                    if value is not None and slot.get(name) is not None:
                        slot[name] = max(0, slot[name] - value) or None
                    continue
                slot[name] = max(0, slot.get(name, 0) - value)  # never below 0 by rounding
    return {**state, "totals": totals, "prefix_totals": prefix_totals}


def _held_with_rank_0(records: list[Record]) -> set[tuple[int, int]]:
    """The phases (seq, attempt) whose records hold rank 0's part. A phase whose records hold other
    ranks' parts alone (each wrote its own as it failed, while rank 0 was killed outright) still
    lacks rank 0's, which its checkpoint or heartbeat holds: 2 ranks, rank 0 killed inside an epoch
    and rank 1 failing after it, lost rank 0's part of that epoch on resume. Parts of unknown ranks
    (no components, or records without ranks) count as rank 0's, as before."""
    return {(seq, attempt) for (_, attempt, seq), held in ranks_written(records).items()
            if held is None or not held or None in held or 0 in held}


def _in_order(record: Record) -> tuple[int, int]:
    return record.attempt, record.seq


def _count(name: str, value: object) -> int:
    """``value`` as a plain int >= 0: any integer (NumPy's, a torch scalar's), else ValueError. A
    NumPy integer was written to the records as a string, which made the whole file unreadable."""
    try:
        count = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"{name} must be an integer >= 0 (None: not counted), got {value!r}")
    return count


def check_output_dir(output_dir: object) -> None:
    """Refuse, at construction, an ``output_dir`` that cannot hold the records: not a path, or a
    path that is (or lies under) a file. A directory not there yet is made at the first record; a
    file there failed every write of the run, and its records and summary were lost."""
    if output_dir is None:
        return
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ValueError(f"output_dir must be a directory path (str or os.PathLike) or None, got {output_dir!r}")
    path = Path(output_dir)
    for place in (path, *path.parents):
        try:
            if not place.exists():
                continue
            is_dir = place.is_dir()
        except OSError:  # not ours to read (a permission): the writer says so if it matters
            return
        if not is_dir:
            where = "is a file" if place == path else f"lies under {str(place)!r}, which is a file"
            raise ValueError(f"output_dir {str(output_dir)!r} {where}, not a directory: records could not be written there")
        return


def _embodied_settings(embodied: object) -> dict[str, Any] | None:
    """Check ``embodied=`` at construction: None/True (defaults), False (off) or ``embodied_for`` arguments."""
    if embodied is None or embodied is True:
        return {}
    if embodied is False:
        return None
    allowed = ("host", "host_share", "ram_gb", "lifetime_years", "utilisation")
    # Any mapping: Hydra's instantiate hands a config's dict over as a DictConfig.
    if not isinstance(embodied, Mapping) or not all(k in allowed for k in embodied):
        raise ValueError(f"embodied must be None, False or a dict with keys among {allowed}, got {embodied!r}")
    from greencallbacks.embodied import embodied_for

    embodied_for([], 0.0, **embodied)  # each value checked now, naming the argument
    return dict(embodied)


def _left_out(part: str, why: str) -> dict[str, Any]:
    """An ``embodied_left_out`` entry for what is no device (see ``embodied_for``'s ``left_out``)."""
    return {"part": part, "kind": None, "model": None, "why": why}


def _with_other_ranks(sources: list[dict[str, Any]], missing: list[str], left_out: list[dict[str, Any]],
                      elsewhere: list[tuple[int, Any]]) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """This rank's embodied ``sources``, ``missing`` and ``left_out`` with every other rank's
    added: the devices each billed (its ``billed`` entries named by rank) and what each left out,
    one line (and one entry, with its ``ranks``) per reason with the ranks that gave it. "Billed
    where the host is measured" is dropped: the rank that measures the host says what it billed there."""
    devices = [{**s, "billed": list(s.get("billed", []))} for s in sources if "kgco2eq" in s]
    settings = [s for s in sources if "kgco2eq" not in s]  # lifetime and utilisation, alike on every rank
    by_key = {s["key"]: s for s in devices}
    reasons: dict[str, list[int]] = {}
    parts: dict[str, dict[str, Any]] = {}
    for rank, (their_sources, their_missing, their_left_out) in elsewhere:
        for source in their_sources:
            if "kgco2eq" not in source:
                if not any(s.get("key") == source.get("key") for s in settings):
                    settings.append(source)
                continue
            entry = by_key.get(source["key"])
            if entry is None:
                entry = by_key[source["key"]] = {**source, "billed": []}
                devices.append(entry)
            entry["billed"] += [f"rank {rank}: {billed}" for billed in source.get("billed", [])]
        for reason, part in zip(their_missing, their_left_out):
            if not reason.endswith("billed where the host is measured"):
                reasons.setdefault(reason, []).append(rank)
                parts.setdefault(reason, dict(part))
    missing = list(missing) + [f"rank{'s' if len(ranks) > 1 else ''} {rank_ranges(ranks)}: {reason}"
                               for reason, ranks in reasons.items()]
    left_out = list(left_out) + [{**parts[reason], "ranks": ranks} for reason, ranks in reasons.items()]
    return devices + settings, missing, left_out


# How far below a logged total a later one may come from summing the same amounts in another order
# (a few ulps) and still be held at the logged one (Tracker._never_back).
ROUNDING_HELD = 1e-12


def _held(total: float, logged: float) -> float:
    """``total``, or ``logged`` where ``total`` is below it by rounding alone."""
    return logged if math.isfinite(total) and logged - ROUNDING_HELD * abs(logged) <= total < logged else total


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _gpus_of(meter: "Meter") -> list[tuple[str, str, float]]:
    """(name, UUID, share billed) of each sensor of a physical GPU (NVML's, amdsmi's; a MIG
    instance's names its parent GPU, with its share). A sensor of the user's own names no GPU."""
    from greencallbacks.sensors.gpu import GpuSensor

    gpus = []
    for sensor in meter.sensors:
        device = getattr(sensor, "device", sensor)  # an Apportioned share of one
        if isinstance(device, GpuSensor) and isinstance(sensor.scope, str) and sensor.scope:
            gpus.append((sensor.name, sensor.scope, float(getattr(sensor, "share", 1.0))))
    return gpus


def _split(measurement: "Measurement", split: dict[str, tuple[float, str]]) -> "Measurement":
    """``measurement`` with the components of ``split`` scaled by its factor and labelled."""
    components = tuple(
        dataclasses.replace(c, energy_j=c.energy_j * split[c.name][0], uncertainty_j=c.uncertainty_j * split[c.name][0],
                            note="; ".join(filter(None, [c.note, split[c.name][1]])))
        if c.name in split else c
        for c in measurement.components
    )
    return dataclasses.replace(measurement, components=components)
