"""Which run a Keras call measures (``_RunChoice``): a new one, the run a resumed ``fit`` continues,
or the run of the model an ``evaluate`` / ``predict`` is called on; where its files go; and the
backup state file a finished fit leaves behind.

The runs' state, on disk and in this process, is kept in ``_state``; this is the callback's side,
which reads it as a call starts.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import keras

from greencallbacks import watch
from greencallbacks.keras._backend import devices_and_sync, reducer_for
from greencallbacks.keras._call import _Call
from greencallbacks.keras._calling import (
    _backup_dir, _backup_metadata, _model_call_frame, _restores_a_backup, _tuners_trial,
)
from greencallbacks.keras._state import (
    _BACKUP_STATES_LOCK, _BACKUP_STATES_TO_DELETE, _backup_state_path, _delete_backup_state, _free_run_id,
    _last_run_of, _names_its_trial, _own_state_path, _Owner, _read_state, _Run, _runs_of_live_models,
    _trained_again,
)
from greencallbacks.meter import warn
from greencallbacks.session import EnergySession

DEFAULT_OUTPUT_DIR = "energy_logs"


class _RunChoice:
    """Part of ``EnergyCallback``: its methods that choose and start the run a call measures. No
    state of its own: they read and write the callback's (see ``EnergyCallback._unused``)."""

    def _start(self, call: _Call, first_epoch: int | None = None) -> None:
        """Start measuring for ``call``: in a new run, the resumed run, or the current one."""
        restoring = first_epoch is not None and _restores_a_backup(call.callback_list)
        trial = _tuners_trial(call.callback_list)
        resuming = restoring or (bool(first_epoch) and trial is None)
        given = self._session_kwargs.get("run_id")
        if resuming:
            self._resume(first_epoch, call)
        elif first_epoch is not None and trial and given is not None:
            # Each execution of a tuner's trial is a run of its own, named after the trial: the
            # given run_id taken again by every execution was renamed to <id>-N with a warning each.
            run_id = _free_run_id(f"{given}-trial-{trial}", self._output_dir(call))
            self._run = _Run(EnergySession(**{**self._session_kwargs, "run_id": run_id}))
        elif first_epoch is not None and self._run_used:
            # A new fit (a tuner's trial from any epoch) is a new run.
            self._run = _Run(EnergySession(**self._session_kwargs))
        elif first_epoch is None:
            self._continue_the_models_run(call)
        if first_epoch and self._run.last_train_epoch is None:
            # A run begun at initial_epoch=k has reached epoch k - 1 as far as a resume can tell:
            # crashed inside epoch k, its resume at k continues it (read as -1, it was a new run).
            self._run.last_train_epoch = first_epoch - 1
        self._run_used = True
        call.run = self._run
        session = self._run.session
        backend = keras.backend.backend()
        device_indices, sync = devices_and_sync(backend)
        reducer = reducer_for(backend)  # a collective on several processes; all run this hook
        session.start(output_dir=self._output_dir(call), device_indices=device_indices, reducer=reducer, sync=sync)
        if call.kind == "fit" and reducer.world_size > 1:
            # The step values are a collective (Tracker.live) that every rank takes at the same
            # batches, whatever its own callbacks: a TensorBoard on rank 0 alone (logging from one
            # rank, as usual) made rank 0 gather alone, met by the other ranks' next epoch-end gather
            # (gloo: received data size doesn't match; rank 1 aborted). Every rank takes them
            # wherever any rank's TensorBoard writes: every gcd of their update_freq batches.
            self._live_every = math.gcd(*(int(every) for every in reducer.all_gather(self._live_every)))
            if self._live_every and getattr(call.callback_list, "_async_train", False):
                # In order, on the training thread, as a TensorBoard's batch hook makes Keras run them
                # where it is: dispatched to Keras's thread pool (no callback of this rank needs them
                # in order), two gathers could run at once and meet the other ranks' in swapped order.
                call.callback_list._async_train = False
        self._run.claim()
        live = _runs_of_live_models()
        self._runs = {run_id: run for run_id, run in self._runs.items() if run_id in live}
        self._runs[session.tracker.run_id] = self._run
        # None (Keras 3.15), or not set at all (3.3), when fit is given a CallbackList built
        # without training parameters: Keras uses it as it is, and never calls set_params.
        params = getattr(self, "params", None) or {}
        if call.kind == "fit" and isinstance(params.get("epochs"), int) and params["epochs"] > 0:
            session.tracker.planned_epochs = params["epochs"]  # enables the whole-run prediction
        if call.kind == "fit":
            self._run.fitted = True
            self._run.backup_dir = _backup_dir(call.callback_list)
            self._run.owner = self._owner(call)
            # Names this run in energy-state.json now, not only at an epoch's end: a fit killed in
            # its first epoch (preempted: no exception to see) that BackupAndRestore resumes from a
            # backup inside that epoch continues this run, not the one that wrote the file before.
            self._run.save_state(wait=False)

    def _resume(self, first_epoch: int, call: _Call) -> None:
        """A ``fit`` from ``first_epoch`` > 0, or restored by BackupAndRestore, continues the run that
        reached the epoch before (any run, for epoch 0), as its next attempt: this object's last
        run if it trained, else (a new process, or only evaluate / predict so far) the one in
        ``energy-state.json``, or for a callback given a run_id (or not the fit's first
        EnergyCallback) the run in its own state file (see ``_Owner``)."""
        mine = self._runs.get(_last_run_of(self.model))
        if mine is not None:
            # The model's own run with this callback: another model's evaluate / predict since made
            # that one's run current, and B's resumed epochs went into A's run.
            self._run = mine
        another_models = None  # the run a state file names, when it is another model's
        if self._run_used and self._run.fitted:
            state, owner, other = self._run.state(), self._run.owner, None
            # This object's run, trained on the model now fitting: the same training (fit(epochs=4),
            # then fit(initial_epoch=2)). Another model: a callback reused across a sweep's trials.
            same_model = bool(state) and _last_run_of(self.model) == state.get("run_id")
            identified = same_model or owner.run_id is not None
            where = "this callback's last run" + ("" if same_model else ", which trained another model")
        else:
            # A fit of this process that just raised (a retry loop) has its run's state written
            # by the watch thread, within a fraction of a second: wait for that before reading.
            watch.settle()
            restoring = _restores_a_backup(call.callback_list)  # its own state, not the last fit's
            owner = self._owner(call)
            output_dir, backup_dir = self._output_dir(call), _backup_dir(call.callback_list) if restoring else None
            state, other, path = self._renamed_run_of_the_model(output_dir, backup_dir, owner, first_epoch)
            if state is None:
                state, other, path = _read_state(output_dir, backup_dir, owner)
            # Or the run this model trained last in this process: the same training, resumed with a
            # new callback (callbacks=[EnergyCallback(...)] written inline at each fit).
            identified = path is not None and (
                _names_its_trial(path, owner) or (state is not None and _last_run_of(self.model) == state.get("run_id"))
            )
            where = f"named in {path}"
            trained_in = _last_run_of(self.model)
            if state is not None and not identified and trained_in not in (None, state.get("run_id")):
                # The run named there is another model's, trained since (fit(A), fit(B), then A
                # resumed with a new callback): A's epochs went on in B's run, without a word. A's
                # own state was kept under its id when B's run took the file.
                another_models = state.get("run_id")
                state, _, kept = _read_state(output_dir, backup_dir, _Owner(trained_in, owner.place))
                if state is not None and state.get("run_id") == trained_in:
                    identified, where = True, f"named in {kept}"
                else:
                    state = None
        last = state.get("last_train_epoch") if state else None
        reached = last if isinstance(last, int) else -1  # None: no epoch finished yet
        # A run that failed inside the epoch before, resumed from a checkpoint saved inside it
        # (ModelCheckpoint(save_freq=<steps>) names it that epoch + 1): the same training.
        failed_in = state.get("failed_in_epoch") if state else None
        if state and (reached >= first_epoch - 1 or failed_in == first_epoch - 1):
            if reached >= first_epoch and not identified:
                _trained_again(state.get("run_id"), reached, first_epoch, where)
            self._run = _Run(EnergySession(**self._session_kwargs), last_train_epoch=last)
            self._run.session.load_state_dict(state)
            return
        # Said, not silent: the logged totals will lack the earlier attempts' energy. The usual
        # cause is a directory that differs per process (TensorBoard's logs/fit/<timestamp>).
        if another_models is not None:
            found = (f"the run named in {self._output_dir(call)}, {another_models}, is another model's (this model "
                     f"trained last in run {_last_run_of(self.model)}, whose state a later run replaced there)")
        elif state:
            found = f"the run it would continue, {state.get('run_id')}, reached epoch {reached} only"
        elif owner.run_id is not None:
            found = (f"no earlier run of run_id {owner.run_id!r} is recorded in {self._output_dir(call)}"
                     + (f" (only run {other.get('run_id')}, which a callback given another run_id does not continue)"
                        if other else ""))
        else:
            found = f"no earlier run is recorded in {self._output_dir(call)} ({_own_state_path(Path(), owner)})"
        warn(
            f"greencallbacks: this fit resumes at epoch {first_epoch}, but {found}: it is measured as a new run, "
            "without the energy of the epochs before it. To continue a run, give EnergyCallback(output_dir=...) the "
            "same directory in every process (a TensorBoard log_dir such as logs/fit/<timestamp> differs each time)."
        )
        if self._run_used:
            self._run = _Run(EnergySession(**self._session_kwargs))  # nothing to continue: a new run

    def _renamed_run_of_the_model(
        self, output_dir: Path, backup_dir: str | None, owner: _Owner, first_epoch: int
    ) -> tuple[dict | None, None, Path | None]:
        """For a callback given a run_id: the state of the run this model last trained in this
        process where the tracker recorded it as ``<id>-N`` (the given id had records already: the
        script run again into its directory) and it reached the epoch before. The given id's own
        state is the earlier run's: a loop of ``fit(initial_epoch=e)`` with a new callback each,
        run again, continued that run from its second fit on, one training split across two runs."""
        last = _last_run_of(self.model)
        if owner.run_id is None or last is None or last == owner.run_id:
            return None, None, None
        state, _, path = _read_state(output_dir, backup_dir, _Owner(last, owner.place))
        reached = state.get("last_train_epoch") if state else None
        if state and state.get("run_id") == last and owner.owns(state) and isinstance(reached, int) and reached >= first_epoch - 1:
            return state, None, path
        return None, None, None

    def _continue_the_models_run(self, call: _Call) -> None:
        """``evaluate`` / ``predict``: the run of the model called. The run it last trained in with
        this callback, though another model's fit with it came since; else one it last trained in
        with another callback (see ``_join_the_models_run``); else (a model this process never
        trained, or one whose run cannot be continued) the current run, or for a callback that has
        measured nothing yet a run of its own."""
        last = _last_run_of(self.model)
        if last is not None and last in self._runs:
            self._run = self._runs[last]
        elif (last is not None or not self._run_used) and self._join_the_models_run(call, last):
            return
        if self._run_used and self._run.continued_elsewhere():
            # Going on with this object's run, which a callback written inline at a later call on
            # the same model continued since: from the records, as its next attempt.
            self._run = self._run.reloaded(self._session_kwargs)

    def _join_the_models_run(self, call: _Call, last: Any) -> bool:
        """The model called, trained last in this process in run ``last``, named in this output
        directory, by another callback (or by a callback written inline at each call): that run, as
        its next attempt (as a ``fit(initial_epoch=N)`` with a new callback continues it), unless
        another run_id is given. False where there is none (a model loaded or built anew; a sanity
        check before a resume), which leaves ``energy-state.json`` to the run that trained."""
        if last is None:
            return False
        watch.settle()  # a fit that just raised has its state written by the watch thread
        owner = self._owner(call)
        state, _, _ = _read_state(self._output_dir(call), None, _Owner(last, owner.place))
        if not state or state.get("run_id") != last or not owner.owns(state):
            return False
        self._run = _Run(EnergySession(**self._session_kwargs), last_train_epoch=state.get("last_train_epoch"),
                         fitted=True, owner=_Owner(state.get("run_id_given"), owner.place))
        self._run.session.load_state_dict(state)
        return True

    def _forget_the_backup(self, call: _Call) -> None:
        """The fit ended normally (its state saved): the backup state file goes with Keras's backup.

        A ``BackupAndRestore`` (``delete_checkpoint=True``) deletes its backup in its
        ``on_train_end``, after this callback's (this one goes first), and no resume from it can
        follow. The file is deleted only once the backup is gone: at once where it is already (a
        ``BackupAndRestore`` before this callback), else when the fit has returned (the watch); a
        callback after this one raising in ``on_train_end`` leaves Keras's backup (the fit raised),
        and the resume from it reads the file. Later writes of this run leave it alone.
        """
        restorer = next((c for c in getattr(call.callback_list, "callbacks", [])
                         if isinstance(c, keras.callbacks.BackupAndRestore)), None)
        if restorer is None:
            return
        backup_dir = os.fspath(restorer.backup_dir)
        metadata = _backup_metadata(backup_dir)
        gone, fit_frame = not os.path.isfile(metadata), _model_call_frame(self.model)
        if not gone and (not getattr(restorer, "delete_checkpoint", True) or fit_frame is None):
            return  # Keras keeps its backup, which a later fit restores; or when the fit returns is not known
        if call.run is not None:
            path = call.run.forget_the_backup()
        else:  # it restored its last epoch's backup, which left no epoch to train: no run measured
            owner = self._owner(call)
            path = _backup_state_path(self._output_dir(call), backup_dir, owner)
        if path is None:
            return
        with _BACKUP_STATES_LOCK:
            _BACKUP_STATES_TO_DELETE[path] = metadata
        if gone:
            _delete_backup_state(path)
        else:
            watch.watch(fit_frame, functools.partial(_delete_backup_state, path))

    def _output_dir(self, call: _Call) -> Path:
        tracker = self.tracker
        if tracker.output_dir is not None:
            return tracker.output_dir
        for callback in getattr(call.callback_list, "callbacks", []):
            if isinstance(callback, keras.callbacks.TensorBoard):
                return Path(callback.log_dir)
        return Path(DEFAULT_OUTPUT_DIR)
