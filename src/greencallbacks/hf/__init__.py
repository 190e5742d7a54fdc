"""HuggingFace ``transformers.Trainer``: energy and CO2eq per epoch, in every ``report_to`` logger.

    from greencallbacks.hf import EnergyCallback

    trainer = Trainer(model, args, train_dataset=..., callbacks=[EnergyCallback(country="FR")])
    # or: trainer.add_callback(EnergyCallback(country="FR"))

How it fits the Trainer (read against transformers 5.23):

* **Reaching the reporters.** TensorBoard, W&B, MLflow... only see the ``logs`` dict given to
  ``on_log``, and they sit before user callbacks in ``CallbackHandler.callbacks``, so a value put
  into ``logs`` by our own ``on_log`` would arrive after they have written. Instead the callback
  logs through ``Trainer.log``, exactly like the Trainer's own loss log: every reporter and
  ``state.log_history`` receive the values, whatever ``logging_strategy`` is. Hooks are not given
  the trainer, so the callback finds it once on the call stack (``on_init_end`` when passed to
  ``Trainer(callbacks=...)``, ``on_train_begin`` or the first ``on_prediction_step`` after
  ``add_callback``). ``CallbackHandler.on_log`` clears ``control.should_log``; the callback puts
  it back so the Trainer's own epoch-end log still happens.
* **Boundaries.** Train: ``on_epoch_begin`` / ``on_epoch_end`` (the end precedes the epoch-end
  evaluation and checkpoint, which get their own records); the epoch a resume goes on with from a
  checkpoint inside it begins at its first ``on_step_begin``, after HF has skipped the steps trained
  before (billed to the gap before it), and one with none left (a stream's pass shorter than the
  steps skipped) writes no training record. Evaluation and prediction have no
  begin hook, so the callback wraps ``trainer.evaluation_loop`` on the instance: the phase is
  exact and the ``eval_*`` / ``test_*`` values (HF's ``metric_key_prefix``) join HF's own metrics
  dict, which ``evaluate()`` logs and returns and ``predict()`` returns (and the callback logs,
  to all but the reporters that log ``predict()``'s metrics in their own ``on_predict``: W&B,
  Trackio, Comet, SwanLab). A subclass's override of the loop (``*args, **kwargs`` too) is
  wrapped alike; one whose arguments cannot be read runs unmeasured, with one warning. The
  wrappers measure for the callbacks still in the Trainer's handler (``remove_callback`` stops
  one), each loop into the run of the Trainer it ran on (one callback given to two Trainers).
  Several evaluation data sets (``eval_dataset={"a": ..., "b": ...}``) each get their own
  ``eval_a_*`` / ``eval_b_*`` values, and each prefix's ``_total`` sums the loops logged under it,
  evaluations and predictions alike (``evaluate(ds, metric_key_prefix="test")`` beside
  ``predict(ds)``; the records carry it as ``metric_prefix``). An empty prefix names them
  ``_energy_kwh``..., as HF names its ``_loss``. Loops nest (a ``predict()`` in
  ``compute_metrics``, an ``evaluate()`` in a callback's ``on_prediction_step``): each has its
  own record and values, the inner one's inside the outer's. Epochs: the first of a ``train()`` is the Trainer's
  (0, or where a resume starts), each later one the one before plus one; an ``evaluate()`` after
  a ``train()`` is at its last epoch (after a resume that ran none, the checkpoint's). A loop that starts
  before the callback has seen the trainer (``add_callback`` then ``evaluate`` / ``predict``
  without training) begins at its first ``on_prediction_step``: its first batch is billed to the
  gap before it. So does every loop, with one warning, in a release without
  ``evaluation_loop`` (or, before 5, ``prediction_loop``) to wrap.
* **Counting.** Train samples: each rank counts the leading dimension of every micro-batch given
  to ``training_step`` (wrapped on the instance too: exact for partial last batches and gradient
  accumulation, a shape lookup per batch), or, where the Trainer's class prepares its own
  micro-batches (TRL's GRPO and RLOO, whose ``training_step`` is given a generation batch of
  ``steps_per_generation`` micro-batches), the one its ``_prepare_inputs`` returns in the step.
  TRL's preference collators (DPO's, its vision one, the reward model's) stack chosen and rejected:
  a pair is one sample, as in HF's own count. Ranks are summed, so the samples Accelerate repeats to
  keep ranks in step are counted: they cost energy. Tokens: HF's ``state.num_input_tokens_seen``
  (already summed over ranks) when ``include_num_input_tokens_seen`` is on, read at each step's
  end (a checkpoint or heartbeat of the open epoch holds them) and at the epoch's end or a crash's
  write-up, giving ``energy_j_per_token``
  (HF's count: ``True`` or ``"all"`` counts padding too; ``"non_padding"``, where the release has it,
  only real tokens);
  or ``token_counter=`` (batch -> int) on each batch. Evaluation and prediction samples: each
  completed ``prediction_step``'s batch is counted as the loop goes (wrapped on the instance),
  so a loop that raises leaves a partial record with the batches it finished; a loop that
  completes records those batches' count where every one was counted (whatever its sampler,
  stream or ``dataloader_drop_last``). The data set's length (HF's
  ``num_samples``) stands in only where the batches hold each of its samples once (torch's batch
  sampler without ``drop_last`` over a sequential, random or length-grouped sampler of the whole
  set) and the count is incomplete, or on several ranks, whose batches hold the samples
  Accelerate repeats to keep them in step (elsewhere these are counted, as in training). Never
  HF's count without a length, each batch's first tensor's leading dimension. A loop
  begun at its first ``on_prediction_step`` counts that batch from the loop's frame. Batches are counted by
  ``sample_counter=`` or ``greencallbacks.samples.count_samples`` (data collators'
  ``BatchEncoding`` and dicts by their leading dimension; a padding-free collator's single row,
  ``DataCollatorWithFlattening`` or TRL's ``padding_free``, by the sequences packed into it (the
  single row of any other collator is one sample: pre-packed rows count as rows at every batch size): on a GPU only when it carries
  ``cu_seq_lens_q``, as counting its ``position_ids`` there would synchronise every step, so
  such a batch is uncounted and says so; TRL's row padded to a multiple, ``pad_to_multiple_of``,
  whose ``cu_seq_lens_q`` counts each pad token as a sequence: less them, on the CPU only), only once the step returned: a batch that raised is
  not counted. A batch that cannot be counted: one warning per run and
  ``samples_counted: false``.
* **Runs.** Every ``train()`` starts a new run (new ``run_id``, totals from zero) unless it resumes
  from a checkpoint (``resume_from_checkpoint=``), which continues that run as its next attempt.
  The meter starts at ``on_train_begin`` and stops at ``on_train_end``. ``evaluate()`` /
  ``predict()`` after training continue its run; before any training they are a short run of their own.
  One callback given to several Trainers keeps each one's last run (held weakly: a Trainer dropped
  is not kept alive): each Trainer's ``evaluate()`` / ``predict()`` continue its own, in its
  ``output_dir``, whichever trained last. A copy of the callback (``copy.deepcopy``, ``pickle``,
  alone or with its Trainer) has the settings alone: no Trainer, no run; the Trainer's wrappers
  are objects, not closures, so a Trainer that pickled before the callback saw it still does. A
  callback removed mid-train (``remove_callback``) and added back counts none of the batches run
  meanwhile: that epoch's record says ``samples_counted: false``, and an epoch that ended unseen
  is cut short (``partial``) where it came back. One never added back is written up when the
  ``train()`` leaves, as a failure is: its open epoch ``partial``, ``samples_counted: false``.
  One added to the same Trainer twice (``add_callback`` again) is kept once, with a warning.
* **Several processes.** The reducer is created at ``on_train_begin`` (all ranks); each rank
  measures its own GPU, the first rank of each host CPU and RAM; every rank logs the same sums.
* **Resume.** ``state()`` (HF's ``ExportableState``) stores the totals in the checkpoint's
  ``trainer_state.json``; ``on_train_begin`` reads them back from ``state.stateful_callbacks``
  (several callbacks of the class: HF's list, each taking the entry saved with its settings).
  With ``restore_callback_states_from_checkpoint=True`` the Trainer replaces the callback with a
  copy built from ``state()``; the copy hands its place back to the original instance it
  replaced (one in the Trainer as the resume began, not one taken out before with
  ``remove_callback``): the one with its settings, else, the grid corrected since, the first not
  yet back; and a callback added twice, copied for each of its places, comes back once.
* **Failures.** The Trainer has no exception hook in any version: ``greencallbacks.watch`` sees the
  training loop's frame leave the stack without ``on_train_end`` and, within a fraction of a
  second, writes the unfinished phase as ``partial`` (at the step where it failed) and the summary
  and stops the meter thread, whether or not the exception stays referenced; so for a standalone
  ``evaluate()`` / ``predict()`` that raises after its loop (a reporter failing in ``on_log``).
  The wrapped evaluation loop does the same at once for an exception inside it, but inside a
  ``train()`` or another loop on one process, whose caller may catch it and go on (a callback's
  own ``evaluate()``, a ``predict()`` in ``compute_metrics``, in try/except): that loop alone is
  cut short (``partial``) and the run goes on, the watch writing it up if the exception leaves
  the call. An ``atexit``
  handler covers the interpreter's exit. When the
  Trainer itself goes on first (``auto_find_batch_size`` rerunning the loop after an
  out-of-memory error, whose failed try stays a run of its own), the write-up is finished before
  the session is used again.
* **Hyperparameter search.** ``hyperparameter_search`` without ``compute_objective`` scores each
  trial with HF's ``default_compute_objective``: ``eval_loss`` only when the evaluation's metrics
  hold nothing else, else the sum of them all, which the ``eval_*`` energy values would join
  (50 W of ``eval_power_w`` outweighing a loss of 0.7). The Trainer calls its instance attribute
  ``compute_objective`` on ``evaluate()``'s metrics (its report to the search, and the backends'
  own call after a trial without evaluation); where that is HF's default when a ``train()``
  begins, the callback wraps it to leave out the names it merged. The metrics keep them (returned,
  logged, reported to Ray). A ``compute_objective`` of the user's own sees them all: energy may be
  the objective. An Optuna trial the pruner stops (HF calls ``on_train_end``, then raises
  ``TrialPruned``) ends as failed, its open phase partial: cut short, not a finished training.
"""

from __future__ import annotations

import atexit
import inspect
import json
import math
import os
import sys
import weakref
from collections.abc import Mapping
from typing import Any, Callable

from greencallbacks import extras

try:
    import transformers
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:
    raise extras.missing(error, "greencallbacks.hf", ("transformers",), "pip install 'greencallbacks[hf]'") from None

from greencallbacks import interrupts, watch
from greencallbacks.distributed import torch_reducer_or_local
from greencallbacks.guard import hook_failed, never_raises
from greencallbacks.hf._saved_state import complete_saved_entries, saved_alike, saved_entry
from greencallbacks.meter import warn
from greencallbacks.session import EnergySession, keyword_names, reject_unknown_arguments, warn_two_callbacks
from greencallbacks.samples import BatchCounter
from greencallbacks.torch_support import device_and_sync

__all__ = ["EnergyCallback"]

# Attributes set on the Trainer instance: the callbacks its wrappers report to, in attach order,
# and whether an evaluation / prediction loop method was there to wrap.
_OWNERS = "_greencallbacks_energy_callbacks"
_LOOPS_WRAPPED = "_greencallbacks_loops_wrapped"
# The metric names the callbacks merged into the Trainer's loop metrics, which HF's default objective leaves out.
_MERGED = "_greencallbacks_merged_metrics"
# The energy callbacks in the Trainer's handler when HF last replaced them with copies built from a
# checkpoint (`restore_callback_states_from_checkpoint`), whose places the copies hand back.
_REPLACED = "_greencallbacks_replaced_callbacks"


def _owners(trainer) -> list:
    return trainer.__dict__.get(_OWNERS, []) if trainer is not None else []


class _Loop:
    """An evaluation or prediction loop being measured."""

    __slots__ = ("phase", "prefix", "batches", "all_counted", "hooked", "hooked_in", "dataloader")

    def __init__(self, phase: str, prefix: str | None) -> None:
        self.phase, self.prefix = phase, prefix  # prefix: HF's metric_key_prefix (None: read from its metrics)
        self.batches, self.all_counted = 0, True  # its prediction_step batches counted, and whether each could be
        # Begun at its first on_prediction_step (not by a wrapper): the loop's frame and its callers
        # (none where not found), and its data loader.
        self.hooked, self.hooked_in, self.dataloader = False, [], None


class _Run:
    """The last run a callback measured on one Trainer, and the epoch its records are at."""

    __slots__ = ("session", "epoch")

    def __init__(self, session: EnergySession) -> None:
        self.session, self.epoch = session, None


class EnergyCallback(TrainerCallback, ExportableState):
    """Logs ``energy_kwh``, ``co2eq_g``, their ``_total``, per-sample values and ``power_w`` per epoch,
    and ``eval_*`` / ``test_*`` values for each evaluation and prediction loop.

    Arguments are those of :class:`greencallbacks.session.EnergySession`; records go to
    ``output_dir`` (default: the Trainer's ``args.output_dir``).

    Runs: every ``train()`` starts a new run (new ``run_id``, totals from zero), even on the same
    Trainer, unless it resumes from a checkpoint (``resume_from_checkpoint=``), which continues
    that run as its next attempt with totals re-derived from its records. ``evaluate()`` /
    ``predict()`` after training continue its run. Besides:

    Args:
        sample_counter: ``batch -> int`` samples in a batch given to ``training_step`` /
            ``prediction_step``; default ``greencallbacks.samples.count_samples`` (the leading
            dimension of a collator's tensors). Given, it also replaces the evaluation loop's own
            ``num_samples``.
        token_counter: ``batch -> int`` tokens in a batch (e.g. ``lambda b: int(b["attention_mask"].sum())``),
            giving ``energy_j_per_token`` for training, evaluation and prediction; replaces HF's
            ``num_input_tokens_seen``. A phase with a batch (on any rank) it fails on (raises, or
            returns no count): ``tokens_counted: false`` and no ``energy_j_per_token``, one warning.
        budget: a ``greencallbacks.Budget``; with ``on_exceed="stop"`` a budget reached (or
            confidently predicted) sets ``control.should_training_stop`` at that epoch's end, so
            the epoch's evaluation and checkpoint still happen; a step log (``step_metrics``)
            that reaches it stops after that step. A resumed run whose budget was
            spent stops after one step (the Trainer reads the flag only after a step).
        embodied: how records bill the hardware's manufacturing footprint (``EnergySession``).
        step_metrics: also log ``energy_kwh_total``, ``co2eq_g_total`` (so far, the epoch in
            progress included) and ``power_w`` (since the previous such log) at every step where the
            Trainer logs or evaluates (``logging_steps``, ``eval_steps``), through ``Trainer.log``;
            no records are added. False: per epoch only.
    """

    def __init__(
        self,
        *,
        country: str | None = None,
        zone: str | None = None,
        region: str | None = None,
        intensity: float | None = None,
        series=None,
        pue: float | None = None,
        output_dir=None,
        run_id: str | None = None,
        gpus="auto",
        cpu_tdp_w: float | None = None,
        extra_sensors=(),
        sensors=None,
        carbon_aware=None,
        budget=None,
        embodied=None,
        sample_counter=None,
        token_counter=None,
        step_metrics: bool = True,
        **unknown: Any,
    ) -> None:
        # Every session argument is named above: anything else is a mistake, said as in the other adapters.
        reject_unknown_arguments(type(self).__name__, unknown, _OWN_ARGUMENTS)
        self._counter = BatchCounter(sample_counter, token_counter)  # checks both are functions or None
        if not isinstance(step_metrics, bool):
            raise ValueError(f"step_metrics must be True or False, got {step_metrics!r}")
        self.step_metrics = step_metrics
        settings = dict(country=country, zone=zone, region=region, intensity=intensity, series=series, pue=pue,
                        output_dir=output_dir, run_id=run_id, gpus=gpus, cpu_tdp_w=cpu_tdp_w)
        self._session_kwargs = dict(**settings, extra_sensors=extra_sensors, sensors=sensors,
                                    carbon_aware=carbon_aware, budget=budget, embodied=embodied,
                                    framework=f"transformers {transformers.__version__}")
        self.session = EnergySession(**self._session_kwargs)  # bad settings fail here, before training
        # What `state()` can put in trainer_state.json for the Trainer to rebuild a copy from.
        settings["output_dir"] = os.fspath(output_dir) if isinstance(output_dir, os.PathLike) else output_dir
        self._settings = {k: v for k, v in settings.items() if _jsonable(v)}
        self._forget_runs()

    def _forget_runs(self) -> None:
        """No Trainer, run or call in progress: a new callback, or a copy of one."""
        self._session_used = False
        self._watch = None
        self._trainer_ref: weakref.ref | None = None  # the Trainer whose hooks run now (weak: see `_trainer`)
        # The last run this callback measured on each Trainer (train(), or evaluate() / predict()
        # alone), which that Trainer's evaluate() / predict() continue, even after another
        # Trainer's (one callback given to two). Weak: a Trainer dropped is not kept alive.
        self._runs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._run: _Run | None = None  # the session's entry in `_runs`
        self._in_train = False
        self._missed_steps = False  # removed from the Trainer's callbacks mid-train: batches went uncounted
        self._epoch: int | None = None
        self._next_epoch: int | None = None
        self._resumes_inside_epoch = False  # this train()'s first epoch skips the steps a checkpoint inside it had trained
        self._begin_at_step = False  # the epoch HF's loop is in begins at its first step, if one comes
        self._pause_due = False  # an epoch of this train() ended: a carbon-aware pause may precede the next
        self._tokens_added: int | None = None  # HF's token count when the open epoch's were last added (None: none open)
        self._tokens_after_last_batch: int | None = None  # HF's token count after the open epoch's last micro-batch (transformers 4)
        self._loops: list[_Loop] = []  # the open evaluation / prediction loops, innermost last
        self._loop_metrics: dict[str, float] = {}

    def __getstate__(self) -> dict:
        # Copied or pickled (another callback's deepcopy, a Trainer pickled whole): the copy has the
        # settings alone. The Trainers, their runs and a call in progress (its meter thread, its
        # watch, its loops' frames) stay with this one, which goes on unaffected.
        blank = object.__new__(type(self))
        EnergyCallback._forget_runs(blank)  # the names of what a copy starts afresh
        return {k: v for k, v in self.__dict__.items() if k != "session" and k not in vars(blank)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.session = EnergySession(**self._session_kwargs)
        self._forget_runs()

    @property
    def _trainer(self) -> Trainer | None:
        # Held weakly: a callback kept after its Trainer is dropped must not keep the model alive.
        return self._trainer_ref() if self._trainer_ref is not None else None

    @_trainer.setter
    def _trainer(self, trainer: Trainer | None) -> None:
        self._trainer_ref = weakref.ref(trainer) if trainer is not None else None

    @property
    def tracker(self):
        return self.session.tracker

    # ------------------------------------------------------------------------------ training
    @never_raises
    def on_init_end(self, args, state, control, **kwargs):
        self._attach(_find_trainer()[0])

    @never_raises
    def on_train_begin(self, args, state, control, **kwargs):
        trainer = _find_trainer()[0]
        if "energy_state" in vars(self):
            # `restore_callback_states_from_checkpoint` swapped the user's instance for a copy of
            # `state()`: give the original (its sensors, the object the user holds) its place back.
            # (Two callbacks with the same settings: each copy takes an original not yet back.) An
            # original whose settings changed since the checkpoint (a corrected grid) is the first
            # one not yet back: HF builds the copies in its callbacks' order, from the saved entries.
            callbacks = trainer.callback_handler.callbacks if trainer is not None else []
            # Those HF replaced (noted as it began), not one the user took out before (remove_callback,
            # then add_callback of another: the one added is the one to measure).
            replaced = trainer.__dict__.get(_REPLACED) if trainer is not None else None
            candidates = _owners(trainer) if replaced is None else replaced
            away = [cb for cb in candidates if cb is not self and cb not in callbacks]
            originals = [cb for cb in away if cb._settings == self._settings] or away
            original = originals[0] if originals else None
            del self.energy_state
            if isinstance(original, EnergyCallback):
                here = callbacks.index(self)
                callbacks[here] = original
                # One added twice had a copy made for each of its places: the later copies with these
                # settings beyond the originals still away stand for it again (removed after this
                # place, the Trainer's iteration over its callbacks is unaffected).
                left = sum(cb is not original and cb._settings == self._settings for cb in away)
                later = [cb for cb in callbacks[here + 1:] if isinstance(cb, EnergyCallback)
                         and "energy_state" in vars(cb) and cb._settings == self._settings]
                for surplus in later[left:]:
                    callbacks.remove(surplus)
                return original.on_train_begin(args, state, control, **kwargs)
            warn("greencallbacks: the Trainer rebuilt EnergyCallback from its checkpoint; it goes on with the "
                 "settings saved there (not sensors=, extra_sensors=, budget=, embodied= or series objects). Pass the callback "
                 "in Trainer(callbacks=[...]) to keep the original.")
        self._attach(trainer)
        _know_collator(self._counter, trainer)
        self._settle()
        self._abort()  # a previous train() that raised without a watch (no frame found) left its run open
        # A train() is a new run unless it resumes from a checkpoint: then the Trainer has loaded
        # the checkpoint's state, global step and our saved entry, and the run goes on.
        siblings = saved_alike(trainer, self)
        saved = saved_entry(self, siblings, state.stateful_callbacks.get(type(self).__name__), state.global_step > 0)
        resumed = state.global_step > 0 and saved is not None
        if self._session_used or resumed:
            self.session = EnergySession(**self._session_kwargs)
        if resumed:
            self.session.load_state_dict(saved.get("attributes", {}).get("energy_state", {}))
        self._run = _Run(self.session)
        if trainer is not None:
            self._runs[trainer] = self._run  # this Trainer's evaluate() / predict() continue it
        if siblings[-1] is self:  # the last of them: every one has read its entry
            complete_saved_entries(state.stateful_callbacks, type(self).__name__, siblings)
        self._in_train = True
        self._missed_steps = False
        self._epoch = None  # until the first epoch begins (an `eval_on_start` evaluation: see _begin_loop)
        # An evaluate() after this train() is at its last epoch; where it runs none (a resume of a
        # finished training), at the checkpoint's, as after the train() that saved it.
        self._run.epoch = _epoch_reached(state)
        # The first epoch's number: 0, or the one a resume starts HF's loop at.
        self._next_epoch, self._resumes_inside_epoch = _first_epoch(trainer, args, state, kwargs.get("train_dataloader"))
        self._begin_at_step = False
        self._pause_due = False
        self._tokens_added = None
        # No exception hook in any transformers version: when train() raises, its frame leaves the
        # stack without on_train_end, and the watch writes the partial phase and stops the meter.
        # Whole: a Ctrl-C between the start and the watch left the run open, its meter running.
        with interrupts.held():
            self._start(args)
            frame = _find_trainer()[1]
            if frame is not None:
                self._watch_loop(frame, state)
        # Enables the run prediction. The Trainer stops at max_steps (which it derives from the
        # epochs when none is given); the epochs it plans are max_steps over a pass, rounded up
        # (the last may be a fraction of one), or sys.maxsize for a data set without a length.
        if state.num_train_epochs and state.num_train_epochs < sys.maxsize:
            self.tracker.planned_epochs = math.ceil(state.num_train_epochs)
        if isinstance(state.max_steps, int) and state.max_steps > 0:
            self.tracker.planned_steps = state.max_steps
        if resumed and self.session.check_budget():
            control.should_training_stop = True  # the checkpoint's budget was already spent

    @never_raises
    def on_epoch_begin(self, args, state, control, **kwargs):
        # Counted from the first epoch HF's loop runs: state.epoch is progress, not a count. Over a
        # data set without a length it runs max_steps to 1.0 (after a 4-step pass of 10 steps it
        # reads 0.4); transformers 4.47 under gradient accumulation ends an epoch short of a whole
        # number (1.8 after two), or makes more steps than it plans, and resumes past it; a resume
        # with another batch size starts where its own steps per epoch put it, not the checkpoint's.
        epoch = self._next_epoch
        if epoch is None or self._missed_steps:
            # No first epoch known (see _first_epoch), or removed from the handler meanwhile, its
            # hooks unseen: as far as state.epoch goes at least.
            epoch = max(int(state.epoch or 0), epoch or 0)
        if self._pause_due:  # before an epoch that follows one, never after the last: billed to the gap
            self._pause_due = False
            self.session.pause_between_epochs()
        # The epoch a resume goes on with from a checkpoint inside it begins at its first step, as
        # in the Lightning adapter: HF skips the steps trained before, over a stream shorter than
        # them all of its batches (it then starts its next pass, or in 4.47 stops), and an epoch
        # begun here left a complete training record of no samples in the new attempt, which the
        # report took for the epoch trained again. The skipping goes to the gap before it.
        at_first_step, self._resumes_inside_epoch = self._resumes_inside_epoch, False
        self._begin_epoch(epoch, state, at_first_step=at_first_step)

    def _begin_epoch(self, epoch: int, state, at_first_step: bool = False) -> None:
        self._epoch, self._next_epoch = epoch, epoch + 1  # a loop inside it is at it, even before its first step
        # Read here: transformers 4.47 adds a micro-batch's tokens before its on_step_begin (none while skipping).
        self._tokens_added = state.num_input_tokens_seen
        self._tokens_after_last_batch = state.num_input_tokens_seen  # transformers 4: see _add_epoch_tokens
        self._begin_at_step = at_first_step
        if not at_first_step:
            self._open_epoch()

    def _open_epoch(self) -> None:
        self._begin_at_step = False
        if self._run is not None:
            self._run.epoch = self._epoch  # an evaluate() after a resume that trained none is at the checkpoint's
        self.tracker.begin("train", epoch=self._epoch)

    def on_step_begin(self, args, state, control, **kwargs):
        # Per optimizer step, before its first micro-batch's training_step (HF skips a resumed
        # epoch's steps without it). One attribute test per step; guarded here (see on_step_end).
        if self._begin_at_step:
            try:
                self._open_epoch()
            except Exception as error:  # noqa: BLE001 - measuring must never break training
                hook_failed(self, "on_step_begin", error)

    def on_step_end(self, args, state, control, **kwargs):
        # DefaultFlowCallback (first in the handler) has just decided whether this step logs or
        # evaluates (`logging_steps`, `eval_steps`): the values so far go out with it, before the
        # evaluation, which gets its own record.
        if not self.session.running:
            return
        try:  # guarded here, not by @never_raises: one frame less at every step (see hook_failed)
            if self._tokens_added is not None and state.num_input_tokens_seen != self._tokens_added:
                self._add_epoch_tokens(state, epoch_over=False)  # before the heartbeat below, or a checkpoint
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "on_step_end", error)
        try:  # apart: on several ranks the step values are a collective, which no rank may skip
            if self.step_metrics and (control.should_log or control.should_evaluate):
                self._log(self.session.live_metrics(), control)  # (their figures write the heartbeat when due)
                if self.session.budget_stops_training:  # every rank alike: the Trainer ends after this step's log, evaluation, save
                    control.should_training_stop = True
            else:
                # The open phases for a resume after a kill, once a minute (`Tracker.heartbeat`):
                # logging steps alone come every 500 steps by default, an hour apart on a large model.
                self.tracker.heartbeat()
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "on_step_end", error)

    @never_raises
    def on_epoch_end(self, args, state, control, **kwargs):
        if self._missed_steps:  # added back at this epoch's last step: it ends as it was seen to
            self._back_in(state, epoch_ended=False)
        self._begin_at_step = False  # a resumed epoch with no step left: no record (nothing trained)
        self._add_epoch_tokens(state)
        record = self.tracker.end("train", step=state.global_step)
        if record is None:
            return None
        if self.session.check_budget():
            control.should_training_stop = True  # the Trainer still evaluates and saves this epoch, then ends
        self._log(self.session.metrics("train"), control)
        self._pause_due = True  # carbon-aware, if configured: before the next epoch, if one follows

    def _add_epoch_tokens(self, state, epoch_over: bool = True, crashed: bool = False) -> None:
        """The open epoch's tokens (HF's count) since they were last added: at each step's end, so
        that a heartbeat or checkpoint of the open epoch holds them (a resume after a kill carries
        them), and a crash on several ranks inside an evaluation, whose write-up cannot reach the
        epoch's phase under the loop's, loses none; and at the epoch's end, or at the write-up of a
        crash inside it (``epoch_over``), for the micro-batches of a step not yet ended.

        ``crashed``: transformers 4 adds a micro-batch's tokens to its count before the step's
        ``on_step_begin`` and ``training_step``: where either raised (a forward that fails, an
        out-of-memory error, a callback, Ctrl-C), that batch never trained, and its tokens stay out,
        as its samples do (transformers 5 adds them once ``training_step`` returned)."""
        if self._tokens_added is None:
            return
        seen = state.num_input_tokens_seen
        if crashed and not _TOKENS_COUNTED_AFTER_STEP and self._tokens_after_last_batch is not None:
            seen = min(seen, self._tokens_after_last_batch)
        tokens, self._tokens_added = seen - self._tokens_added, None if epoch_over else seen
        if tokens > 0 and self.tracker.reducer.rank == 0 and self._counter.token_counter is None:  # summed over ranks
            self.tracker.add_samples(0, tokens=tokens)

    @never_raises
    def _back_in(self, state, epoch_ended: bool) -> None:
        """Removed from the Trainer's callbacks mid-train (``remove_callback``) and added back: the
        batches run meanwhile went uncounted, and where the epoch it began has ended unseen
        (``epoch_ended``), that epoch's record is cut short there (partial) and the epoch now
        running is measured from here."""
        self._missed_steps = False
        if self._begin_at_step:  # its first step ran while it was out (on_step_begin unseen)
            self._open_epoch()
        self.tracker.add_samples(None)  # this epoch's count misses the batches run while it was out
        if epoch_ended:
            self._add_epoch_tokens(state)
            self.tracker.end("train", step=state.global_step, partial=True)
            self._begin_epoch(int(state.epoch), state)
            self.tracker.add_samples(None)  # its first batches ran unseen

    @never_raises
    def on_train_end(self, args, state, control, **kwargs):
        self._in_train = False
        if watch.calling_frame(lambda f: f.f_code.co_name == "_report_to_hp_search") is not None:
            # An Optuna trial its pruner stops: HF calls on_train_end there, then raises TrialPruned
            # out of train(). Cut short, as the trial Lightning's pruning callback stops by raising;
            # ended as finished, it read as a whole training of fewer epochs, pooled with those.
            self._abort(state=state)
            return
        self._end_call()

    # ------------------------------------------------------------------ evaluation, prediction
    @never_raises
    def on_prediction_step(self, args, state, control, **kwargs):
        if self._loops:  # the loop wrapper measures this loop (the per-batch path: keep it cheap)
            self.tracker.heartbeat()  # as at a training step: a long evaluation has no logging steps
            return
        # This loop began before the callback knew the trainer (add_callback, then evaluate or
        # predict without training): measure it from here (its first batch goes to the gap
        # before it), and wrap the loops that follow.
        trainer, frame = _find_trainer()
        if trainer is not None:
            if self in _owners(trainer) and trainer.__dict__.get(_LOOPS_WRAPPED):
                return  # its wrapper is in charge (and failed to begin; it warned)
            self._attach(trainer)
        loop_arguments = frame.f_locals if frame is not None and frame.f_code.co_name in _LOOPS else {}
        description = loop_arguments.get("description")
        if description is None and trainer is not None:  # no known loop method: is the public predict() running?
            predicting = watch.calling_frame(lambda f: f.f_code.co_name == "predict" and f.f_locals.get("self") is trainer)
            description = "Prediction" if predicting is not None else "Evaluation"
        loop = self._begin_loop(description, loop_arguments.get("metric_key_prefix"), args, trainer)
        loop.hooked, loop.hooked_in, loop.dataloader = True, _frames_from(frame), kwargs.get("eval_dataloader")
        # The first batch ran before prediction_step was wrapped: count it from the loop's own
        # variable (uncounted where there is none: a release whose loop names it otherwise).
        batch = loop_arguments.get("inputs")
        samples, tokens = (self._count_prediction_batch(batch) if batch is not None
                           else (None, None if self._counter.token_counter else 0))
        self._count_batch(samples, tokens)

    @never_raises
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._finish_hooked_loop(metrics, state, control)
        self._loop_metrics = {}
        if not self._in_train and not self._loops:
            self._end_call()  # evaluate() got this far (and ran inside no other loop): it no longer needs watching

    @never_raises
    def on_predict(self, args, state, control, metrics=None, **kwargs):
        # HF returns predict metrics but logs none. Reporters that log them in their own on_predict
        # (W&B, Trackio, Comet, SwanLab) have them in `metrics` already: the log skips them.
        if not self._finish_hooked_loop(metrics, state, control, predict=True):
            self._log(self._loop_metrics, control, skip=self._logging_on_predict())
        self._loop_metrics = {}
        if not self._in_train and not self._loops:
            self._end_call()

    # ------------------------------------------------------------------------ checkpointing
    @never_raises
    def on_save(self, args, state, control, **kwargs):
        # The Trainer asks state() on the process that saves alone: each other rank writes its part
        # of the open phases beside the checkpoint (Tracker.state_dict), for a resume after a kill.
        if self.session.running and self.tracker.reducer.rank > 0:
            self.tracker.state_dict()

    def state(self) -> dict:
        # The Trainer calls this outside any hook: building its TrainerState (at every train(),
        # and again when auto_find_batch_size retries after an out-of-memory error) and at every
        # checkpoint. It must not raise either.
        try:
            self._settle()
            return {"args": self._settings, "attributes": {"energy_state": self.session.state_dict()}}
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, "state", error)
            return {"args": self._settings, "attributes": {}}

    # ---------------------------------------------------------------------------- internals
    def _attach(self, trainer: Trainer | None) -> None:
        if trainer is None:
            warn("greencallbacks: EnergyCallback could not find its Trainer; energy goes to the records only.")
            return
        self._trainer = trainer
        _keep_once(trainer.callback_handler.callbacks, self)
        first = _OWNERS not in trainer.__dict__
        owners = trainer.__dict__.setdefault(_OWNERS, [])
        if self not in owners:
            if any(owner in trainer.callback_handler.callbacks for owner in owners):
                # HF merges each loop's metrics into one dict.
                warn_two_callbacks("Trainer", "one's evaluation values overwrite the other's")
            owners.append(self)  # each measures everything, into its own records
        if first:
            _wrap_trainer(trainer)
        _keep_out_of_default_objective(trainer)  # hyperparameter_search sets it before each trial's train()

    def _start(self, args) -> None:
        if self.session.running:
            return
        self._session_used = True
        device_indices, sync = _devices_and_sync(args)
        self.session.start(output_dir=args.output_dir, device_indices=device_indices,
                           reducer=torch_reducer_or_local(args.world_size), sync=sync)
        atexit.register(self._abort_at_exit)

    def _abort_at_exit(self) -> None:
        if self.tracker.in_a_forked_child:
            return  # a forked child's exit (a user's os.fork): the run, and its records, are its parent's
        # The failing call's watch holds its TrainerState (the step it failed at): fire it rather
        # than cancel it. (This handler was registered after watch's own, so it runs first.)
        if self._watch is not None:
            self._watch.fire()
        self._abort()

    def _end_call(self) -> None:
        """train(), or evaluate() / predict() alone, ended: stop watching it and stop its run.
        Whole: a Ctrl-C after the watch was cancelled, before the run stopped, left the meter
        thread running and the summary stale, with nothing left to write them up."""
        with interrupts.held():
            self._cancel_watch()
            self._stop()

    def _stop(self) -> None:
        self._loops = []
        if self.session.running:
            atexit.unregister(self._abort_at_exit)
            self.session.stop()

    def _cancel_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _settle(self) -> None:
        """Finish writing up a train() loop that raised before the session is used again.

        The watch notices such a loop within ``watch.POLL_S``, from its own thread, and may be
        stopping the session at this moment: the Trainer goes on at once when it retries the
        loop itself (``auto_find_batch_size`` after an out-of-memory error), or the user calls
        ``evaluate()``. Firing here runs the write-up on this thread, or waits for the watch
        thread's to finish.
        """
        handle = self._watch
        if handle is not None and handle.ended():
            handle.fire()

    def _watch_loop(self, frame, state) -> None:
        """Abort the run once ``frame`` (``train()``, or a standalone ``evaluate()`` / ``predict()``)
        leaves the stack without its end hook; ``state``: that call's TrainerState (its step)."""
        def loop_gone() -> None:
            # On the watch thread, holding the watch's lock: `_settle` and `_cancel_watch` on the
            # training thread wait for this write-up, so the watch is let go only once it is done.
            self._abort(cancel_watch=False, state=state)
            if self._watch is handle:
                self._watch = None

        self._cancel_watch()
        handle = watch.watch(frame, loop_gone)
        self._watch = handle

    def _abort(self, cancel_watch: bool = True, state=None) -> None:
        """The run is failing: write what was measured (unfinished phases as partial), stop the thread.

        ``state``: the failing call's TrainerState, whose ``global_step`` the partial records carry
        (the tracker's step is otherwise the last epoch end's)."""
        if cancel_watch:
            self._cancel_watch()  # waits for a write-up the watch thread has begun, and stops a later one
        self._in_train = False
        loops_open, self._loops = bool(self._loops), []
        try:
            if self.session.running:
                atexit.unregister(self._abort_at_exit)
                if state is not None:
                    self.tracker.step = state.global_step
                    if not loops_open:  # the innermost open phase is the epoch cut short, if one is
                        self._add_epoch_tokens(state, crashed=True)
                if self._missed_steps:  # removed mid-train (remove_callback) and never added back
                    self._missed_steps = False
                    self.tracker.add_samples(None)  # the batches run since went uncounted
                self.session.stop(failed=True)
        except Exception as error:  # noqa: BLE001 - the run is already failing
            warn(f"greencallbacks: could not write the energy of the failed run ({error!r}).")

    def _begin_loop(self, description: str | None, prefix: str | None, args, trainer: Trainer | None) -> _Loop:
        self._settle()
        if trainer is not None and not self.session.running:
            # evaluate() / predict() alone continue this Trainer's last run with this callback, even
            # after another Trainer's (one callback given to two); on a Trainer it measured nothing
            # on, they are a run of their own (not the other's, in the other's output_dir).
            run = self._runs.get(trainer)
            if run is None:
                if self._session_used:
                    self.session = EnergySession(**self._session_kwargs)
                run = self._runs[trainer] = _Run(self.session)
            self._run, self.session, self._epoch = run, run.session, run.epoch
            self._next_epoch = None
        if trainer is not None:
            _know_collator(self._counter, trainer)
        # Whole, up to the watch of a standalone call: a Ctrl-C between left its run open.
        with interrupts.held():
            self._start(args)  # no-op inside train(); evaluate()/predict() alone make a run of their own
            phase = "predict" if description == "Prediction" else "validation"
            # A loop before a train()'s first epoch (`eval_on_start`) is at the epoch the run reached:
            # none on a new training, the checkpoint's on a resume (as an evaluate() after it is).
            epoch = self._epoch if self._epoch is not None or self._run is None else self._run.epoch
            # Each metric_key_prefix (eval, eval_<data set>, test) totals its own loops.
            self.tracker.begin(phase, epoch=epoch, metric_prefix=prefix)
            # Loops nest (compute_metrics, or a callback's on_prediction_step, calling evaluate() or
            # predict()): the tracker nests their phases, each loop here ends its own.
            loop = _Loop(phase, prefix)
            self._loops.append(loop)
            if not self._in_train and trainer is not None and len(self._loops) == 1:
                # A standalone evaluate() / predict() can raise after its loop (a reporter failing in
                # on_log) and never reach on_evaluate / on_predict: stop the run when it leaves the stack,
                # rather than billing the idle time until the next call as a gap of this run. (A loop
                # inside it is covered by that watch: its own call would end the run with it.)
                frame = watch.calling_frame(
                    lambda f: f.f_code.co_name in ("evaluate", "predict") and f.f_locals.get("self") is trainer)
                if frame is not None:
                    self._watch_loop(frame, trainer.state)
        return loop

    @never_raises  # inside the loop's except: the exception on its way out stays the user's
    def _loop_raised(self, loop: _Loop | None, state) -> None:
        """A measured loop raised. Inside a watched train() or another loop, the caller may catch it
        and go on (a callback's own ``evaluate()``, a ``predict()`` in ``compute_metrics``, in
        try/except): the loop alone is cut short (partial) and the run goes on; where the exception
        leaves the watched call, its watch writes the run up as for any crash. An outermost
        standalone ``evaluate()`` / ``predict()`` fails the run here at once, and so does any loop
        on several ranks: ending its phase is a collective, which the other ranks may never join."""
        inside = self._in_train or (loop is not None and bool(self._loops) and self._loops[0] is not loop)
        if loop is None or not inside or self._watch is None or self.tracker.reducer.world_size > 1:
            self._abort(state=state)
        elif any(open_loop is loop for open_loop in self._loops):
            while self._loops.pop() is not loop:
                pass
            self.tracker.end(loop.phase, step=state.global_step, metric_prefix=loop.prefix, partial=True)

    def _count_prediction_batch(self, batch: Any) -> tuple[int | None, int | None]:
        """(samples, tokens) of an evaluation or prediction batch. On several ranks the loop counts the
        data set's samples (``_loop_samples``: HF's count), which leaves out those Accelerate repeats
        to complete the last batch; its tokens are those samples' too: with the repeats' tokens, 10
        samples of 8 tokens had 128 (6 repeats), a cost per token 10/16 of the true one. A last batch
        that cannot be cut to its samples that are no repeats counts no tokens (``tokens_counted: false``).
        The ``token_counter`` runs once per batch, on the whole batch or on that cut (it may be costly)."""
        counter, reducer, run_id = self._counter, self.tracker.reducer, self.tracker.run_id
        if counter.token_counter is None or counter.custom_samples or reducer.world_size == 1:
            return counter.count(batch, run_id)  # (a sample_counter counts the repeats, as their tokens are)
        kept = _samples_not_repeated(self._loops[-1].dataloader, reducer.rank, reducer.world_size)
        if kept is None:
            return counter.count(batch, run_id)
        samples = counter.count_samples(batch, run_id)
        part = _first_samples(batch, samples, kept) if samples is not None else None
        return samples, counter.count_tokens(part, run_id) if part is not None else None

    def _count_batch(self, samples: int | None, tokens: int | None) -> None:
        """One completed ``prediction_step``'s batch, for the innermost open loop."""
        self.tracker.add_samples(samples, tokens=tokens)
        if self._loops:
            loop = self._loops[-1]
            loop.batches += 1
            loop.all_counted = loop.all_counted and samples is not None

    def _end_loop(self, loop: _Loop, whole_data_set: int | None, state) -> dict[str, float]:
        """End ``loop`` (and any loop left open inside it); ``whole_data_set``: HF's count, all
        ranks together, where it is the samples the loop ran (see ``_samples_run``), else None."""
        if not any(open_loop is loop for open_loop in self._loops):
            return {}  # the run stopped or failed since it began
        while self._loops.pop() is not loop:
            pass
        samples = self._loop_samples(loop, whole_data_set)
        if self.tracker.end(loop.phase, samples=samples, step=state.global_step, metric_prefix=loop.prefix) is None:
            return {}
        # HF names a loop's metrics `{prefix}_...` whatever the prefix, "" included (`_loss`): ours
        # follow, so an empty prefix never logs under the training names.
        return self.session.metrics(loop.phase, prefix=f"{loop.prefix}_" if loop.prefix is not None else "")

    def _loop_samples(self, loop: _Loop, whole_data_set: int | None) -> int | None:
        """The samples to record for a completed loop; None: the batches counted as it went.

        Those batches, where every one of them was counted: exactly what the model ran, whatever
        the sampler, the stream or drop_last. HF's count (the data set's length) only where it is
        known to be the samples run and the count is incomplete (a packed batch that cannot be
        counted, a loop's first batch that was not seen), or on several ranks, where each rank's
        batches hold the samples Accelerate repeats to keep them in step (HF's count leaves them
        out; where it is unknown, the repeats are counted: they cost energy, as in training)."""
        if self._counter.custom_samples:
            return None  # the user's sample_counter, applied to every prediction_step's batch
        if whole_data_set is None:
            return None  # the batches counted are all there is
        if self.tracker.reducer.world_size > 1:
            return whole_data_set if self.tracker.reducer.rank == 0 else 0  # HF's count covers all ranks
        return None if loop.batches and loop.all_counted else whole_data_set

    def _finish_hooked_loop(self, metrics, state, control, predict: bool = False) -> bool:
        """End a loop begun at its first ``on_prediction_step``; its values go into HF's metrics and the log.

        Samples: the batches counted, the first one from the loop's frame, or the data set's
        length as ``_loop_samples`` says."""
        loop = self._loops[-1] if self._loops else None
        if loop is None or not loop.hooked or metrics is None:
            return False  # a wrapped loop, ended in its wrapper
        whose = _whose_hook(loop.hooked_in)
        if whose != "this":
            if whose == "gone":  # it returned without its hook (evaluation_loop called directly)
                self._loops.pop()  # its record stays open, written as partial when the run stops
            return False
        if loop.prefix is None:  # HF names every metric `{prefix}_...` and always adds `{prefix}_runtime`
            loop.prefix = next((k[: -len("_runtime")] for k in metrics if k.endswith("_runtime")), "")
        values = _finite(self._end_loop(loop, _samples_run(loop.dataloader), state))
        _merge(self._trainer, metrics, values)
        # on_predict: the callbacks after this one see `metrics` with the values in their own on_predict.
        self._log(values, control, skip=self._logging_on_predict(after_self=True) if predict else ())
        return True

    def _logging_on_predict(self, after_self: bool = False) -> list:
        """The Trainer's callbacks with an ``on_predict`` of their own (reporters log predict()'s
        metrics there; ``after_self``: only those HF calls after this one)."""
        callbacks = self._trainer.callback_handler.callbacks if self._trainer is not None else []
        if after_self and self in callbacks:
            callbacks = callbacks[callbacks.index(self) + 1:]
        return [cb for cb in callbacks if cb is not self and type(cb).on_predict is not TrainerCallback.on_predict]

    def _log(self, metrics: dict[str, float], control, skip=()):
        """Send ``metrics`` through ``Trainer.log``: every ``report_to`` reporter and ``log_history``
        (but the callbacks in ``skip``, which receive them otherwise).

        The base class's ``log``, not an override's: TRL's trainers override it to add the metrics
        they collected since their last log (``mean_token_accuracy``, ``entropy``) to whatever is
        logged, and clear them, so an energy entry took what the next loss entry should have had.
        """
        values = _finite(metrics)
        if self._trainer is None or not values:
            return control
        should_log = control.should_log
        handler = self._trainer.callback_handler
        callbacks = handler.callbacks
        try:
            if skip:
                handler.callbacks = [cb for cb in callbacks if cb not in skip]
            log = Trainer.log if isinstance(self._trainer, Trainer) else type(self._trainer).log
            log(self._trainer, values)
        finally:
            handler.callbacks = callbacks
            control.should_log = should_log  # `CallbackHandler.on_log` cleared it; the Trainer's own log is still due
        return control


_OWN_ARGUMENTS = keyword_names(EnergyCallback.__init__)

# The methods that run an evaluation or prediction loop (`prediction_loop`: transformers < 5).
_LOOPS = ("evaluation_loop", "prediction_loop")


def _devices_and_sync(args) -> tuple[list[int], Callable[[], None] | None]:
    """The CUDA devices the Trainer trains on, and a function that waits for their work.

    One process on a machine with several GPUs (``python train.py``, no launcher) makes Trainer
    wrap the model in ``nn.DataParallel`` over all ``args.n_gpu`` visible GPUs, while
    ``args.device`` names only the first (cuda:0): every one of them is measured. Distributed
    (torchrun, DDP) processes have ``n_gpu`` 1 each and train on ``args.device`` alone.
    """
    import torch

    device_indices, sync = device_and_sync(args.device)
    n_gpu = getattr(args, "n_gpu", 1)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if device_indices and isinstance(n_gpu, int) and n_gpu > 1 and not distributed:
        # DataParallel's default device_ids: range(torch.cuda.device_count()), which n_gpu is.
        device_indices = list(range(n_gpu))

        def sync() -> None:
            for index in device_indices:
                torch.cuda.synchronize(index)

    return device_indices, sync


def _wrap_trainer(trainer: Trainer) -> None:
    """Wrap a few methods of this Trainer instance (not its class) to see what no hook shows.

    The wrappers are objects of the classes below, not closures, so that a Trainer that pickled
    before the callback saw it still pickles (and a deep copy's wrappers run the copy)."""
    trainer.training_step = _CountingTrainingStep(trainer, "training_step")
    trainer.prediction_step = _CountingPredictionStep(trainer, "prediction_step")
    prepares = getattr(type(trainer), "_prepare_inputs", None)
    if prepares is not None and prepares is not getattr(Trainer, "_prepare_inputs", None):
        trainer._prepare_inputs = _CountingPreparedInputs(trainer, "_prepare_inputs")
    if hasattr(trainer, "_load_callback_state"):
        trainer._load_callback_state = _NotingReplacedCallbacks(trainer, "_load_callback_state")
    wrapped = [name for name in _LOOPS if hasattr(trainer, name)]
    for name in wrapped:
        setattr(trainer, name, _MeasuredLoop(trainer, name))
    trainer.__dict__[_LOOPS_WRAPPED] = bool(wrapped)
    if not wrapped:
        # A release that renamed them: every loop is then measured from its first batch's
        # on_prediction_step to on_evaluate / on_predict, as one begun before add_callback is.
        warn(
            f"greencallbacks: this transformers version has no Trainer.{' / '.join(_LOOPS)} to measure "
            "evaluation and prediction exactly; each loop is measured from its first batch instead (that "
            "batch is billed to the time before it). Values are logged as usual."
        )


class _Wrapper:
    """Stands for a method of one Trainer instance, set on that instance under the method's name."""

    def __init__(self, trainer: Trainer, name: str) -> None:
        method = getattr(trainer, name)
        self.trainer = trainer
        # The Trainer's own method is kept as its function: pickled by name (a bound method pickles
        # as getattr(trainer, name), which a Trainer rebuilt from its pickle answers with this wrapper).
        self.bound = getattr(method, "__self__", None) is trainer and hasattr(method, "__func__")
        self.inner = method.__func__ if self.bound else method
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):  # as functools.wraps
            if hasattr(method, attribute):
                setattr(self, attribute, getattr(method, attribute))

    @property
    def __wrapped__(self):  # inspect.signature follows it, as it did functools.wraps'
        return self.inner.__get__(self.trainer) if self.bound else self.inner

    def _inner(self, *args, **kwargs):
        return self.inner(self.trainer, *args, **kwargs) if self.bound else self.inner(*args, **kwargs)

    def _owners(self) -> list[EnergyCallback]:
        # Only those still in the handler: one removed by remove_callback / pop_callback stops measuring.
        callbacks = self.trainer.callback_handler.callbacks
        return [c for c in _owners(self.trainer) if c in callbacks]


# transformers 5 adds a micro-batch's tokens to `state.num_input_tokens_seen` after its training_step
# returned (`Trainer._track_num_input_tokens`); 4.x added them before calling it.
_TOKENS_COUNTED_AFTER_STEP = hasattr(Trainer, "_track_num_input_tokens")


class _CountingTrainingStep(_Wrapper):
    # Where the Trainer's class prepares its own micro-batches (see _CountingPreparedInputs): each
    # owner's (tracker, count) of the batches _prepare_inputs returned in the step running; else None.
    prepared: list | None = None

    def __call__(self, model, inputs, *args, **kwargs):
        # Counted before the step (a shape lookup, no device sync; the step may consume the
        # batch), added after it returned: a batch that raised is not counted.
        callbacks = self.trainer.callback_handler.callbacks
        owners = []
        for c in _owners(self.trainer):
            if c not in callbacks:
                c._missed_steps = c._in_train  # removed mid-train (remove_callback): this batch goes uncounted
            else:
                if c._missed_steps:  # added back: the Trainer's epoch may have moved on meanwhile
                    c._back_in(self.trainer.state, epoch_ended=c._epoch is not None
                               and int(self.trainer.state.epoch or 0) > c._epoch)
                owners.append(c)
        preparing = isinstance(self.trainer.__dict__.get("_prepare_inputs"), _CountingPreparedInputs)
        counts = [] if preparing else [(c.tracker, c._counter.count(inputs, c.tracker.run_id)) for c in owners]
        self.prepared = [] if preparing else None
        try:
            loss = self._inner(model, inputs, *args, **kwargs)
        finally:
            prepared, self.prepared = self.prepared, None
        if preparing:
            # The batch the step trained on, if it prepared one; else (a step of the user's) the one it was given.
            counts = prepared if len(prepared) == len(owners) else [
                (c.tracker, c._counter.count(inputs, c.tracker.run_id)) for c in owners]
        for tracker, (samples, tokens) in counts:
            tracker.add_samples(samples, tokens=tokens)
        if not _TOKENS_COUNTED_AFTER_STEP:  # (this batch's tokens are in HF's count already: see _add_epoch_tokens)
            for c in _owners(self.trainer):
                c._tokens_after_last_batch = self.trainer.state.num_input_tokens_seen
        return loss


class _CountingPreparedInputs(_Wrapper):
    """A Trainer class's own ``_prepare_inputs``, which may make the micro-batch trained from another
    batch: TRL's GRPO and RLOO give ``training_step`` a generation batch of ``steps_per_generation``
    micro-batches (the gradient accumulation steps, by default), generate for it once, and train each
    step on the slice this returns. Counted as given, each step counted them all (4 times the
    completions trained at 4 accumulation steps). The slice is counted as it is returned (the
    step may consume it), once per step."""

    def __call__(self, *args, **kwargs):
        batch = self._inner(*args, **kwargs)
        step = self.trainer.__dict__.get("training_step")
        if isinstance(step, _CountingTrainingStep) and step.prepared == []:  # the step's first: a second is no micro-batch
            step.prepared = [(c.tracker, c._counter.count(batch, c.tracker.run_id)) for c in self._owners()]
        return batch


class _CountingPredictionStep(_Wrapper):
    def __call__(self, model, inputs, *args, **kwargs):
        # Per batch, so that a loop that raises leaves the batches it completed in its partial record.
        counts = [(c, c._count_prediction_batch(inputs)) for c in self._owners() if c._loops]
        output = self._inner(model, inputs, *args, **kwargs)
        for callback, (samples, tokens) in counts:
            callback._count_batch(samples, tokens)
        return output


class _NotingReplacedCallbacks(_Wrapper):
    def __call__(self, *args, **kwargs):
        # HF removes each callback it rebuilds from the checkpoint and drops it: the copies give
        # their places back to these, which may never have run a hook (add_callback just before).
        callbacks = self.trainer.callback_handler.callbacks
        self.trainer.__dict__[_REPLACED] = [cb for cb in callbacks if isinstance(cb, EnergyCallback)]
        return self._inner(*args, **kwargs)


def _keep_once(callbacks: list, callback: EnergyCallback) -> None:
    """Leave ``callback`` once in the Trainer's ``callbacks``, where it was added again
    (``Trainer(callbacks=[...])`` then ``add_callback``, or a notebook cell run twice; HF only
    warns): each hook would run twice, beginning every epoch twice (four records for two epochs,
    numbered 0 to 3) and logging every value twice. Called from a hook of its first place: the
    Trainer, iterating this list, then calls the others once each."""
    places = [i for i, cb in enumerate(callbacks) if cb is callback]
    if len(places) > 1:
        callbacks[places[0] + 1:] = [cb for cb in callbacks[places[0] + 1:] if cb is not callback]
        warn("greencallbacks: this EnergyCallback was added to the Trainer more than once; it is kept once "
             "(each of its hooks would have run twice).")


def _merge(trainer: Trainer | None, metrics: dict, values: dict[str, float]) -> None:
    """Put a loop's values into HF's metrics dict, noting their names on the Trainer."""
    metrics.update(values)
    if trainer is not None:
        trainer.__dict__.setdefault(_MERGED, set()).update(values)


def _keep_out_of_default_objective(trainer: Trainer) -> None:
    """Where the Trainer's ``compute_objective`` is HF's ``default_compute_objective`` (set by
    ``hyperparameter_search`` when given none), wrap it on the instance to score the metrics
    without the names the callbacks merged: that default sums every metric but the loss."""
    # The name hyperparameter_search assigns from (transformers.trainer's import of it).
    default = getattr(sys.modules.get(Trainer.__module__), "default_compute_objective", None)
    objective = trainer.__dict__.get("compute_objective")
    if default is None or objective is not default:
        return  # no search, the user's own objective, or already wrapped
    trainer.__dict__.setdefault(_MERGED, set())
    trainer.compute_objective = _ObjectiveWithoutEnergy(trainer, "compute_objective")


class _ObjectiveWithoutEnergy(_Wrapper):
    def __call__(self, metrics):
        merged = self.trainer.__dict__.get(_MERGED, ())
        return self._inner({k: v for k, v in metrics.items() if k not in merged})


class _MeasuredLoop(_Wrapper):
    """An evaluation or prediction loop method, measured for the Trainer's callbacks."""

    def __init__(self, trainer: Trainer, name: str) -> None:
        super().__init__(trainer, name)
        self.name = name
        self.warned = False

    def signatures(self) -> list:
        """Those of the method called (maybe a subclass's override, ``*args, **kwargs``) and of
        Trainer's own, whose parameter names and defaults its callers (evaluate, predict) follow.
        Read at each loop (tens of microseconds), not kept: the wrapper pickles with its Trainer."""
        methods = [self.__wrapped__]
        if getattr(Trainer, self.name, None) is not None:
            methods.append(getattr(Trainer, self.name).__get__(self.trainer))
        signatures = []
        for method in methods:
            try:
                signatures.append(inspect.signature(method))
            except (TypeError, ValueError):
                pass  # none readable: every loop runs unmeasured, with the warning below
        return signatures

    def __call__(self, *args, **kwargs):
        trainer = self.trainer
        callbacks = self._owners()
        if not callbacks:
            return self._inner(*args, **kwargs)
        try:
            description, prefix, dataloader = _loop_arguments(self.signatures(), args, kwargs)
        except Exception as error:  # noqa: BLE001 - never break evaluation: run it unmeasured
            if not self.warned:
                self.warned = True
                warn(f"greencallbacks: could not read the arguments of {type(trainer).__name__}.{self.name} "
                     f"({error!r}); its evaluation and prediction loops are not measured.")
            return self._inner(*args, **kwargs)
        began = []
        for callback in callbacks:
            try:
                callback._trainer = trainer  # a callback shared by two Trainers: this loop is this one's
                loop = callback._begin_loop(description, prefix, trainer.args, trainer)
                loop.dataloader = dataloader  # where its last batch's repeats are told (see _samples_not_repeated)
                began.append((callback, loop))
            except Exception as error:  # noqa: BLE001
                warn(f"greencallbacks: could not begin measuring {prefix} ({error!r}).")
        try:
            output = self._inner(*args, **kwargs)
        except BaseException:
            opened = dict((id(callback), loop) for callback, loop in began)
            for callback in callbacks:
                callback._loop_raised(opened.get(id(callback)), trainer.state)
            raise
        for callback, opened in began:
            try:
                values = _finite(callback._end_loop(opened, _samples_run(dataloader), trainer.state))
                _merge(trainer, output.metrics, values)  # evaluate() logs and returns them; predict() returns them
                callback._loop_metrics = values
            except Exception as error:  # noqa: BLE001
                warn(f"greencallbacks: could not measure {prefix} ({error!r}).")
        return output


def _samples_run(dataloader) -> int | None:
    """The samples a loop over ``dataloader`` runs, from its data set's length (HF's own
    ``num_samples``), where the batches hold each sample once: torch's ``BatchSampler`` without
    ``drop_last`` (maybe in Accelerate's shard, whose repeats to keep ranks in step this count
    leaves out) over a sequential, random or length-grouped sampler of the whole data set. Else
    None: a subset's sampler, a batch sampler of its own, a stream, or dropped batches make the
    length another number than the samples the model ran."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    dataset = getattr(dataloader, "dataset", None)
    if not _has_length(dataset):
        return None
    batches = getattr(dataloader, "batch_sampler", None)
    batches = getattr(batches, "batch_sampler", batches)  # Accelerate's BatchSamplerShard wraps the loader's own
    if type(batches) is not BatchSampler or batches.drop_last:
        return None
    sampler = batches.sampler
    if not isinstance(sampler, (SequentialSampler, RandomSampler, LengthGroupedSampler)) or len(sampler) != len(dataset):
        return None  # RandomSampler(num_samples=...) draws another number
    return len(dataset)


def _samples_not_repeated(dataloader, rank: int, world_size: int) -> int | None:
    """How many of this rank's samples in the batch now yielded by Accelerate's ``dataloader`` are no
    repeats, where that is its last and HF's count of the loop's samples (``_samples_run``) leaves
    repeats out; None where every sample of the batch counts. Accelerate completes the last batch
    of each rank with samples from the data set's start, and its ``gather_for_metrics`` keeps the
    first ``remainder`` (the data set's length modulo the batch of all ranks) of the ranks' batches
    in rank order: so does this."""
    if getattr(dataloader, "end_of_dataloader", False) is not True:
        return None
    remainder, total = getattr(dataloader, "remainder", -1), getattr(dataloader, "total_batch_size", None)
    if not (isinstance(remainder, int) and isinstance(total, int) and remainder > 0 and total % world_size == 0):
        return None
    if _samples_run(dataloader) is None:
        return None  # the loop counts its batches, repeats and all
    per_rank = total // world_size
    kept = max(0, min(per_rank, remainder - rank * per_rank))
    return kept if kept < per_rank else None


def _first_samples(batch: Any, samples: int, kept: int) -> Any:
    """The first ``kept`` of a batch of ``samples``: a mapping (HF's inputs) whose values are
    tensors or lists of that many rows, mappings of such, or values of no rows (a scalar, a
    string); None for any other batch. Each mapping keeps its type: a ``token_counter`` that reads
    a ``BatchEncoding``'s attributes (``batch.attention_mask``) failed on a plain dict, and the
    whole evaluation said ``tokens_counted: false``."""
    if not isinstance(batch, Mapping):
        return None
    part = _first_rows(batch, samples, kept)
    return None if part is _NOT_CUT else part


_NOT_CUT = object()  # a value whose rows are not the batch's samples


def _first_rows(value: Any, samples: int, kept: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value
        return value[:kept] if value.shape[0] == samples else _NOT_CUT
    if isinstance(value, (list, tuple)):  # a collator's per-sample list (ids, texts)
        return value[:kept] if len(value) == samples else _NOT_CUT
    if isinstance(value, Mapping):
        part = {}
        for key, item in value.items():
            part[key] = _first_rows(item, samples, kept)
            if part[key] is _NOT_CUT:
                return _NOT_CUT
        try:
            return type(value)(part)  # a BatchEncoding stays one, as HF's _prepare_input keeps it
        except Exception:  # noqa: BLE001 - a mapping not built from a dict
            return part
    return value  # no rows: a scalar, a string


def _has_length(dataset) -> bool:
    """Whether ``len(dataset)`` answers (as HF's ``has_length``: a torch ``IterableDataset`` raises)."""
    try:
        return dataset is not None and len(dataset) is not None
    except (TypeError, AttributeError, NotImplementedError):
        return False


# TRL's preference collators, and two pairs each takes (DPO's and the reward model's: token ids;
# DPO's vision collator: texts, which its processor tokenizes, and no image).
_PAIR_COLLATORS = {
    "DataCollatorForPreference": lambda: {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]},
    "DataCollatorForVisionPreference": lambda: {"images": [], "prompt": "a", "chosen": "b", "rejected": "c"},
}


def _rows_per_pair(collator: Any) -> int:
    """2 where ``collator`` is a TRL preference collator (DPO's, the reward model's, DPO's vision
    one) that stacks each pair's chosen and rejected sequences into one ``input_ids`` (TRL 1.x):
    counted as rows, 10 pairs were 20 samples, where HF's own count (and ours on several ranks:
    the data set's length) gives 10. Else 1: older TRL's collator of that name keeps chosen and
    rejected apart, a row per pair, so the layout is read from the collator itself, on two pairs of
    one token each. The vision collator's processor may refuse a pair without an image: then 2,
    as that collator stacks them (``* 2  # repeat for chosen and rejected`` in TRL 1.16; until
    2026-12-06 it was left at 1, and a vision DPO pair counted 2)."""
    name = next((kind.__name__ for kind in type(collator).__mro__
                 if kind.__module__.startswith("trl.") and kind.__name__ in _PAIR_COLLATORS), None)
    if name is None:
        return 1
    try:
        # Each call its own examples: the vision collator rewrites them in place.
        batch = collator([_PAIR_COLLATORS[name]() for _ in range(2)])
        return 2 if tuple(batch["input_ids"].shape)[:1] == (4,) else 1
    except Exception:  # noqa: BLE001 - older TRL's keys (rows are pairs), or a processor wanting an image
        return 2 if name == "DataCollatorForVisionPreference" else 1


def _know_collator(counter: BatchCounter, trainer: Trainer | None) -> None:
    """Tell ``count_samples`` what the Trainer's collator makes. ``collate`` None where it packs
    sequences into one row (``DataCollatorWithFlattening``, TRL's ``padding_free``), whose row is
    counted by its sequences, less the pad tokens it appends where it pads the row to a multiple
    (TRL's ``pad_to_multiple_of``: ``pad_token_id``); else ``"rows"``: a batch of one row is one
    sample (a data set of pre-packed rows counts its rows at every batch size)."""
    collator = getattr(trainer, "data_collator", None)
    flattening = getattr(transformers, "DataCollatorWithFlattening", None)
    packs = (flattening is not None and isinstance(collator, flattening)) or getattr(collator, "padding_free", False)
    counter.collate = None if packs else "rows"
    counter.rows_per_sample = _rows_per_pair(collator)
    pads = packs and getattr(collator, "pad_to_multiple_of", None)
    counter.pad_token_id = getattr(collator, "pad_token_id", None) if pads else None


def _loop_arguments(signatures: list, args: tuple, kwargs: dict) -> tuple[str | None, str, Any]:
    """A loop call's ``description``, ``metric_key_prefix`` and ``dataloader``: as the first
    signature that binds them (in its ``**kwargs`` too) has them, else the last one's default
    prefix (and None)."""
    found: dict[str, Any] = {}
    for signature in signatures:
        try:
            arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            continue
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(parameter.name, {}))
        for key in ("description", "metric_key_prefix", "dataloader"):
            if key in arguments:
                found.setdefault(key, arguments[key])
    prefix = found.get("metric_key_prefix", signatures[-1].parameters["metric_key_prefix"].default)
    return found.get("description"), prefix, found.get("dataloader")


def _frames_from(frame) -> list:
    """``frame`` and its callers, innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def _whose_hook(loop_frames: list) -> str:
    """Whose end the ``on_evaluate`` / ``on_predict`` being called is, for a loop begun at its first
    ``on_prediction_step`` in ``loop_frames`` (its frame, then its callers): ``"this"`` where the
    Trainer method calling the hook encloses the loop (``evaluate()``; the loop itself in a release
    that runs it inline), or nothing is known; ``"inner"`` where the loop still runs outside that
    method (an ``evaluate()`` inside the loop); else ``"gone"``: the loop returned without its hook."""
    caller = _find_trainer()[1]
    if caller is None or not loop_frames or any(frame is caller for frame in loop_frames):
        return "this"
    outer = caller.f_back
    while outer is not None:
        if outer is loop_frames[0]:
            return "inner"
        outer = outer.f_back
    return "gone"


def _find_trainer(depth: int = 40):
    """The Trainer whose method is on the call stack (hooks are not given it), and that frame."""
    frame = sys._getframe(1)
    while frame is not None and depth > 0:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate, frame
        frame, depth = frame.f_back, depth - 1
    return None, None


def _first_epoch(trainer: Trainer | None, args, state, dataloader) -> tuple[int | None, bool]:
    """The epoch HF's training loop begins at: 0, or on a resume HF's own
    ``global_step // num_update_steps_per_epoch`` (None where that cannot be computed); and whether
    HF skips steps of it first: a resume from a checkpoint inside it, unless ``ignore_data_skip``
    (where the steps per epoch are unknown, maybe)."""
    if not state.global_step:
        return 0, False  # a new training (HF loads a checkpoint's state, its global step, only to resume)
    per_epoch = _update_steps_per_epoch(trainer, args, state, dataloader)
    skips = not getattr(args, "ignore_data_skip", False) and not (per_epoch and state.global_step % per_epoch == 0)
    return (state.global_step // per_epoch if per_epoch else None), skips


def _update_steps_per_epoch(trainer: Trainer | None, args, state, dataloader) -> int | None:
    """HF's ``num_update_steps_per_epoch``, from which a resume computes its first epoch: the
    Trainer's ``set_initial_training_values`` (a subclass's override included; HF's rounds the
    windows down in the first releases that have it, up in later ones), else as 4.47 and 4.48
    compute it inline in the training loop. None where it fails (an override that wants other
    arguments)."""
    if hasattr(Trainer, "set_initial_training_values"):
        if trainer is None:
            return None
        method = trainer.set_initial_training_values
        try:
            arguments = [args, dataloader]
            if "total_train_batch_size" in inspect.signature(method).parameters:  # transformers < 5
                # (it counts the samples HF logs, not the steps), as the training loop computes it
                total = getattr(trainer, "get_total_train_batch_size", None)
                arguments.append(total(args) if total is not None else getattr(trainer, "_train_batch_size", 1)
                                 * args.gradient_accumulation_steps * args.world_size)
            return int(method(*arguments)[1])
        except Exception:  # noqa: BLE001 - the epochs are then numbered from state.epoch
            return None
    if dataloader is None:
        return None
    if not _has_length(dataloader):
        return state.max_steps  # HF's loop, over a data set without a length
    return max(len(dataloader) // args.gradient_accumulation_steps, 1)


def _epoch_reached(state) -> int | None:
    """The last epoch the Trainer began, from its ``state.epoch`` (progress: 2.0 after two whole
    epochs, 1.5 halfway through the second); None before any."""
    return math.ceil(state.epoch) - 1 if state.epoch else None


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    # Per-sample values are NaN when nothing was counted; loggers (MLflow) reject NaN.
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
