"""How a run ends (``_RunEnd``, part of ``Tracker``): ``finish`` (the last gap closed, every rank's
records summed and written), ``abort`` (a failing run written up without collectives), and
``_stop`` (the meter, the writer, the summary, the heartbeat and the run's lock let go); with what
a later ``start`` checks of the run as it was left (``_run_went_on``, ``_hold_lock``).
"""

from __future__ import annotations

import os
from pathlib import Path

from greencallbacks import concurrency
from greencallbacks.forks import not_in_a_forked_child
from greencallbacks.ledger import read_run_records
from greencallbacks.phase_lock import _holding_phases
from greencallbacks.phase_records import RANK_RECORDS_FILE
from greencallbacks.records import RecordWriter
from greencallbacks.runlock import RunLock
from greencallbacks.summaries import SUMMARY_FILE, write_every_ranks_summary, write_run_summary


class _RunEnd:
    """Part of ``Tracker``: its methods that end a run, normally or failing. No state of its own:
    they read and write the tracker's (see ``Tracker.__init__``)."""

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
