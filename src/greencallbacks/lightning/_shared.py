"""The Lightning callback, written once for both flavours (``lightning.pytorch``, ``pytorch_lightning``).

This module imports neither flavour: each flavour's module mixes ``EnergyCallbackBase`` into its
own ``Callback`` class, so Lightning's ``isinstance`` check passes and only that flavour is
imported. Everything here is the mapping from Lightning's hooks onto the tracker, and from the
tracker's metrics onto Lightning's logging.

Hooks -> phases (the tracker bills everything in between to ``other``):

    train       on_train_epoch_start .. on_train_epoch_end (its validation excluded)
    validation  on_validation_start .. on_validation_epoch_end (not during the sanity check)
    test        on_test_start .. on_test_epoch_end
    predict     on_predict_start .. on_predict_end

Metric names: the training epoch logs the bare stems (``energy_kwh``, ``co2eq_g``, ...),
validation logs ``val_<stem>``, test ``test_<stem>`` and predict ``predict_<stem>``.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import re
import sys
import weakref
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from greencallbacks.budget import Budget
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.distributed import torch_reducer_or_local
from greencallbacks.guard import hook_failed, never_raises
from greencallbacks.ledger import run_ids_in
from greencallbacks.meter import warn
from greencallbacks.records import RECORDS_FILE
from greencallbacks.session import EnergySession, keyword_names, reject_unknown_arguments, warn_resumed_with_other_settings
from greencallbacks.samples import BatchCounter, count_samples
from greencallbacks.sensors.base import Sensor
from greencallbacks.torch_support import device_and_sync, loader_collate

PREFIXES = {"train": "", "validation": "val_", "test": "test_", "predict": "predict_"}
# The progress bar has little room: the running totals are what a user watches.
PROGRESS_BAR_METRICS = ("energy_kwh_total", "co2eq_g_total")


class EnergyCallbackBase:
    """Per-epoch energy (kWh) and CO2eq (g) of training, validation, test and predict, in every logger.

    Args:
        country / zone / region / intensity / series / pue: where gCO2eq/kWh and PUE come from (see
            ``greencallbacks.carbon.Carbon``). Nothing given: the world average, said in a warning
            and in every record.
        output_dir: where ``energy-records.jsonl`` and ``energy-summary.json`` go. Default: the
            trainer's ``log_dir`` (or ``default_root_dir`` when there is no logger); for a callback
            with a ``prefix`` beside another EnergyCallback there, its ``energy-<prefix>``
            subdirectory, so that each has its own summary.
        progress_bar: show the running totals in the progress bar.
        prefix: put before every logged name (e.g. ``"energy/"``); lets two callbacks (say, two
            grids) log side by side without mixing their values.
        sample_counter: ``batch -> int`` samples in a completed batch; default
            ``greencallbacks.samples.count_samples`` (tensors, arrays, tuples, dicts, ``BatchEncoding``,
            dataclasses, named tuples, ``num_graphs`` / ``batch_size`` / ``len()``, string lists,
            nested tensors; ``count_collated`` for a loader that collates with torch's
            ``default_collate``, and a sample's item from one that batches nothing, ``batch_size=None``,
            as one sample; each loader by its own). A batch it cannot count: one warning per run, and that phase's record
            says ``samples_counted: false`` with no per-sample values (never a silent 0). With
            several training iterables (a dict or list of loaders, nested too), or a validation or
            test ``CombinedLoader`` in a mode other than ``"sequential"``, the default counts each
            one's batch and adds them; a ``sample_counter`` given is handed the whole combined batch.
        token_counter: ``batch -> int`` tokens in a completed batch (e.g.
            ``lambda b: int(b["attention_mask"].sum())``), giving ``energy_j_per_token``; handed the
            batch the step is given, the whole combined batch of several loaders too; where it fails
            on that, each loader's batch (a counter written for one loader's), summed where it counts
            every one. A batch (on any rank) it fails on (raises, or returns no count): one warning
            per run, and that phase's record says ``tokens_counted: false`` with no
            ``energy_j_per_token``.
        step_metrics: also log ``energy_kwh_total``, ``co2eq_g_total`` (so far, the epoch in
            progress included) and ``power_w`` (since the previous such log) at the steps where
            Lightning logs (``log_every_n_steps``), to every logger; no records are added. False: per
            epoch only.
        run_id, gpus, cpu_tdp_w, extra_sensors, sensors, carbon_aware, budget, embodied: passed
            to ``EnergySession`` (named here so that LightningCLI can set them). With
            ``budget=Budget(..., on_exceed="stop")`` a budget reached (or confidently predicted) sets
            ``trainer.should_stop`` after that epoch, so checkpoints and loggers finish normally; a
            step log (``step_metrics``) that reaches it stops after that batch.

    Runs: every ``trainer.fit`` starts a new run (new ``run_id``, totals from zero) unless it resumes
    from a checkpoint (``ckpt_path=``), which continues that run's totals. ``validate`` / ``test`` /
    ``predict`` after a ``fit`` continue the fit's run, so its summary covers training and inference;
    given the checkpoint of another run (``ckpt_path=``), they continue that run (every evaluation
    of it in one attempt), and the Trainer's own run stays its own. An evaluation of a checkpoint
    is labelled with the epochs that checkpoint had run, not with the Trainer's epoch (0 in a
    Trainer that never fitted).
    """

    _framework = "lightning"
    _timer_class: type | None = None  # the flavour's Timer callback class

    def __init__(
        self,
        *,
        country: str | None = None,
        zone: str | None = None,
        region: str | None = None,
        intensity: float | None = None,
        series: Any = None,
        pue: float | None = None,
        output_dir: Any = None,
        progress_bar: bool = True,
        sample_counter: Callable[[Any], int] | None = None,
        token_counter: Callable[[Any], int] | None = None,
        prefix: str = "",
        step_metrics: bool = True,
        # The session's own options, each named with its type so that LightningCLI (jsonargparse)
        # can set them from a command line or a YAML file (a Budget from its class_path too).
        run_id: str | None = None,
        gpus: str | Sequence[int] | None = "auto",
        cpu_tdp_w: float | None = None,
        extra_sensors: Iterable[Sensor] = (),
        sensors: Sequence[Sensor] | None = None,
        carbon_aware: CarbonAwarePause | None = None,
        budget: Budget | None = None,
        embodied: dict | bool | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if not isinstance(progress_bar, bool):
            raise ValueError(f"progress_bar must be True or False, got {progress_bar!r}")
        if not isinstance(step_metrics, bool):
            raise ValueError(f"step_metrics must be True or False, got {step_metrics!r}")
        self.step_metrics = step_metrics
        self._live_every = 0  # log_every_n_steps during a fit with step metrics on; 0: off
        self._live_step = -1  # the global step last logged (accumulation repeats a step over batches)
        self._live_wait = 0  # batch ends before global_step is next read
        self._live_at_most_one_step = False
        # global_step less the batches that stepped (automatic optimization); None: read at the fit's first batch
        self._live_offset: int | None = 0
        self._resume_epoch_at_batch = False  # begin the epoch Lightning resumed mid-way at its next batch
        self._pause_due = False  # an epoch of this fit ended (see _begin_train_epoch)
        # Several iterables whose batches hold one batch of each, counted apart: their collates (see
        # _collate_tree), nested as the iterables are; None: each batch counted whole.
        self._train_parts: Any = None
        self._eval_parts: Any = None
        # Whether a batch hook of the model or data module may remake the combined batches (see _add_parts).
        self._parts_remade = False
        # Per data loader of the loop running: what collates its batches (see _collates).
        self._train_collates: list[str | None] = []
        self._eval_collates: list[str | None] = []
        # Training batches of several loaders: each loader's batch in one, for a token_counter
        # written for one loader's batch (see _batches_of); None: one loader.
        self._train_loader_batches: Callable[[Any], list | None] | None = None
        self._counter = BatchCounter(sample_counter, token_counter)  # checks both are functions or None
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        reject_unknown_arguments(type(self).__name__, unknown, _OWN_ARGUMENTS)
        self._settings = dict(
            country=country, zone=zone, region=region, intensity=intensity, series=series, pue=pue, output_dir=output_dir
        )
        session_kwargs = dict(run_id=run_id, gpus=gpus, cpu_tdp_w=cpu_tdp_w, extra_sensors=extra_sensors, sensors=sensors,
                              carbon_aware=carbon_aware, budget=budget, embodied=embodied)
        self._session_kwargs = {**self._settings, **session_kwargs, "framework": self._framework}
        self.session = EnergySession(**self._session_kwargs)  # bad settings fail here, before training
        self._session_used = False
        self._session_fresh = True  # see setup
        # The run each Trainer fitted with this callback: its test / validate / predict belong there
        # even after another Trainer's fit (one callback given to two Trainers).
        self._runs_by_trainer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # The sessions that went on from a checkpoint for an evaluation, of runs no Trainer's fit
        # holds here (measured elsewhere, say): a later evaluation of that run goes on there too,
        # not in an attempt of its own each time (see _session_going_on_from). A fit's session is
        # held only by its Trainer: a finished fit keeps all its records in memory.
        self._runs_evaluated: list[EnergySession] = []
        self._trainer_in_use: weakref.ref | None = None  # the Trainer of the latest setup (see state_dict)
        self._log_dir: str | None = None  # the Trainer's log_dir at the latest setup, with the default output_dir
        self._exit_write_up_pid: int | None = None  # see _write_up_if_the_process_ends
        self.progress_bar = progress_bar
        self.sample_counter = self._counter.sample_counter
        self.prefix = prefix
        self._state_key: str | None = None
        self._warned_seams = False
        self._said_held_on = False  # Lightning's min_epochs / min_steps hold a budget stop off (see _stop_training)
        # The epochs the checkpoint an evaluation restored had run (see _checkpoint_restored); None:
        # no checkpoint, and the evaluation is labelled with the Trainer's epoch.
        self._checkpoint_epoch: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the Trainer (ddp_spawn) or deep-copied: the Trainers it ran in, and the
        # runs it evaluated, stay behind.
        state = dict(self.__dict__)
        state["_runs_by_trainer"] = None
        state["_runs_evaluated"] = []
        state["_trainer_in_use"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runs_by_trainer = weakref.WeakKeyDictionary()

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

    @property
    def tracker(self):
        return self.session.tracker

    # ------------------------------------------------------------------------------ lifecycle
    @never_raises
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # A fit's session, or a first call's, has no run of its own yet: a checkpoint restored
        # next makes it that checkpoint's run (see _session_going_on_from).
        self._session_fresh = stage == "fit" or not self._session_used
        if stage == "fit":
            if self._session_used:
                self.session = EnergySession(**self._session_kwargs)  # a new fit is a new run
            if not _tuning(trainer):  # a Tuner's trial fit trains nothing that a later test goes on from
                self._runs_by_trainer[trainer] = self.session
        else:  # continues the run of this Trainer's fit, or else the latest run
            self.session = self._runs_by_trainer.get(trainer, self.session)
        self._session_used = True
        self._trainer_in_use = weakref.ref(trainer)
        self._checkpoint_epoch = None
        if stage != "fit" and _restore_seam(trainer) is not None:
            self._watch_restore(trainer)  # once for every EnergyCallback of the Trainer
        if self._start_session(trainer) == 0:
            self._check_configuration(trainer)
        self._write_up_if_the_process_ends()

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

    def _watch_restore(self, trainer: Any) -> None:
        """Lightning 2.4 and earlier restore no callback's state in ``validate`` / ``test`` /
        ``predict``: an evaluation of another run's checkpoint went on in the Trainer's run (or the
        callback's latest, in a Trainer that never fitted), labelled with the Trainer's epoch.
        The checkpoint is read where Lightning holds it, just before it lets it go
        (``_CheckpointConnector.resume_end``, private, wrapped on this Trainer for this call only,
        on releases before 2.5: see ``_restore_seam``), and handed to ``on_load_checkpoint`` and ``load_state_dict`` as 2.5 does.
        Where a release drops that seam, the evaluation stays in the Trainer's run."""
        connector = _restore_seam(trainer)
        release = connector.resume_end

        def resume_end(*args: Any, **kwargs: Any) -> Any:
            _unwatch_restore(trainer)
            checkpoint = connector._loaded_checkpoint
            for callback in trainer.callbacks:  # each EnergyCallback of this Trainer, once
                if checkpoint and isinstance(callback, EnergyCallbackBase):
                    callback._checkpoint_restored(trainer, checkpoint)
            return release(*args, **kwargs)

        connector.resume_end = connector._greencallbacks_watch = resume_end

    def _checkpoint_restored(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        try:
            self.on_load_checkpoint(trainer, trainer.lightning_module, checkpoint)
            state = (checkpoint.get("callbacks") or {}).get(self.state_key)
            if state:
                self.load_state_dict(deepcopy(state))
        except Exception as error:  # noqa: BLE001 - measuring must never break an evaluation
            hook_failed(self, "resume_end", error)

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

    def _beside_another(self, trainer: Any) -> bool:
        """Would another EnergyCallback of this Trainer write to the same default directory? Two
        runs there would share one summary file, and a report would take them for repeats."""
        return any(cb is not self and isinstance(cb, EnergyCallbackBase) and cb._settings["output_dir"] is None
                   for cb in trainer.callbacks)

    def _check_configuration(self, trainer: Any) -> None:
        # fast_dev_run swaps the loggers for a DummyLogger ("Logging and checkpointing is suppressed").
        if not [logger for logger in trainer.loggers if type(logger).__name__ != "DummyLogger"]:
            why = "fast_dev_run suppresses Lightning's loggers" if getattr(trainer, "fast_dev_run", False) else "logger=False"
            warn(
                f"greencallbacks: EnergyCallback found no logger in the Trainer ({why}), so energy "
                f"goes only to trainer.callback_metrics and the records in {self.session.tracker.output_dir}."
            )
        # Same settings cannot get here: Lightning refuses two callbacks with one state_key.
        others = [cb for cb in trainer.callbacks if cb is not self and isinstance(cb, EnergyCallbackBase)]
        if any(cb.prefix == self.prefix for cb in others):  # Lightning keeps the last value logged
            warn(
                f"greencallbacks: two EnergyCallbacks in one Trainer log the same metric names (prefix={self.prefix!r}), "
                "so each overwrites the other's values; give each its own prefix (e.g. prefix='low/')."
            )

    @never_raises
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        _unwatch_restore(trainer)  # an evaluation that failed before its restore ended
        self.session.stop()  # a collective on several ranks; teardown runs on all of them

    @never_raises
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # No collectives here: the other ranks may be gone. Writes the unfinished phases as partial,
        # at the step where the fit failed.
        _unwatch_restore(trainer)
        self._stop_failed(trainer)

    def _stop_failed(self, trainer: Any) -> None:
        """Write the unfinished phases up as partial, at the step where the call failed; local only."""
        if trainer is not None:
            self.tracker.step = trainer.global_step
        self.session.stop(failed=True)

    # ------------------------------------------------------------------------------ training
    def _plan(self, trainer: Any) -> None:
        """Where the fit stops, whichever comes first: enables the whole-run prediction. Read when
        training starts, not at setup: callbacks change the limits in on_fit_start
        (StochasticWeightAveraging adds an epoch for a model with BatchNorm)."""
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.tracker.planned_epochs = trainer.max_epochs
        if isinstance(trainer.max_steps, int) and trainer.max_steps > 0:  # -1: no step limit
            self.tracker.planned_steps = trainer.max_steps
        timers = [cb for cb in trainer.callbacks if self._timer_class is not None and isinstance(cb, self._timer_class)]
        if timers:
            self.tracker.seconds_left = lambda: _seconds_left(timers)

    @never_raises
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan(trainer)
        self._pause_due = False  # an epoch of this fit ended (see _begin_train_epoch)
        self._said_held_on = False
        # After a resume the checkpoint's budget is loaded: one already spent stops before an epoch.
        if self.session.check_budget():
            self._stop_training(trainer)
        every = trainer.log_every_n_steps
        # Loggers write on rank 0 only, but every rank takes the step values: on several ranks they
        # are summed over them there (a collective at each logging step, see Tracker.live).
        on = self.step_metrics and isinstance(every, int) and every > 0
        self._live_every = every if on else 0
        # Automatic optimization steps the optimizer at most once per batch (manual optimization
        # may step several optimizers), which lets most batches skip reading global_step.
        self._live_at_most_one_step = bool(getattr(pl_module, "automatic_optimization", False))
        # A resumed fit starts at the checkpoint's step, logged by the attempt before: its first
        # batches, which may step no optimizer (accumulation), must not log it again. The count
        # is the one _maybe_log_live compares: with manual optimization the batches that stepped,
        # as global_step there counts every optimizer's steps (two per batch: twice as many).
        stepped = None if self._live_at_most_one_step else _batches_that_stepped(trainer)
        self._live_step = stepped if stepped is not None else trainer.global_step
        self._live_offset = None if self._live_at_most_one_step else 0  # read at the first batch (_count_steps_from)
        # Lightning 2.5+ resumes an epoch that a checkpoint interrupted without calling
        # on_train_epoch_start, and says so in the fit loop's public `restarted_mid_epoch` (saved
        # inside the epoch: every_n_train_steps, a mid-epoch validation) or `restarted_on_epoch_end`
        # (saved at its end, which max_steps can bring inside it); 2.2-2.4 have neither and call
        # the hook. That epoch begins at its first batch, or its batches would be billed to
        # `other` and it would log no values. Not here: a fit resumed from its very last batch
        # has no epoch left to run, and would leave an empty training record.
        fit_loop = getattr(trainer, "fit_loop", None)
        self._resume_epoch_at_batch = any(
            getattr(fit_loop, stage, False) is True for stage in ("restarted_mid_epoch", "restarted_on_epoch_end"))
        self._plan_training_batches(trainer)

    def _plan_training_batches(self, trainer: Any) -> None:
        """How the training batches are counted. Several training iterables (fit(model, {"a":
        loader_a, "b": loader_b}) or a list, nested too): each batch holds one batch of each (fit
        has no "sequential" mode), counted apart. Read again at each epoch's start, where
        ``reload_dataloaders_every_n_epochs`` has made the epoch's own (a loader added: its part
        was left uncounted)."""
        loaders = trainer.train_dataloader  # public: the iterables given to fit, combined
        self._train_parts = self._parts_of(trainer, loaders)
        self._train_collates = _collates(trainer, loaders)
        self._counter.collate = self._train_collates[0]
        self._counter.loader_batches = self._train_loader_batches = _batches_of(trainer, loaders)

    @never_raises
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning 2.2-2.4 call this hook for the epoch that a checkpoint saved inside it resumes,
        # also when none of its batches is left (saved at its last batch's validation:
        # val_check_interval < 1, check_val_every_n_epoch > 1). Begun here, that epoch left a
        # training record of no samples in the new attempt, which the report took for the epoch
        # trained again. As on 2.5+ (see on_train_start), it begins at its first batch, if any.
        self._resume_epoch_at_batch = _resuming_inside_epoch(trainer)  # a release that calls both begins once
        if not self._resume_epoch_at_batch:
            self._begin_train_epoch(trainer)
        self._plan_training_batches(trainer)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Two attribute tests per step: what is left to do at a fit's first batch (see on_train_start).
        if self._live_offset is None or self._resume_epoch_at_batch:
            try:
                if self._live_offset is None:
                    self._count_steps_from(trainer)
                if self._resume_epoch_at_batch:
                    self._resume_epoch_at_batch = False
                    self._begin_train_epoch(trainer)
            except Exception as error:  # noqa: BLE001 - measuring must never break training
                hook_failed(self, "on_train_batch_start", error)

    def _count_steps_from(self, trainer: Any) -> None:
        """With automatic optimization global_step moves with the batches that stepped (what
        Lightning's own logs count), but not always from the same value: Lightning 2.2-2.4 save a
        checkpoint inside an epoch after its batch's optimizer step and before its count, so a fit
        resumed from it runs with global_step one ahead, and its step values landed one step
        before Lightning's own. Read once both are settled: 2.5+ mend the count as the epoch
        loop starts, after on_train_start."""
        self._live_offset = 0
        stepped = _batches_that_stepped(trainer)
        if stepped is not None:
            self._live_offset = trainer.global_step - stepped
            self._live_step -= self._live_offset

    def _begin_train_epoch(self, trainer: Any) -> None:
        if self._pause_due:  # before an epoch that follows one, never after the last; every rank waits alike
            self._pause_due = False
            self.session.pause_between_epochs()
        self.tracker.begin("train", trainer.current_epoch)
        self._live_wait = 0  # read Lightning's step count at the next batch end

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        try:  # guarded here, not by @never_raises: one frame less at every step (see hook_failed)
            if batch is None:
                # Lightning trains no step on a None batch ("train_dataloader yielded None": a
                # collate_fn dropping a bad batch) and still calls this hook: no sample. Counted,
                # it left the epoch's samples uncounted, with a warning to pass a sample_counter.
                if self._resume_epoch_at_batch:
                    # Nor its start hook: a resumed epoch whose first batch this is begins here.
                    # Left to the next batch's start, that batch's loading went to `other`, and an
                    # epoch with no other batch left had no record.
                    self._resume_epoch_at_batch = False
                    self._begin_train_epoch(trainer)
            elif self._train_parts is None:
                self._counter.add(self.tracker, batch)
            else:
                self._add_combined(batch, self._train_parts)
                self._counter.collate = self._train_collates[0]
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "on_train_batch_end", error)
        try:  # apart: on several ranks the step values are a collective, which no rank may skip
            if self._live_every:
                self._live_wait -= 1
                if self._live_wait <= 0:
                    if self._live_offset is None:  # a first batch Lightning dropped (None) calls no start hook
                        self._count_steps_from(trainer)
                    self._maybe_log_live(trainer)
            # The open phases for a resume after a kill, once a minute (`Tracker.heartbeat`, one
            # clock read when not due): logging steps may be hours apart, or step_metrics off.
            self.tracker.heartbeat()
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "on_train_batch_end", error)

    def _maybe_log_live(self, trainer: Any) -> None:
        """Log the step values if this batch completed one of Lightning's logging steps.

        Lightning logs when the batches that stepped the optimizer reach a multiple of
        log_every_n_steps (`_LoggerConnector.should_update_logs`, 2.2 to 2.6), once per such
        batch. With automatic optimization that count goes up once per batch at most, so after
        reading it the next multiple is at least `every - step % every` batches away. It is read
        from the seams Lightning's own logs use (`_logged_count`): global_step, which it once was
        read from, skips a batch that steps no optimizer but which Lightning counts (a
        ``collate_fn`` returning None), and every later value went one step late, off
        Lightning's steps. Manual optimization may step several optimizers per batch, which
        global_step counts each: there too the count is Lightning's.
        """
        every = self._live_every
        if self._live_at_most_one_step:
            step = _logged_count(trainer)
            if step is None:  # a release without the seams: global_step, counted from where the fit began
                step = trainer.global_step - (self._live_offset or 0)
            due = step > 0 and step % every == 0  # 0 while the first batches accumulate: nothing to log yet
            self._live_wait = every - step % every
        else:
            stepped = _batches_that_stepped(trainer)
            # (Lightning raises that count after this hook; without the seam, global_step.)
            step = stepped + 1 if stepped is not None else trainer.global_step
            due = step % every == 0
            self._live_wait = 1
        if due and step != self._live_step:
            self._live_step = step
            self._log_live(trainer)

    @never_raises
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_and_log("train", trainer, pl_module)
        self._pause_due = True  # carbon-aware, if configured: before the next epoch, if one follows

    # ---------------------------------------------------------------------------- validation
    @never_raises
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.val_dataloaders, "validation")
        if not trainer.sanity_checking:  # the sanity check is billed to `other`
            self.tracker.begin("validation", self._evaluation_epoch(trainer))

    @never_raises
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._counter.collate = self._train_collates[0] if self._train_collates else None  # training goes on
        self._counter.loader_batches = self._train_loader_batches

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        try:  # guarded here, as on_train_batch_end
            if not trainer.sanity_checking:
                self._add_evaluated(batch, dataloader_idx)
        except Exception as error:  # noqa: BLE001
            hook_failed(self, "on_validation_batch_end", error)

    def _add_evaluated(self, batch: Any, dataloader_idx: int) -> None:
        """Count a validation, test or predict batch by the rule of the loader it came from, or,
        from a CombinedLoader in another mode than "sequential", of each loader apart."""
        if self._eval_parts is not None:
            self._add_combined(batch, self._eval_parts)
        else:
            collates = self._eval_collates
            self._counter.collate = collates[dataloader_idx] if dataloader_idx < len(collates) else None
            self._counter.add(self.tracker, batch)
        self.tracker.heartbeat()  # as at a training step: a long evaluation has no logging steps

    def _evaluation_epoch(self, trainer: Any) -> int:
        """The checkpoint's epochs run for an evaluation that restored one, or the Trainer's epoch
        (a fit's own validation: set only outside ``fit``)."""
        return self._checkpoint_epoch if self._checkpoint_epoch is not None else trainer.current_epoch

    def _plan_evaluation(self, trainer: Any, loaders: Any, stage: str) -> None:
        """How the batches of the evaluation starting are counted. Lightning runs a dict or list of
        evaluation loaders one after the other ("sequential": a batch is one loader's, told by its
        dataloader_idx; predict knows no other mode), unless given a CombinedLoader in another
        mode, whose batches hold one batch of each loader (None where one is exhausted): the mode
        is private (``_mode``, 2.2 to 2.6); unread, each batch is counted whole, by the general rule."""
        self._eval_collates = _collates(trainer, loaders)
        self._eval_parts = self._counter.loader_batches = None
        if stage == "predict":
            return
        try:
            if stage == "test":
                loop = trainer.test_loop
            else:  # fit's own validation loop, or validate()'s
                loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop
            mode = getattr(getattr(loop, "_combined_loader", None), "_mode", "sequential")
        except Exception:  # noqa: BLE001 - a release without these loops: counted whole
            mode = "sequential"
        if mode != "sequential":
            self._eval_parts = self._parts_of(trainer, loaders)
            self._counter.loader_batches = _batches_of(trainer, loaders)

    def _parts_of(self, trainer: Any, loaders: Any) -> Any:
        """For iterables whose batches hold one batch of each (several loaders, combined), the
        collate of each (``_collate_tree``), to count each one's batch apart: as a whole,
        ``{"a": [x, y], "b": [x, y]}`` reads as 2 samples. None, the batch is counted whole: one
        loader, or the user's own counter, given the whole batch. A hook that may remake the
        combined batch on its way (into one tensor) leaves each part to the general rule, where
        the batch still has the loaders' shape (see ``_add_parts``)."""
        if isinstance(loaders, (dict, list, tuple)) and not self._counter.custom_samples:
            self._parts_remade = _remade(trainer)
            return _collate_tree(trainer, loaders)  # each loader's collate None where a hook may remake its batch
        return None

    def _add_combined(self, batch: Any, parts: Any) -> None:
        """A batch of several loaders: samples counted loader by loader (``_add_parts``), tokens by
        the ``token_counter`` on the whole batch, the one the step is given, as a ``sample_counter``
        is. Handed each loader's part only, a counter written for that batch raised on every part
        (``b["a"]`` of ``b["a"]``) and the epoch had no tokens; each part is its fallback, for a
        counter written for one loader's batch (``BatchCounter.count_tokens``)."""
        token_counter = self._counter.token_counter
        if token_counter is None:
            self._add_parts(batch, parts)
            return
        self._counter.token_counter = None
        try:
            self._add_parts(batch, parts)
        finally:
            self._counter.token_counter = token_counter
        self.tracker.add_samples(0, tokens=self._counter.count_tokens(batch, self.tracker.run_id))

    def _add_parts(self, batch: Any, parts: Any) -> None:
        """Count a combined batch loader by loader, each by its own collate, as ``parts`` (nested
        as the iterables are) says. A batch not shaped as they are is counted whole."""
        if isinstance(parts, dict):
            if isinstance(batch, dict) and batch.keys() == parts.keys():
                for key, collate in parts.items():
                    self._add_parts(batch[key], collate)
                return
        elif isinstance(parts, (list, tuple)):
            if isinstance(batch, (list, tuple)) and len(batch) == len(parts):
                if self._parts_remade and type(batch) is not type(parts):
                    # Lightning gives the iterables' own kind, a list for a list: a hook made this
                    # tuple, (x, y) of the loaders' batches concatenated.
                    self._counter.collate = None
                    self._counter.add(self.tracker, batch)
                    return
                if self._parts_remade and not all(part is None or isinstance(part, (list, tuple, dict)) for part in batch):
                    # Remade by a hook, a list of one batch per loader ([x_a, x_b] of bare tensors)
                    # and a batch of fields (two loaders' batches concatenated into (x, y)) look
                    # alike: exact only where both readings agree.
                    self._add_either(batch)
                    return
                # Else each part is a loader's batch of fields (or None, exhausted): a hook that only
                # augments keeps [[x, y], [x, y]], which counted whole read as 2 samples a step.
                for part, collate in zip(batch, parts):
                    self._add_parts(part, collate)
                return
        elif batch is None:  # an iterable already exhausted ("max_size" mode)
            return
        else:
            self._counter.collate = parts
            self._counter.add(self.tracker, batch)
            return
        self._counter.collate = None
        self._counter.add(self.tracker, batch)

    def _add_either(self, batch: list | tuple) -> None:
        """Count a batch that is one loader's batch per item, or fields, by the reading both give; else uncounted."""
        self._counter.collate = None
        whole, tokens = self._counter.count(batch, self.tracker.run_id)
        apart = [count_samples(part) for part in batch if part is not None]
        if whole is not None and None not in apart and whole != sum(apart):
            self._counter._warn("sample_counter", count_samples, batch, None, None, self.tracker.run_id)  # once per run
            whole = None
        self.tracker.add_samples(whole, tokens=tokens)

    @never_raises
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._end_and_log("validation", trainer, pl_module)

    # ---------------------------------------------------------------------------------- test
    @never_raises
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.test_dataloaders, "test")
        self.tracker.begin("test", self._evaluation_epoch(trainer))

    @never_raises
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._add_evaluated(batch, dataloader_idx)

    @never_raises
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_and_log("test", trainer, pl_module)

    # ------------------------------------------------------------------------------- predict
    @never_raises
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.predict_dataloaders, "predict")
        self.tracker.begin("predict", self._evaluation_epoch(trainer))

    @never_raises
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._add_evaluated(batch, dataloader_idx)

    @never_raises
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker.end("predict", step=trainer.global_step) is None:
            return
        # Lightning forbids `self.log` in predict hooks: write to the loggers directly, at the
        # step its test and validate metrics go to (global_step counts every optimizer's steps
        # under manual optimization: twice as far with two), saved now (no log of Lightning's follows).
        metrics = _finite(self.session.metrics("predict", self.prefix + PREFIXES["predict"]))
        self._to_loggers(metrics, trainer)
        for logger in trainer.loggers:
            logger.save()

    # ------------------------------------------------------------------------------- logging
    def _end_and_log(self, phase: str, trainer: Any, pl_module: Any) -> None:
        """End ``phase`` (a collective: every rank is in this hook) and log its metrics.

        Training and in-fit validation go straight to every logger, at the step and with the
        ``epoch`` key Lightning uses for the epoch's own metrics (``_to_loggers``):
        ``LightningModule.log`` would cost ~0.6 ms per value every epoch. The values are also
        put in ``trainer.callback_metrics`` (so checkpointing and early stopping can monitor them)
        and the progress bar. ``test`` and standalone ``validate`` go through ``pl_module.log`` so
        that they are part of the results those calls return.
        """
        if self.tracker.end(phase, step=trainer.global_step) is None:
            return
        if phase == "train" and self.session.check_budget():  # before logging: its metrics go with the epoch's
            self._stop_training(trainer)  # Lightning ends after this epoch: checkpoints and loggers finish as usual
        values = self.session.metrics(phase, self.prefix + PREFIXES[phase])
        metrics = _finite(values)
        if phase == "train" or (phase == "validation" and trainer.state.fn == "fit"):
            # Lightning writes a training epoch's metrics one step back (its loop has already
            # counted the next batch); validation at the current step. LearningRateMonitor reads
            # the same counter.
            left_out = [name for name in values if name not in metrics]
            per_token = self.prefix + PREFIXES[phase] + "energy_j_per_token"
            if per_token not in metrics:
                # A phase without tokens, or counted in part (its token_counter failed there), has no
                # per-token value: left in callback_metrics, an earlier epoch's cost per token stood as this one's.
                left_out.append(per_token)
            self._log_directly(metrics, trainer, phase, left_out=left_out)
            return
        # Every rank already holds the same summed values; syncing with `max` keeps them exact and
        # tells Lightning they are synchronised (it warns about unsynchronised epoch metrics).
        # As float64 tensors on the module's device: a float becomes float32 there (a relative
        # 3e-8 off the records), and `max` keeps the wider type. MPS has no float64.
        import torch

        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        for name, value in metrics.items():
            pl_module.log(
                name,
                torch.tensor(value, dtype=dtype, device=device),
                on_step=False,
                on_epoch=True,
                logger=bool(trainer.loggers),  # without loggers we warned once in setup; Lightning would per name
                batch_size=1,
                sync_dist=trainer.world_size > 1,
                reduce_fx="max",
            )

    def _stop_training(self, trainer: Any) -> None:
        """Ask Lightning to stop for the budget. With its ``min_epochs`` / ``min_steps`` not yet met
        it trains on regardless: said once, or "stopping training" and the summary's stop would
        hide the energy spent after it."""
        trainer.should_stop = True
        if self._said_held_on:
            return
        loop = trainer.fit_loop
        # Counts the epoch whose on_train_epoch_end runs already (2.2 to 2.6); none: nothing said.
        epochs_done = getattr(getattr(getattr(loop, "epoch_progress", None), "current", None), "processed", None)
        held = []
        if loop.min_epochs and isinstance(epochs_done, int) and epochs_done < loop.min_epochs:
            held.append(f"min_epochs={loop.min_epochs}")
        if loop.min_steps and trainer.global_step < loop.min_steps:
            held.append(f"min_steps={loop.min_steps}")
        if held and trainer.is_global_zero:
            self._said_held_on = True
            warn(f"greencallbacks: the budget stops training, but Lightning trains on until its {' and '.join(held)} "
                 "is met; the energy spent meanwhile counts in the run's totals")

    def _log_live(self, trainer: Any) -> None:
        """The run's totals so far and the power since the last such log, at Lightning's logging step.

        To every logger at the step Lightning's own step metrics use (see ``_to_loggers``), and
        into the progress bar; not into ``callback_metrics``, which keep the epoch's values for
        checkpoints and early stopping.
        """
        values = _finite(self.session.live_metrics(self.prefix))
        if self.session.budget_stops_training:  # on every rank alike: Lightning ends the epoch after this batch
            self._stop_training(trainer)
        if not values or not trainer.is_global_zero:
            return
        self._to_loggers(values, trainer)
        if self.progress_bar:
            self._to_bar(values, trainer)

    def _log_directly(self, metrics: dict[str, float], trainer: Any, phase: str, left_out: Iterable[str] = ()) -> None:
        import torch

        # Lightning writes a training epoch's metrics one step back (its loop has already counted
        # the next batch), validation's at the current step. LearningRateMonitor reads the same counter.
        self._to_loggers({**metrics, "epoch": trainer.current_epoch}, trainer, steps_back=int(phase == "train"),
                         left_out=left_out)
        shown = _shown(trainer, "_callback_metrics")
        # Lightning keeps callback_metrics over a fit's epochs: an epoch that counted no sample
        # would show the last counted epoch's per-sample cost as its own (to ModelCheckpoint, and
        # to mlflow.pytorch.autolog, which logs them at this epoch).
        for name in left_out:
            shown.pop(name, None)
        # float64, as validate() and test() put them there: torch.tensor(float) is float32, a
        # relative 3e-8 off the records in what reads them (mlflow.pytorch.autolog logs
        # callback_metrics into a float64 store).
        shown.update({name: torch.tensor(value, dtype=torch.float64) for name, value in metrics.items()})
        if self.progress_bar and phase == "train":
            self._to_bar(metrics, trainer)

    def _to_bar(self, values: dict[str, float], trainer: Any) -> None:
        """The running totals among ``values`` into the progress bar."""
        bar = _shown(trainer, "_progress_bar_metrics")
        for name in (self.prefix + stem for stem in PROGRESS_BAR_METRICS):
            if name in values:
                bar[name] = values[name]

    def _to_loggers(self, values: dict[str, float], trainer: Any, steps_back: int = 0,
                    left_out: Iterable[str] = ()) -> None:
        """``values`` to every logger (each writes on rank 0 only), at the step Lightning's own metrics use;
        ``trainer.logged_metrics`` shows them, and no longer shows the names ``left_out``.

        Each logger's public ``log_metrics``, without the ``save()`` that Lightning's connector adds
        to every call: a save costs 0.4-1 ms on the training thread (the CSV logger appends to its
        file, TensorBoard flushes its event file). The values are written at the logger's own
        cadence instead: at Lightning's next log of its own metrics, which saves every logger, at
        the CSV logger's ``flush_logs_every_n_steps``, and at ``finalize``, which Lightning calls
        when a fit ends and when it fails.
        """
        stepped = _batches_that_stepped(trainer)
        if stepped is not None:
            step = stepped - steps_back
        else:
            step = trainer.global_step
            if not self._warned_seams:
                self._warned_seams = True
                warn(
                    "greencallbacks: this Lightning version has no fit_loop.epoch_loop._batches_that_stepped; "
                    "energy goes to each logger at the global step instead (values unchanged, steps may "
                    "differ by one from Lightning's own epoch metrics)."
                )
        for logger in trainer.loggers:
            if _csv_writer_without_prefix(logger):
                # Its log_metrics also saves when step + 1 is a multiple of its
                # flush_logs_every_n_steps, which our epoch and step values often are (every
                # 100-step epoch): a save Lightning's own log at that step makes anyway.
                logger.experiment.log_metrics(values, step)
            else:
                logger.log_metrics(values, step=step)
        # What trainer.logged_metrics shows (its public property computes the module's metrics first).
        # Kept over the fit like callback_metrics: a value this epoch leaves out is dropped there too.
        logged = getattr(getattr(trainer, "_logger_connector", None), "_logged_metrics", None)
        if isinstance(logged, dict):
            for name in left_out:
                logged.pop(name, None)
            logged.update(values)


_OWN_ARGUMENTS = keyword_names(EnergyCallbackBase.__init__)


def _write_up_failed(callback: EnergyCallbackBase) -> None:
    """At the end of a spawned process: its session still running means its call failed there."""
    try:
        if callback.session.running:
            callback._stop_failed(callback._trainer_in_use() if callback._trainer_in_use else None)
    except Exception as error:  # noqa: BLE001 - the process is ending already
        hook_failed(callback, "the end of its process", error)


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


_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _tuning(trainer: Any) -> bool:
    """Whether this fit is a ``Tuner``'s (``lr_find``, ``scale_batch_size``): the Tuner adds its
    finder with ``_early_exit`` set (Lightning 2.0 on), so that the fit ends once it has tuned. A
    finder the user passes (tuning at the start of a real fit) leaves it unset. Private: where a
    version lacks it, every fit counts as a training, as before."""
    return any(type(cb).__name__ in ("BatchSizeFinder", "LearningRateFinder") and getattr(cb, "_early_exit", False) is True
               for cb in trainer.callbacks)


def _other_versions(log_dir: str) -> list:
    """The other directories beside a logger's ``version_N`` (its earlier versions)."""
    here = Path(log_dir)
    try:
        return [p for p in here.parent.iterdir() if p.is_dir() and p != here]
    except OSError:
        return []


def _remade(trainer: Any) -> bool:
    """Whether the model or data module overrides a hook that may remake a batch on its way from
    the loader to the step hooks (``on_before_batch_transfer``, ``transfer_batch_to_device``,
    ``on_after_batch_transfer``): what the loaders made is then no guide to what is counted."""
    try:
        owners = [o for o in (trainer.lightning_module, getattr(trainer, "datamodule", None)) if o is not None]
        return any(getattr(getattr(type(owner), hook, None), "__qualname__", f"DataHooks.{hook}") != f"DataHooks.{hook}"
                   for owner in owners for hook in _BATCH_HOOKS)
    except Exception:  # noqa: BLE001 - only a guide
        return True


def _batches_of(trainer: Any, loaders: Any) -> Callable[[Any], list | None] | None:
    """For several loaders (a dict or list of them, nested too) whose batches hold one batch of
    each: ``batch -> [each loader's batch]`` (``_loader_batches``). None for one loader, or where
    the model or data module overrides a hook that may remake a batch on its way (``_remade``):
    a list of the loaders' batches and one of a batch's fields then look alike."""
    if not isinstance(loaders, (dict, list, tuple)) or _remade(trainer):
        return None
    return functools.partial(_loader_batches, loaders=loaders)


def _loader_batches(batch: Any, loaders: Any) -> list | None:
    """Each loader's batch in ``batch``, nested as ``loaders`` are (an exhausted one's None left
    out: it has no tokens); None where ``batch`` is not shaped as they are."""
    if isinstance(loaders, dict):
        if not (isinstance(batch, dict) and batch.keys() == loaders.keys()):
            return None
        pairs = [(batch[key], loaders[key]) for key in loaders]
    elif isinstance(loaders, (list, tuple)):
        if not (isinstance(batch, (list, tuple)) and len(batch) == len(loaders)):
            return None
        pairs = list(zip(batch, loaders))
    else:
        return [] if batch is None else [batch]
    found: list = []
    for part, loader in pairs:
        parts = _loader_batches(part, loader)
        if parts is None:
            return None
        found += parts
    return found


def _collates(trainer: Any, loaders: Any) -> list[str | None]:
    """For each data loader of a stage (the trainer's public ``*_dataloader(s)``: one, or a list or
    dict of them, nested too), in the order of their ``dataloader_idx`` (Lightning's flattening:
    a dict's values in order, a list's items), what collates its batches (``_collate_tree``)."""
    def leaves(node: Any) -> Iterable[str | None]:
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, (list, tuple)):
            for item in node:
                yield from leaves(item)
        else:
            yield node

    return list(leaves(_collate_tree(trainer, loaders))) or [None]


def _collate_tree(trainer: Any, loaders: Any) -> Any:
    """``loaders`` (one, or a dict or list or tuple of them, nested as a CombinedLoader allows; a
    list or tuple kept as its own kind, as the batches keep it) with each loader replaced by what
    makes the batches that reach the hooks (``greencallbacks.samples.count_samples``'
    ``collate``, read by ``loader_collate``: torch's ``default_collate``, whose lists are fields
    and text pairs count exactly; ``collate_fn=list``; no batching, ``batch_size=None``). None
    where the model or data module overrides a hook that may remake the batch on its way (a list
    of per-sample records for a detection model)."""
    remade = _remade(trainer)  # True where it cannot tell

    def tree(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: tree(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            kind = type(node) if type(node) in (list, tuple) else list
            return kind(tree(item) for item in node)
        return None if remade else loader_collate(node)

    try:
        return tree(loaders)
    except Exception:  # noqa: BLE001 - an odd loader: the general rule
        return None


def _seconds_left(timers: list) -> float | None:
    """The least time any Timer callback leaves the fit (its public ``time_remaining``); None without a duration."""
    left = []
    for timer in timers:
        try:
            seconds = timer.time_remaining()
        except Exception:  # noqa: BLE001 - a prediction without this bound, rather than none
            continue
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            left.append(float(seconds))
    return min(left) if left else None


def _resuming_inside_epoch(trainer: Any) -> bool:
    """Whether the training epoch starting goes on from a checkpoint saved inside it: Lightning's
    epoch loop is ``restarting`` (2.2 to 2.6) until it runs, and not after a checkpoint saved at
    an epoch's end, nor after a Tuner's restore (which resets it). Where a release drops it: False."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return getattr(epoch_loop, "restarting", False) is True


def _batches_that_stepped(trainer: Any) -> int | None:
    """The step Lightning logs its own metrics at (a private counter in 2.2 to 2.6), or None when a release drops it."""
    stepped = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    return stepped if isinstance(stepped, int) else None


def _logged_count(trainer: Any) -> int | None:
    """Under automatic optimization, the count Lightning's step logs go by once this batch ends: its
    batches that stepped, one more unless this batch accumulates (`update_train_step_metrics`, 2.2
    to 2.6, which logs nothing at a batch that accumulates). None where a release drops a seam."""
    stepped = _batches_that_stepped(trainer)
    accumulates = getattr(getattr(trainer, "fit_loop", None), "_should_accumulate", None)
    if stepped is None or not callable(accumulates):
        return None
    return stepped if accumulates() else stepped + 1


def _shown(trainer: Any, name: str) -> dict:
    """The dict behind ``trainer.callback_metrics`` (``name`` ``"_callback_metrics"``) or
    ``trainer.progress_bar_metrics`` (``"_progress_bar_metrics"``), to put our values in.

    Each public property first gathers every metric the module logged (``_ResultCollection.metrics``)
    and turns each progress-bar tensor into a number with ``.item()``: 20-70 us at a logging step
    on a CPU, and a wait for the queued steps on a GPU. Updating the dict it returns shows the
    same values wherever the property is read. Private (Lightning 2.2 to 2.6): where a release
    drops it, the property.
    """
    shown = getattr(getattr(trainer, "_logger_connector", None), name, None)
    if isinstance(shown, dict):
        return shown
    return trainer.callback_metrics if name == "_callback_metrics" else trainer.progress_bar_metrics


def _csv_writer_without_prefix(logger: Any) -> bool:
    """Lightning's CSV logger, whose writer (its public ``experiment``) takes our values as they are.

    Only with Lightning's own ``log_metrics`` (a subclass's override is the user's and runs) and
    no ``prefix`` (a private attribute since 2.0, read with a default that says no): any other
    logger goes through ``log_metrics``, which costs at most a save more.
    """
    log_metrics = getattr(type(logger), "log_metrics", None)
    return (
        getattr(log_metrics, "__qualname__", None) == "CSVLogger.log_metrics"
        and getattr(log_metrics, "__module__", "").endswith("fabric.loggers.csv_logs")
        and getattr(logger, "_prefix", None) == ""
    )


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """Per-sample values are NaN when no samples were counted: leave them out rather than log NaN."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}
