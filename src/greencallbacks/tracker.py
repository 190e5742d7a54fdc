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

Its methods are split by idea into mixins, each in a module of its own: phase boundaries and the
counts in them (``phase_boundaries``), the records built from the phases and written
(``phase_records``), the run's end (``run_end``), the values logged (``logged_values``), and the
checkpoint's state and the heartbeat (``checkpoint_state``); the lock they hold is ``phase_lock``'s.
Beside it, each in a module of its own: an open phase's sums (``open_phase``), the run's id
(``run_ids``), the resume of a checkpoint's run (``resume``), the heartbeat's file
(``heartbeat``), the summary (``summaries``), a GPU that several ranks measure
(``shared_gpus``), the embodied figure (``embodied_run``), threads (``concurrency``) and forks
(``forks``).
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from greencallbacks import concurrency, embodied_run, forks, run_ids
from greencallbacks.checks import check_output_dir, keywords_checked, one_line
from greencallbacks.checkpoint_state import _CheckpointState
from greencallbacks.distributed import LocalReducer, Reducer
from greencallbacks.ledger import Ledger, PhaseTotals
from greencallbacks.logged_values import _LoggedValues
from greencallbacks.open_phase import OpenPhase
from greencallbacks.phase_boundaries import _PhaseBoundaries
from greencallbacks.phase_lock import _holding_phases
from greencallbacks.phase_records import _PhaseRecords
from greencallbacks.prediction import PREDICTION_STEMS
from greencallbacks.records import Record, RecordWriter
from greencallbacks.resume import resume
from greencallbacks.run_end import _RunEnd
from greencallbacks.runlock import RunLock
from greencallbacks.shared_gpus import gpus_of, split_shared
from greencallbacks.summaries import SUMMARY_FILE

# Defined in the modules above, and importable here as before the split. A test that patches one
# patches it where it is read: HEARTBEAT_S in checkpoint_state, GAP_WRITTEN_AT_BEGIN_S in
# phase_boundaries, LIVE_POWER_WINDOW_S in logged_values.
from greencallbacks.checkpoint_state import HEARTBEAT_S as HEARTBEAT_S
from greencallbacks.logged_values import LIVE_POWER_WINDOW_S as LIVE_POWER_WINDOW_S
from greencallbacks.logged_values import ROUNDING_HELD as ROUNDING_HELD
from greencallbacks.logged_values import _held as _held
from greencallbacks.logged_values import _nan_if_none as _nan_if_none
from greencallbacks.phase_boundaries import GAP_WRITTEN_AT_BEGIN_S as GAP_WRITTEN_AT_BEGIN_S
from greencallbacks.phase_boundaries import _check_phase as _check_phase
from greencallbacks.phase_boundaries import _thread_id as _thread_id
from greencallbacks.phase_records import RANK_RECORDS_FILE as RANK_RECORDS_FILE
from greencallbacks.phase_records import utc_iso as utc_iso

if TYPE_CHECKING:
    from greencallbacks.carbon import Carbon
    from greencallbacks.embodied import Embodied
    from greencallbacks.meter import Meter, Snapshot

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


@keywords_checked
class Tracker(_PhaseBoundaries, _PhaseRecords, _RunEnd, _LoggedValues, _CheckpointState):
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

    # ------------------------------------------------------------------------------ embodied
    def embodied_summary(self) -> dict[str, Any]:
        """The run's embodied CO2eq (apart from the operational total) and how it was found."""
        return embodied_run.summary(self)
