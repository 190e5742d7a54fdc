"""The samples of a Keras loop (``_SampleCounting``): the loss tracker's count, banked around the
calls inside a training epoch or test loop, told from the steps run, and, where it cannot be
counted, the one warning per run that says why. What a count is read from is in ``_counts``.
"""

from __future__ import annotations

import keras

from greencallbacks.keras._backend import count_value
from greencallbacks.keras._counts import (
    _custom_step, _evaluated_since, _exact_count, _may_run_past_the_data, _per_execution,
)
from greencallbacks.meter import warn


class _SampleCounting:
    """Part of ``EnergyCallback``: its methods that count a loop's samples. No state of its own:
    they read and write the callback's (see ``EnergyCallback._unused``)."""

    def _test_samples_seen(self) -> int | None:
        """The open test loop's samples: its loss tracker's count since ``_test_offset``, and what it
        banked before the calls inside it (``_begin_inside``), as training's are (see
        ``_bank_train_samples``). None: not known (``_seen_why`` says why)."""
        seen = self._samples_seen()
        if seen is None:
            return None
        if self._test_banked is None or self._test_offset is None or seen < self._test_offset:
            self._seen_why = "reset"  # a call inside it reset its count, unseen
            return None
        return self._test_banked + seen - self._test_offset

    def _bank_train_samples(self) -> None:
        """Add what the loss tracker counted for training since the epoch began, or since the last
        test loop inside it: before such a loop resets it, and at the epoch's end."""
        if self._train_samples is None:
            return
        # On JAX, between batches the training state lives outside the model's variables:
        # `Callback.model` writes it back (Keras 3.3 and 3.15) before _samples_seen reads it.
        seen = self._samples_seen()
        if seen is None or self._train_offset is None:
            # Past the count's exact range, or counting on from a test loop's count that was: a
            # float count there has rounded away batches (or reached inf).
            self._train_samples, self._train_why = None, self._train_why or self._seen_why
            return
        self._train_samples = self._train_samples + seen - self._train_offset if seen >= self._train_offset else None

    def _trained_so_far(self) -> int | None:
        """The epoch's training samples banked so far (``_bank_train_samples``), for its record if a
        test loop inside it fails; None where the epoch's end would not count them either: a custom
        ``train_step`` (its count may be steps), a count below the steps run (reset unseen), a step
        that ran out of data where that may count one without data (see ``_past_the_data``)."""
        count = self._train_samples
        progress = self._progress
        with progress.lock:  # asynchronous batch hooks may be behind here: their steps are a lower bound
            steps, begun, ended = progress.train_steps, progress.train_calls_begun, progress.train_calls_ended
        if count is None or _custom_step(self.model, "train") or count < steps:
            return None
        if begun > ended and _may_run_past_the_data(self.model):
            return None
        return count

    def _evaluated_unseen_since_watched(self) -> bool:
        """Has an ``evaluate`` of the fit's model not given this callback begun since it was last
        watched (see ``_watch_evaluations``), not yet taken into account?"""
        call = self._call
        return call is not None and self._watching and not self._train_reset and _evaluated_since(call.model)

    def _evaluated_unseen(self) -> None:
        """An ``evaluate`` of the fit's model ran inside the training epoch without this callback (see
        ``_evaluated_since``): it reset the metrics, so the loss tracker's count and the token metric
        count on from the evaluation's. The epoch's samples are then known only where Keras fixes the
        batch size (see ``on_epoch_end``), and its tokens not at all."""
        self._train_reset = True
        self._train_samples, self._train_why = None, "evaluated"
        with self._progress.lock:
            self._progress.nested_since = True  # a failure later in the epoch: its tokens are not known either

    def _samples_seen(self) -> int | None:
        """Samples since Keras last reset its metrics: the loss tracker's count (exact, any input).

        Its ``count`` takes ``keras.config.floatx()`` and grows a batch at a time, so it is exact
        only below its dtype's exact-integer range: 2**24 (16.7 M) samples per epoch in float32,
        2048 in float16, 256 in bfloat16. None past that (see ``_exact_count``).
        0 when there is no loss tracker (a model compiled without a loss).
        """
        loss_tracker = getattr(self.model, "_loss_tracker", None)
        if loss_tracker is None:
            return 0
        count = loss_tracker.count
        value = count_value(count, getattr(self.model, "distribute_strategy", None))  # summed over replicas
        if value is None:
            self._seen_why = "replicas"
            return None
        self._seen_why = "past_exact"
        return _exact_count(value, keras.backend.standardize_dtype(count.dtype))

    def _count_dtype(self) -> str:
        """The dtype of the loss tracker's count, for the warning."""
        count = getattr(getattr(self.model, "_loss_tracker", None), "count", None)
        return keras.backend.standardize_dtype(count.dtype) if count is not None else "float"

    def _not_steps(self, count: int, loop: str, fewest: int, most: int) -> int:
        """The loss tracker's ``count`` as samples; 0 (uncounted) where it may be the steps run.

        Keras's own ``train_step`` / ``test_step`` (``loop``: train, test) weight the loss by the
        batch size: their count is samples. A custom step written as in Keras's guide to
        customizing ``fit()`` updates the tracker with the batch's loss alone, once per step and
        replica (``tf.distribute``: each replica adds its own). So a custom step's count is samples
        only when it cannot be the steps run, ``fewest`` to ``most`` (a range with
        ``steps_per_execution`` > 1, see ``_step_range``), times 1 or the replicas, where those
        are known (``most`` 0: not known). Batches of one sample each: uncounted, never wrong.
        """
        if not count or not _custom_step(self.model, loop):
            return count
        if most <= 0:
            return 0
        fewest = min(fewest, most)
        for replicas in {1, self._replicas()}:
            if count % replicas == 0 and fewest <= count // replicas <= most:
                return 0
        return count

    def _exact_past_the_data(self, loop: str) -> bool:
        """Does ``_past_the_data``'s rule hold for ``loop`` (train, test) of this model?"""
        return _per_execution(self.model) == 1 and not _custom_step(self.model, loop) and self._replicas() == 1

    def _replicas(self) -> int:
        """Replicas a step runs on in sync (a ``tf.distribute`` strategy's); 1 without one."""
        replicas = getattr(getattr(self.model, "distribute_strategy", None), "num_replicas_in_sync", 1)
        return replicas if isinstance(replicas, int) and replicas > 0 else 1

    def _ended_early(self, most: int, planned: int | None) -> bool:
        """Did the training epoch end before a whole epoch's steps, at ``most`` steps run? Fewer than
        Keras planned (``model.stop_training`` set inside it: ``TerminateOnNaN``, a budget, a callback
        of the user's; or its data ran out). Where Keras plans none (a data set of unknown length):
        ``model.stop_training`` set. Keras clears it as ``fit`` begins, and ``EarlyStopping`` and the
        like set it in their ``on_epoch_end``, after this callback's (it goes first): set now, it was
        set inside the epoch, which Keras then ended after a batch (its last one, possibly: uncounted
        all the same). Or fewer steps than an earlier epoch of this fit ran to its data's end: a
        Python generator used up by the first epoch gives each later one only the batches Keras read
        ahead of it (2 of 4), and Keras sets nothing then."""
        if planned is not None:
            return most < planned
        if self._call is not None and most < self._call.whole_epoch_steps:
            return True
        return bool(getattr(self.model, "stop_training", False))

    def _uncounted(self, phase: str, reason: str | None = None, steps: int = 0, planned: int | None = None,
                   planned_by_keras: bool = True) -> None:
        """The open phase ran steps but its samples are unknown: recorded as uncounted, one warning per run,
        which names the phase found first (fit's validation ends before its training epoch does).

        ``reason``: None, the tracker did not count (a custom step, a loop of the user's); "past_exact",
        it counted past what its dtype counts exactly; "not_reset", Keras never resets it (see
        ``_resets_loss_tracker``); "reset", it counted fewer samples than the ``steps`` run; "evaluated", an
        ``evaluate`` not given this callback reset it inside the training epoch; "past_data",
        the loop ran out of data inside a compiled call that may count steps without data; "replicas",
        this Keras keeps no sum of the count over a ``tf.distribute`` strategy's replicas; "ended_early",
        a training epoch given ``samples_per_epoch`` ended after ``steps`` of ``planned`` (see ``_ended_early``;
        ``planned_by_keras`` False: the steps an earlier epoch of the fit ran, Keras planning none)."""
        self.tracker.add_samples(None)
        if self._warned_samples != self.tracker.run_id:
            self._warned_samples = self.tracker.run_id
            if reason == "past_data":
                why = (": Keras's compiled step on TensorFlow ran out of data inside a call, and may then have counted "
                       "steps that had no data (a data set of unknown length with steps_per_execution=1; before Keras "
                       "3.7 also a last execution shorter than steps_per_execution). A data set of known length whose "
                       "batches fill every execution, or run_eagerly=True, is counted, and so is one of unknown "
                       "length with steps_per_execution=1 where the count shows no such step")
            elif reason == "replicas":
                why = (f": Keras {keras.__version__} does not sum the loss tracker's count over the "
                       f"{self._replicas()} tf.distribute replicas (Keras 3.10 and later do)")
            elif reason == "past_exact":
                why = (f": the loss tracker's {self._count_dtype()} count (keras.config.floatx()) cannot count this "
                       "many exactly")
            elif reason == "not_reset":
                why = (": the model's `metrics` leaves out its loss tracker (model._loss_tracker), so Keras never "
                       "resets it and its count runs on across epochs and evaluations; list it in `metrics` to "
                       "count them")
            elif reason == "reset":
                why = (f": the loss tracker counted fewer samples than the {steps} steps run, so the model's metrics "
                       "were reset during the loop (a callback calling model.reset_metrics()?)")
            elif reason == "evaluated":
                why = (": a model.evaluate inside the epoch, made without this callback in its callbacks=[...], "
                       "reset the model's loss tracker, which training then counted on from the evaluation's count; "
                       "pass this callback on to that evaluate to count them")
            elif reason == "ended_early":
                of = "" if planned is None else (
                    f" of the {planned} Keras planned" if planned_by_keras
                    else f" of the {planned} an earlier epoch of this fit ran to its data's end")
                why = (f": the epoch ended after {steps} steps{of} (model.stop_training set inside it, by "
                       "TerminateOnNaN, a budget or a callback; or its data ran out), and samples_per_epoch= is a "
                       "whole epoch's samples")
            else:
                why = (" (a custom train_step / test_step that does not update the model's loss tracker, or updates "
                       "it once per batch, without sample_weight=<batch size>? a loop of your own around "
                       "train_on_batch / test_on_batch?)")
            warn(
                f"greencallbacks: could not count the {phase} samples{why}; its record says samples_counted: false "
                "and leaves out per-sample values, as does that of every later phase of this run (training, "
                "validation, test) that cannot be counted: this warning comes once per run."
                + ("" if reason == "ended_early" else " Pass samples_per_epoch= for training.")
            )
