"""What a checkpoint and a heartbeat hold of a run (``_CheckpointState``, part of ``Tracker``):
``state_dict`` and ``load_state_dict`` (a resume, see ``resume``), ``wrote`` (a checkpoint of the
run itself, not a resume), and the open phases written beside the records every ``HEARTBEAT_S``
(``heartbeat``), for a resume or a report after a kill.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greencallbacks.heartbeat import heartbeat_path, write_heartbeat
from greencallbacks.phase_lock import _holding_phases
from greencallbacks.phase_records import utc_iso
from greencallbacks.records import Record
from greencallbacks.resume import resume

if TYPE_CHECKING:
    from greencallbacks.meter import Snapshot

# The open phases, as a resume would carry them, are written beside the records at most this often
# (asked at every Lightning and HF step, by Keras' watch thread and at every `add_samples`: see
# `heartbeat`): a process killed without any handler running (SIGKILL, the OOM killer, a preemption)
# loses at most this long of its last phase, where the checkpoint's open phases alone lost
# everything since the last checkpoint (hours, in a long epoch).
# One small atomic write a minute: ~1 ms, never per batch.
HEARTBEAT_S = 60.0



class _CheckpointState:
    """Part of ``Tracker``: its methods that save and restore the run's state and write its
    heartbeat. No state of its own: they read and write the tracker's (see ``Tracker.__init__``)."""

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

    @_holding_phases(settled=True)
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpointed run of ``state`` as its next attempt (before or after ``start``);
        nothing to do for a state this tracker wrote (see ``wrote``)."""
        if self.wrote(state):
            return
        self._resume_state = dict(state)
        if self.running:  # Lightning restores callbacks after setup
            resume(self)
