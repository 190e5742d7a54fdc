"""The TrainerCallback: HF's hooks -> the tracker's phases and epochs; the wrappers it sets on its Trainer."""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import weakref
from typing import Any

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
from greencallbacks.hf._counts import _know_collator, _samples_run
from greencallbacks.hf._epochs import _epoch_reached, _first_epoch
from greencallbacks.hf._repeats import _first_samples, _samples_not_repeated
from greencallbacks.hf._saved_state import complete_saved_entries, saved_alike, saved_entry
from greencallbacks.hf._trainer import (_LOOPS_WRAPPED, _OWNERS, _REPLACED, _devices_and_sync, _find_trainer,
                                        _frames_from, _keep_once, _owners, _whose_hook)
from greencallbacks.hf._wrappers import (_TOKENS_COUNTED_AFTER_STEP, _CountingPredictionStep, _CountingPreparedInputs,
                                         _CountingTrainingStep, _finite, _keep_out_of_default_objective, _MeasuredLoop,
                                         _merge, _Wrapper)
from greencallbacks.meter import warn
from greencallbacks.session import EnergySession, keyword_names, reject_unknown_arguments, warn_two_callbacks
from greencallbacks.samples import BatchCounter


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


class _NotingReplacedCallbacks(_Wrapper):
    def __call__(self, *args, **kwargs):
        # HF removes each callback it rebuilds from the checkpoint and drops it: the copies give
        # their places back to these, which may never have run a hook (add_callback just before).
        callbacks = self.trainer.callback_handler.callbacks
        self.trainer.__dict__[_REPLACED] = [cb for cb in callbacks if isinstance(cb, EnergyCallback)]
        return self._inner(*args, **kwargs)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
