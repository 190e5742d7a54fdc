"""Which session measures (``_RunSessions``): starting it on a Trainer, the run a restored checkpoint
goes on in, one session per run across Trainers, and a failed call written up, in a spawned
process too.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from greencallbacks.distributed import torch_reducer_or_local
from greencallbacks.guard import hook_failed
from greencallbacks.lightning._checkpoints import _other_versions
from greencallbacks.session import EnergySession
from greencallbacks.torch_support import device_and_sync

if TYPE_CHECKING:
    from greencallbacks.lightning._shared import EnergyCallbackBase


class _RunSessions:
    """Part of ``EnergyCallbackBase``: its methods that choose, start and stop the session that
    measures. No state of its own: they read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

    def _write_up_if_the_process_ends(self) -> None:
        """Lightning's spawning launchers (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) run the
        call in processes of their own without its exception handling, which only the launching
        process has: a failure there calls no ``on_exception`` on the callback that measured, and
        its process ends. Its part of the phases open and the run's summary were never written (a
        ``ddp_spawn`` fit failing on both ranks inside epoch 1 left only epoch 0's records). Written
        up as that process ends (multiprocessing's exit finalizers run after the failure), where
        the session still runs: a call that ended stopped it. Registered once per process."""
        import multiprocessing
        from multiprocessing import util

        if multiprocessing.parent_process() is None or getattr(self, "_exit_write_up_pid", None) == os.getpid():
            return
        self._exit_write_up_pid = os.getpid()
        util.Finalize(None, _write_up_failed, args=(self,), exitpriority=100)

    def _start_session(self, trainer: Any) -> int:
        """Start ``self.session`` on ``trainer`` (a collective on several ranks); returns this rank."""
        output_dir = self._log_dir = None
        if self.session.output_dir is None:
            log_dir = self._log_dir = trainer.log_dir  # a collective: all ranks
            output_dir = log_dir or trainer.default_root_dir
            if self.prefix and self._beside_another(trainer):
                name = re.sub(r"[^\w.-]+", "-", self.prefix).strip("-.") or "prefix"
                output_dir = os.path.join(output_dir, f"energy-{name}")
            if self._session_kwargs.get("run_id") and log_dir:
                # A logger opens a new version_N at each fit: a run_id given again there must still
                # become <id>-2, as in one directory.
                self.session.tracker.sibling_dirs = _other_versions(log_dir)
        device_indices, sync = device_and_sync(trainer.strategy.root_device)
        reducer = torch_reducer_or_local(trainer.world_size)  # a collective on several ranks; setup runs on all of them
        self.session.start(output_dir=output_dir, device_indices=device_indices, reducer=reducer, sync=sync)
        return reducer.rank

    def _session_going_on_from(self, state: Any) -> EnergySession:
        """The session that measures what follows the restore of ``state``: the one running, made
        that checkpoint's run where it has no run of its own yet (a resume). An evaluation runs in
        a Trainer's fit run (or the latest): a checkpoint of another run must not make that session
        the other run's, or this Trainer's later test of its own checkpoint went there. The other run
        goes on in the session of this callback that holds it (two sessions of one run wrote the
        same seq numbers; a new one for each evaluation began an attempt each), or else in a new one."""
        if self._session_fresh or not isinstance(state, dict) or not state or self.tracker.wrote(state):
            return self.session
        for session in [*self._runs_by_trainer.values(), *self._runs_evaluated]:
            if session.tracker.wrote(state):
                return session
        return EnergySession(**self._session_kwargs)

    def _measure_with(self, session: EnergySession) -> None:
        trainer = self._trainer_in_use() if self._trainer_in_use else None
        if session is self.session or trainer is None or not self.session.running:
            return
        self.session.stop()  # what ran since setup is billed to the run that measured it
        self.session = session
        self._start_session(trainer)

    def _one_session_per_run(self) -> None:
        """A run resumed here (a fit continued in another Trainer) goes on here for every Trainer
        that measured it, and for every later evaluation of its checkpoints: an older session of
        the run, restarted by a test, wrote seq numbers this one had written, and a summary without
        its attempt."""
        run_id = self.tracker.run_id
        for trainer, session in list(self._runs_by_trainer.items()):
            if session is not self.session and session.tracker.run_id == run_id:
                self._runs_by_trainer[trainer] = self.session
        evaluated = [session for session in self._runs_evaluated if session.tracker.run_id != run_id]
        fitted = any(session is self.session for session in self._runs_by_trainer.values())
        self._runs_evaluated = evaluated if fitted else [*evaluated, self.session]

    def _stop_failed(self, trainer: Any) -> None:
        """Write the unfinished phases up as partial, at the step where the call failed; local only."""
        if trainer is not None:
            self.tracker.step = trainer.global_step
        self.session.stop(failed=True)


def _write_up_failed(callback: EnergyCallbackBase) -> None:
    """At the end of a spawned process: its session still running means its call failed there."""
    try:
        if callback.session.running:
            callback._stop_failed(callback._trainer_in_use() if callback._trainer_in_use else None)
    except Exception as error:  # noqa: BLE001 - the process is ending already
        hook_failed(callback, "the end of its process", error)

