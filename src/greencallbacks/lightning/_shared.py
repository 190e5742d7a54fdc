"""The Lightning callback, written once for both flavours (``lightning.pytorch``, ``pytorch_lightning``).

This module imports neither flavour: each flavour's module mixes ``EnergyCallbackBase`` into its
own ``Callback`` class, so Lightning's ``isinstance`` check passes and only that flavour is
imported. Everything here and in its mixins is the mapping from Lightning's hooks onto the tracker,
and from the tracker's metrics onto Lightning's logging.

Hooks -> phases (the tracker bills everything in between to ``other``):

    train       on_train_epoch_start .. on_train_epoch_end (its validation excluded)
    validation  on_validation_start .. on_validation_epoch_end (not during the sanity check)
    test        on_test_start .. on_test_epoch_end
    predict     on_predict_start .. on_predict_end

Metric names: the training epoch logs the bare stems (``energy_kwh``, ``co2eq_g``, ...),
validation logs ``val_<stem>``, test ``test_<stem>`` and predict ``predict_<stem>``.

The class is put together from one mixin per idea, each in its own module: ``_checkpoints`` (its
state in checkpoints), ``_runs`` (the session that measures), ``_training`` and ``_evaluation``
(the loops' hooks), ``_batches`` (samples and tokens of the batches) and ``_logging`` (where the
values go). This module keeps the class: its arguments, its state, ``setup`` and ``teardown``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Sequence

from greencallbacks.budget import Budget
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.guard import never_raises
from greencallbacks.lightning._batches import _BatchCounting
from greencallbacks.lightning._checkpoints import _CheckpointState, _restore_seam, _unwatch_restore
from greencallbacks.lightning._evaluation import _EvaluationHooks
from greencallbacks.lightning._logging import _LoggedValues
from greencallbacks.lightning._runs import _RunSessions
from greencallbacks.lightning._training import _TrainingHooks
from greencallbacks.meter import warn
from greencallbacks.session import EnergySession, keyword_names, reject_unknown_arguments
from greencallbacks.samples import BatchCounter
from greencallbacks.sensors.base import Sensor

# Defined in the modules above, and importable here as before the split: a callback pickled then
# names its loader-batch splitter here (a functools.partial of _loader_batches), and tests read the
# seams here. A test that patches a seam patches it where it is read (_training, _logging, ...).
from greencallbacks.lightning._batches import _BATCH_HOOKS as _BATCH_HOOKS
from greencallbacks.lightning._batches import _batches_of as _batches_of
from greencallbacks.lightning._batches import _collate_tree as _collate_tree
from greencallbacks.lightning._batches import _collates as _collates
from greencallbacks.lightning._batches import _loader_batches as _loader_batches
from greencallbacks.lightning._batches import _remade as _remade
from greencallbacks.lightning._checkpoints import _before_records_path as _before_records_path
from greencallbacks.lightning._checkpoints import _epochs_run as _epochs_run
from greencallbacks.lightning._checkpoints import _other_versions as _other_versions
from greencallbacks.lightning._checkpoints import _release_of as _release_of
from greencallbacks.lightning._checkpoints import _settings_in_key as _settings_in_key
from greencallbacks.lightning._logging import PREFIXES as PREFIXES
from greencallbacks.lightning._logging import PROGRESS_BAR_METRICS as PROGRESS_BAR_METRICS
from greencallbacks.lightning._logging import _batches_that_stepped as _batches_that_stepped
from greencallbacks.lightning._logging import _csv_writer_without_prefix as _csv_writer_without_prefix
from greencallbacks.lightning._logging import _finite as _finite
from greencallbacks.lightning._logging import _shown as _shown
from greencallbacks.lightning._runs import _write_up_failed as _write_up_failed
from greencallbacks.lightning._training import _logged_count as _logged_count
from greencallbacks.lightning._training import _resuming_inside_epoch as _resuming_inside_epoch
from greencallbacks.lightning._training import _seconds_left as _seconds_left


class EnergyCallbackBase(_CheckpointState, _RunSessions, _TrainingHooks, _EvaluationHooks, _BatchCounting, _LoggedValues):
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


_OWN_ARGUMENTS = keyword_names(EnergyCallbackBase.__init__)


def _tuning(trainer: Any) -> bool:
    """Whether this fit is a ``Tuner``'s (``lr_find``, ``scale_batch_size``): the Tuner adds its
    finder with ``_early_exit`` set (Lightning 2.0 on), so that the fit ends once it has tuned. A
    finder the user passes (tuning at the start of a real fit) leaves it unset. Private: where a
    version lacks it, every fit counts as a training, as before."""
    return any(type(cb).__name__ in ("BatchSizeFinder", "LearningRateFinder") and getattr(cb, "_early_exit", False) is True
               for cb in trainer.callbacks)

