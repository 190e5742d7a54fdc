"""The training loop's hooks (``_TrainingHooks``): the fit's limits, its epochs begun and ended (one
a checkpoint resumes inside too), the step values at Lightning's logging steps, and the budget's
stop.
"""

from __future__ import annotations

import math
from typing import Any

from greencallbacks.guard import hook_failed, never_raises
from greencallbacks.lightning._logging import _batches_that_stepped
from greencallbacks.meter import warn


class _TrainingHooks:
    """Part of ``EnergyCallbackBase``: its training hooks and what they call. No state of its own:
    they read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

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


def _logged_count(trainer: Any) -> int | None:
    """Under automatic optimization, the count Lightning's step logs go by once this batch ends: its
    batches that stepped, one more unless this batch accumulates (`update_train_step_metrics`, 2.2
    to 2.6, which logs nothing at a batch that accumulates). None where a release drops a seam."""
    stepped = _batches_that_stepped(trainer)
    accumulates = getattr(getattr(trainer, "fit_loop", None), "_should_accumulate", None)
    if stepped is None or not callable(accumulates):
        return None
    return stepped if accumulates() else stepped + 1

