"""The Keras callback's runs, on disk and in this process: which run a fit continues.

Keras has no checkpoint hook for a callback's state, so each run's state is a JSON file beside its
records (``energy-state.json``, one of each callback's own, and one of each ``BackupAndRestore``
backup's own), written at every epoch end; a resumed ``fit`` reads it to continue the run. In the
process, the run each model last trained in and which ``_Run`` measured each run last tell a new
callback on the same model, or a callback whose run another continued since, what to do. No Keras
here: the callback (``_callback``) decides when to read and write.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencallbacks.ledger import run_ids_in
from greencallbacks.meter import warn
from greencallbacks.records import JsonFileReplacer, write_json_atomic
from greencallbacks.session import EnergySession

STATE_FILE = "energy-state.json"


@dataclass(frozen=True)
class _Owner:
    """Whose run a state file names: the callback's, told by the ``run_id`` it was given, else by
    its place among the fit's EnergyCallbacks (the same again when the script builds the same
    list). Two callbacks of one fit that write into one directory (two grids priced) each resume
    their own run, and a fit given ``run_id="a"`` never continues the run of a fit given "b"."""

    run_id: str | None = None  # given to the callback
    place: int = 0  # among the fit's EnergyCallbacks, from 0

    @property
    def suffix(self) -> str:
        """Its state files' own part of their names; "" for the first callback without a run_id,
        whose files keep the names that older versions wrote."""
        if self.run_id is not None:
            return f"-run-{_digest(self.run_id)}"
        return f"-callback-{self.place + 1}" if self.place else ""

    def owns(self, state: dict) -> bool:
        """Is ``state`` (read from a file another callback may have written) a state of this callback's run?"""
        run_id = state.get("run_id")
        if self.run_id is None or run_id == self.run_id:
            return True  # its own files only; or that very run (a drawn id, given to resume it)
        # The <id>-N that the tracker took for a new run when the id given already had records;
        # a state of an older version does not say what it was given.
        if "run_id_given" in state:
            return state["run_id_given"] == self.run_id
        return isinstance(run_id, str) and re.fullmatch(re.escape(self.run_id) + r"-\d+", run_id) is not None


# The run each model of this process last trained an epoch of (by id, with a weak reference that
# says the id is still that model's): a new EnergyCallback resuming the same model (callbacks=
# [EnergyCallback(...)] written inline at each fit) continues its own run, which needs no warning.
_LAST_RUN_OF_MODEL: dict[int, tuple[Any, Any]] = {}


def _remember_run_of(model: Any, run_id: Any) -> None:
    try:
        reference = weakref.ref(model)
    except TypeError:  # not weakly referable: never taken for the same model
        return
    for key in [k for k, (ref, _) in _LAST_RUN_OF_MODEL.items() if ref() is None]:
        del _LAST_RUN_OF_MODEL[key]  # models gone: their ids may be reused
    _LAST_RUN_OF_MODEL[id(model)] = (reference, run_id)


def _last_run_of(model: Any) -> Any:
    reference, run_id = _LAST_RUN_OF_MODEL.get(id(model), (None, None))
    return run_id if reference is not None and reference() is model else None


def _runs_of_live_models() -> set:
    """The runs that models still alive in this process last trained in."""
    return {run_id for reference, run_id in _LAST_RUN_OF_MODEL.values() if reference() is not None}


# Which `_Run` of this process measured each run last (by output directory and run id), and the
# last training epoch it had finished: a callback whose run another callback has continued since
# (callbacks=[EnergyCallback(...)] written inline at a later call on the same model) must not go
# on from its own ledger, which would number its records again from where it stopped.
_RUN_CLAIMS: dict[tuple[str, str], tuple[int, int | None]] = {}
_RUN_TOKENS = itertools.count()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _backup_state_path(output_dir: Path, backup_dir: str, owner: _Owner) -> Path:
    return output_dir / f"energy-state-backup-{_digest(os.path.realpath(backup_dir))}{owner.suffix}.json"


def _own_state_path(output_dir: Path, owner: _Owner) -> Path:
    return output_dir / f"energy-state{owner.suffix}.json"  # STATE_FILE for the first callback without a run_id


def _state_paths(output_dir: Path, backup_dir: str | None, owner: _Owner) -> list[Path]:
    """Where the run of ``owner`` keeps its state: a file of its own, and the directory's
    ``energy-state.json`` (the fit that ran last, for a resume by a callback without a run_id;
    written by the fit's first EnergyCallback only); and, for a fit with a ``BackupAndRestore``, a
    file of that backup's own, which a resume from the backup reads first: another fit trained into
    the same directory in between (the directory's file is then that fit's) must not take the resume."""
    paths = [_backup_state_path(output_dir, backup_dir, owner)] if backup_dir is not None else []
    paths.append(_own_state_path(output_dir, owner))
    if owner.place == 0 and owner.suffix:
        paths.append(output_dir / STATE_FILE)
    return paths


def _state_paths_to_read(output_dir: Path, backup_dir: str | None, owner: _Owner) -> list[Path]:
    """Where a resume of ``owner``'s run looks, in order: its own files, then, for a callback given
    a run_id, the files of the fit's first callback, which older versions wrote for every callback
    (its run is checked there: ``_Owner.owns``)."""
    owners = [owner, _Owner()] if owner.run_id is not None else [owner]
    backups = [_backup_state_path(output_dir, backup_dir, o) for o in owners] if backup_dir is not None else []
    return backups + [_own_state_path(output_dir, o) for o in owners]


@dataclass
class _Run:
    """One run (one ``run_id``): its session, and the last training epoch it finished."""

    session: EnergySession
    last_train_epoch: int | None = None
    # The training epoch its last fit failed inside, where that came after ``last_train_epoch``:
    # a resume from a checkpoint saved inside it (ModelCheckpoint(save_freq=<steps>), named by
    # Keras with that epoch + 1) may start at the next epoch, and continues the run.
    failed_in_epoch: int | None = None
    # A fit measured in this run. Only such a run is named in energy-state.json: an evaluate or
    # predict alone (a sanity check before fit(initial_epoch=k)) must not replace the run that
    # trained, or the resume would start a new run.
    fitted: bool = False
    backup_dir: str | None = None  # the fit's BackupAndRestore's (see _state_paths)
    owner: _Owner = field(default_factory=_Owner)  # the callback whose run it is (see _state_paths)
    _state_files: dict = field(default_factory=dict, repr=False, compare=False)  # path -> JsonFileReplacer
    _token: int = field(default_factory=lambda: next(_RUN_TOKENS), repr=False, compare=False)  # see _RUN_CLAIMS

    def __setstate__(self, state: dict) -> None:
        # A copy (a callback deep-copied or pickled) is another measurer of the run: its own token.
        self.__dict__.update(state, _token=next(_RUN_TOKENS))

    def _key(self) -> tuple[str, str]:
        tracker = self.session.tracker
        return os.path.abspath(tracker.output_dir) if tracker.output_dir is not None else "", tracker.run_id

    def claim(self) -> None:
        """This object measures its run now (and has finished ``last_train_epoch``)."""
        _RUN_CLAIMS[self._key()] = (self._token, self.last_train_epoch)

    def continued_elsewhere(self) -> bool:
        """Has another ``_Run`` of this process measured this run since this one did?"""
        claim = _RUN_CLAIMS.get(self._key())
        return claim is not None and claim[0] != self._token

    def state(self) -> dict:
        last, failed_in = self.last_train_epoch, self.failed_in_epoch
        if self.continued_elsewhere():  # the epochs it trained since (the records say the rest)
            last, failed_in = _RUN_CLAIMS[self._key()][1], None
        state = {"schema": "greencallbacks.keras-state/1", **self.session.state_dict(),
                 "last_train_epoch": last, "run_id_given": self.owner.run_id}
        if failed_in is not None:
            state["failed_in_epoch"] = failed_in
        return state

    def reloaded(self, session_kwargs: dict) -> "_Run":
        """The run as its next attempt, from its records: another callback continued it since."""
        state = self.state()
        run = _Run(EnergySession(**session_kwargs), last_train_epoch=state["last_train_epoch"], fitted=self.fitted,
                   backup_dir=self.backup_dir, owner=self.owner)
        run.session.load_state_dict(state)
        return run

    def save_state(self, wait: bool = True) -> None:
        """Run id, records path and totals next to the records, so a resumed ``fit`` (BackupAndRestore) continues the run.

        ``wait=False`` (every epoch end): written by a worker thread, in order. This callback runs
        first, so the write is queued before BackupAndRestore starts saving the model's backup;
        a run killed in between resumes as a new run, its records kept.
        """
        paths = self._state_paths()
        for path in [p for p in self._state_files if p not in paths]:
            self._state_files.pop(path).close()  # the output directory changed
        if not paths:
            return
        state = self.state()
        tracker = self.session.tracker
        for path in paths:
            _keep_backup_state(path)  # a later fit's: no longer the ended fit's to delete
            writer = self._state_files.get(path)
            if writer is None:
                if path.name == STATE_FILE:
                    _keep_another_runs_state(path, tracker.run_id)
                writer = self._state_files[path] = JsonFileReplacer(path)
            if wait:
                writer.write_now(state)
            else:
                writer.write_soon(state)

    def _state_paths(self) -> list[Path]:
        """The files ``save_state`` writes (none off rank 0, or without an output directory)."""
        tracker = self.session.tracker
        if tracker.output_dir is None or tracker.reducer.rank != 0:
            return []
        # A callback given run_id= keeps the state under the id its run was recorded as: a second
        # session given the same id records as <id>-2, and must not take the first's file from it
        # (a resume given the id continues the run of that very id; give <id>-2 to continue the other).
        owner = self.owner if self.owner.run_id is None else _Owner(tracker.run_id, self.owner.place)
        return _state_paths(tracker.output_dir, self.backup_dir, owner)

    def forget_the_backup(self) -> Path | None:
        """Its backup is being deleted (the fit ended normally): stop writing the backup's own state
        file, whose path this returns (None where it writes none)."""
        paths = self._state_paths()
        if self.backup_dir is None or not paths:
            return None
        path = paths[0]  # the backup's own (see _state_paths)
        writer = self._state_files.pop(path, None)
        if writer is not None:
            writer.close()  # its writes done (save_state waited), none queued after the deletion
        self.backup_dir = None  # an evaluate after the fit saves the run without it
        return path


# Backup state files to delete once their backup's metadata file is gone (path -> that file), unless
# a later fit writes one of them first (the same BackupAndRestore, a new run): see
# EnergyCallback._forget_the_backup.
_BACKUP_STATES_TO_DELETE: dict[Path, str] = {}
_BACKUP_STATES_LOCK = threading.Lock()


def _keep_backup_state(path: Path) -> None:
    with _BACKUP_STATES_LOCK:
        _BACKUP_STATES_TO_DELETE.pop(path, None)


def _delete_backup_state(path: Path) -> None:
    """Delete ``path`` if its deletion is still due and its backup is gone (from the watch thread)."""
    with _BACKUP_STATES_LOCK:
        metadata = _BACKUP_STATES_TO_DELETE.pop(path, None)
        if metadata is not None and not os.path.isfile(metadata):
            try:
                path.unlink()
            except OSError:  # gone already, or not ours to delete: a resume reads what is there
                pass


def _keep_another_runs_state(path: Path, run_id: str) -> None:
    """``energy-state.json`` names the directory's last fit. Before run ``run_id`` takes it, the run
    it names keeps its state under its own id (the file a callback given that run_id writes): that
    model resumed later with a new callback (fit(A), fit(B), A.fit(initial_epoch=2)) continues its
    run, where it had become a run of its own."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # none yet, or unreadable: nothing to keep
    other = state.get("run_id") if isinstance(state, dict) else None
    if isinstance(other, str) and other != run_id and state.get("schema") == "greencallbacks.keras-state/1":
        write_json_atomic(_own_state_path(path.parent, _Owner(other)), state)


def _read_state(output_dir: Path, backup_dir: str | None, owner: _Owner) -> tuple[dict | None, dict | None, Path | None]:
    """The state a resume of ``owner``'s run continues (the backup's own where it has one, else
    the directory's) and the file it was read from, and, when there is none, the first state of
    another run found in its place."""
    other = None
    for path in _state_paths_to_read(output_dir, backup_dir, owner):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("schema") == "greencallbacks.keras-state/1":
            if owner.owns(state):
                return state, None, path
            other = other or state
    return None, other, None


def _names_its_trial(path: Path, owner: _Owner) -> bool:
    """Is a state read from ``path`` surely of the trial resuming (a run_id given, or its backup's
    own file), not merely of the fit that trained into the directory last (``energy-state.json``,
    which every trial of a sweep sharing the directory without a run_id writes)?"""
    return owner.run_id is not None or path.name.startswith("energy-state-backup-")


def _trained_again(run_id: Any, reached: int, first_epoch: int, where: str) -> None:
    """Said, as the continued run may be another trial's: nothing tells a sweep's trials apart
    without a run_id. The optimizer's step does not: trials with the same data and batch size
    step alike, and a model rebuilt with load_weights starts from step 0 (its optimizer unbuilt)."""
    again = f"epoch {first_epoch} is" if reached == first_epoch else f"epochs {first_epoch}..{reached} are"
    warn(
        f"greencallbacks: this fit starts at epoch {first_epoch} and continues run {run_id} ({where}), which "
        f"reached epoch {reached}: {again} counted as trained again in that run. If that run is another trial's "
        "(a sweep whose fits share one output directory), give each trial its own EnergyCallback(run_id=...) or "
        "output_dir=...; the records already written stay in that run."
    )


def _free_run_id(run_id: str, directory: Path) -> str:
    """``run_id``, or the first ``<run_id>-N`` (from 2) with no records in ``directory``."""
    taken = run_ids_in(directory)
    return next(candidate for n in itertools.count(1) if (candidate := run_id if n == 1 else f"{run_id}-{n}") not in taken)
