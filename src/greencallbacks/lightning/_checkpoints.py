"""The callback's identity and state in checkpoints (``_CheckpointState``): its state key, the state it
saves and restores, a resume with other settings, a state saved before records had a path, and the
checkpoint an evaluation restores (Lightning 2.4 and earlier hand callbacks none there: the seam
``_restore_seam`` reads it where Lightning holds it).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from copy import deepcopy
from pathlib import Path
from typing import Any

from greencallbacks.guard import hook_failed, never_raises
from greencallbacks.ledger import run_ids_in
from greencallbacks.meter import warn
from greencallbacks.records import RECORDS_FILE
from greencallbacks.session import warn_resumed_with_other_settings


class _CheckpointState:
    """Part of ``EnergyCallbackBase``: its methods that save and restore its state in checkpoints.
    No state of its own: they read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

    # ------------------------------------------------------------------ identity in checkpoints
    @property
    def state_key(self) -> str:
        # Lightning reads this on every hook call (profiler names): computed once.
        if self._state_key is None:
            # Stable across processes (a resumed run must find its state), distinct for callbacks
            # with different settings in one Trainer.
            self._state_key = self._generate_state_key(**self._settings_given())  # type: ignore[attr-defined]
        return self._state_key

    def _settings_given(self) -> dict[str, Any]:
        """The settings the state key holds: only those given, so that the default key is short."""
        given = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in self._settings.items() if v is not None}
        if self._session_kwargs.get("run_id"):
            given["run_id"] = self._session_kwargs["run_id"]
        if self.prefix:
            given["prefix"] = self.prefix
        return given

    def state_dict(self) -> dict[str, Any]:
        # Lightning calls these two outside any hook (saving and restoring checkpoints): they must
        # not raise either. An empty state continues nothing: the resumed fit is a new run.
        try:
            trainer = self._trainer_in_use() if self._trainer_in_use else None
            if trainer is not None and self.tracker.running:
                # The phases open now are saved to be carried by a resume after a kill: they end
                # at this checkpoint's step, not at the last boundary's.
                self.tracker.step = trainer.global_step
            return self.session.state_dict()
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "state_dict", error)
            return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called after `setup` on resume: the run continues with the checkpoint's run_id and totals.
        try:
            if _before_records_path(state_dict):
                state_dict = self._with_records_found(state_dict)
            self._measure_with(self._session_going_on_from(state_dict))
            self.session.load_state_dict(state_dict)
            self._one_session_per_run()
        except Exception as error:  # noqa: BLE001
            hook_failed(self, "load_state_dict", error)

    @never_raises
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """A fit resumed with other settings (a grid corrected after a crash) changes the state
        key, so Lightning hands this callback no state and the resume would silently start a new
        run. Take the one entry of an EnergyCallback with this prefix that no callback here claims."""
        if getattr(getattr(trainer.state, "fn", None), "value", "fit") != "fit":
            self._checkpoint_epoch = _epochs_run(checkpoint)
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        claimed = {cb.state_key for cb in trainer.callbacks}
        name = type(self).__qualname__
        keyed = {key: _settings_in_key(key, name) for key in states if key not in claimed}
        orphans = [key for key, given in keyed.items() if given is not None and given.get("prefix", "") == self.prefix]
        if len(orphans) == 1:
            call = getattr(getattr(trainer.state, "fn", None), "value", None) or "fit"  # or validate, test, predict
            warn_resumed_with_other_settings(orphans[0], keyed[orphans[0]], self._settings_given(), self.state_key, call)
            state = deepcopy(states[orphans[0]])
            if _before_records_path(state):  # written where that callback's output_dir said, if it had one
                state = self._with_records_found(state, keyed[orphans[0]].get("output_dir"))
            self.load_state_dict(state)
        elif orphans:
            warn(f"greencallbacks: the checkpoint holds {len(orphans)} energy states with other settings than this "
                 f"callback's ({', '.join(orphans)}), and no way to tell which to continue: this fit is a new run.")

    def _with_records_found(self, state: dict[str, Any], given_dir: Any = None) -> dict[str, Any]:
        """``state`` with the ``records_path`` that greencallbacks before 2026-12-01 (14b47e6) did
        not save, looked for where that version wrote the run's records with the default output
        directory: the log directory of the attempt that saved the checkpoint (a ``version_N``
        beside this attempt's, or the one the checkpoint file is in) or ``default_root_dir``.
        Without it the run went on from the checkpoint's totals, leaving out what the attempt
        measured after the checkpoint (a crashed epoch's partial record, 2.8e-8 of 4.8e-7 kWh in a
        probe), and wrote its records apart from the earlier ones. None where they are not found,
        said once."""
        run_id = state.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            return state  # the tracker says the state is unreadable
        trainer = self._trainer_in_use() if self._trainer_in_use else None
        # Most telling first: beside the checkpoint file (``<log_dir>/checkpoints/``), then where
        # this attempt writes, or the old callback's own output_dir, then the other log versions.
        groups: list[list[Path]] = [[], [], []]
        try:
            ckpt = Path(os.fspath(getattr(trainer, "ckpt_path", None) or ""))
            if ckpt.name and ckpt.is_file():
                groups[0] += [ckpt.parent, ckpt.parent.parent]
        except (TypeError, ValueError, OSError):  # a remote path (s3://...): nothing beside it here
            pass
        groups[1] += [Path(d) for d in (self.tracker.output_dir, given_dir) if d]
        if self._log_dir:
            groups[2] += _other_versions(self._log_dir)
        if trainer is not None and getattr(trainer, "default_root_dir", None):
            groups[2].append(Path(trainer.default_root_dir))
        searched: list[Path] = []
        for group in groups:
            searched += group
            holding = [d for d in dict.fromkeys(group) if run_id in run_ids_in(d)]
            if len(holding) > 1 and group is groups[2]:  # a run_id given again in another version: which?
                missing = f"its records are in several directories ({', '.join(map(str, holding))}), with no way to tell which"
                break
            if holding:
                return {**state, "records_path": str((holding[0] / RECORDS_FILE).resolve())}
        else:
            places = ", ".join(map(str, dict.fromkeys(searched))) or "no directory"
            missing = f"none of its records were found (looked in {places})"
        if self.tracker.reducer.rank == 0:
            warn(f"greencallbacks: the checkpoint's energy state for run {run_id} was saved by an older greencallbacks, "
                 f"which did not save where the run's records are, and {missing}. The run's totals go on "
                 "from the checkpoint's, without what its earlier attempt measured after the checkpoint, and its "
                 f"records from here on go to {self.tracker.output_dir}, apart from the earlier ones.")
        return {**state, "records_path": None}

    def _checkpoint_restored(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        try:
            self.on_load_checkpoint(trainer, trainer.lightning_module, checkpoint)
            state = (checkpoint.get("callbacks") or {}).get(self.state_key)
            if state:
                self.load_state_dict(deepcopy(state))
        except Exception as error:  # noqa: BLE001 - measuring must never break an evaluation
            hook_failed(self, "resume_end", error)


def _settings_in_key(key: Any, class_name: str) -> dict | None:
    """The settings in a state key that Lightning's ``_generate_state_key`` made for ``class_name``
    (``EnergyCallback{'intensity': 50, 'prefix': 'low/'}``); None for another callback's key."""
    if not (isinstance(key, str) and key.startswith(class_name + "{")):
        return None
    try:
        given = ast.literal_eval(key[len(class_name):])
    except (ValueError, SyntaxError):
        return None
    return given if isinstance(given, dict) else None


def _before_records_path(state: Any) -> bool:
    """A run's state saved before greencallbacks saved where its records are (2026-12-01)."""
    return isinstance(state, dict) and "run_id" in state and "records_path" not in state


def _epochs_run(checkpoint: dict) -> int | None:
    """The epochs a checkpoint's fit had run all the batches of when it was saved: what the fit's
    Trainer reads as its epoch after it (2 after ``max_epochs=2``; 1 for a checkpoint inside epoch
    1). Lightning's fit loop progress (``epoch_progress.current.processed``, 2.0 on), None without it.
    That count goes up at the epoch's end: a checkpoint saved after the epoch's last batch and
    before that end is one short (the fit's final ``last.ckpt`` read 1 after ``max_epochs=2``):
    ``ModelCheckpoint`` saves at the validation there with ``val_check_interval < 1`` or
    ``check_val_every_n_epoch > 1``, and at that batch's end with ``every_n_train_steps``. Its
    epoch loop says the last batch ran (``is_last_batch``, every batch fetched processed), which a
    resume from it counts as the epoch done too (Lightning 2.5+); one saved before that batch's
    step is still inside the epoch."""
    try:
        fit_loop = checkpoint["loops"]["fit_loop"]
        processed = fit_loop["epoch_progress"]["current"]["processed"]
    except (KeyError, TypeError):
        return None
    if not (isinstance(processed, int) and not isinstance(processed, bool) and processed >= 0):
        return None
    try:
        epoch = fit_loop["epoch_progress"]["current"]
        batches = fit_loop["epoch_loop.batch_progress"]
        last_batch_ran = (epoch["started"] == processed + 1 and batches["is_last_batch"] is True
                          and batches["current"]["processed"] == batches["current"]["ready"] > 0)
    except (KeyError, TypeError):  # an epoch loop's progress in another shape: the epoch count as it is
        last_batch_ran = False
    return processed + 1 if last_batch_ran else processed


def _restore_seam(trainer: Any) -> Any:
    """The Trainer's checkpoint connector where ``_watch_restore`` is needed and can work: Lightning
    2.2 to 2.4 (2.5 hands callbacks their state in an evaluation too) with ``resume_end`` and a
    ``_loaded_checkpoint`` dict, not wrapped yet. None: leave the evaluation in the Trainer's run."""
    connector = getattr(trainer, "_checkpoint_connector", None)
    if (_release_of(trainer) >= (2, 5) or getattr(connector, "_greencallbacks_watch", None) is not None
            or not callable(getattr(connector, "resume_end", None))
            or not isinstance(getattr(connector, "_loaded_checkpoint", None), dict)):
        return None
    return connector


def _release_of(trainer: Any) -> tuple[int, ...]:
    """(major, minor) of the Lightning flavour ``trainer`` comes from; (0, 0) where it says none."""
    package = sys.modules.get(type(trainer).__module__.split(".")[0])
    found = re.match(r"(\d+)\.(\d+)", str(getattr(package, "__version__", "")))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _unwatch_restore(trainer: Any) -> None:
    """Take back the wrapper of ``_watch_restore`` from ``trainer``, if it is still there."""
    connector = getattr(trainer, "_checkpoint_connector", None)
    watch = getattr(connector, "_greencallbacks_watch", None)
    if watch is not None:
        if connector.__dict__.get("resume_end") is watch:
            del connector.resume_end
        del connector._greencallbacks_watch


def _other_versions(log_dir: str) -> list:
    """The other directories beside a logger's ``version_N`` (its earlier versions)."""
    here = Path(log_dir)
    try:
        return [p for p in here.parent.iterdir() if p.is_dir() and p != here]
    except OSError:
        return []

