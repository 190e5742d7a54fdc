"""Calls made inside a Keras loop (``_NestedCalls``): the fit's validation, and an ``evaluate`` /
``predict`` that a callback makes inside a loop, given this callback. Their hooks keep their state
in the attributes the enclosing loop's use, which is put aside while they run and given back as
they end; one that raised, its exception caught inside the loop, is ended as ``partial``.
"""

from __future__ import annotations

from typing import Any

from greencallbacks.guard import never_raises
from greencallbacks.keras._backend import logs_sum_metrics_over_replicas
from greencallbacks.keras._calling import _calling_list, _calls_running
from greencallbacks.keras._counts import _KERAS_VERSION, _watch_evaluations
from greencallbacks.keras._whole import _whole

# A test or predict loop's own state, in attributes every loop's hooks use (see EnergyCallback._begin_inside).
_LOOP_STATE = ("_loop_model", "_loop_list", "_test_counted", "_steps_lock", "_test_steps", "_test_calls_begun",
               "_test_calls_ended", "_test_banked", "_test_offset")


class _NestedCalls:
    """Part of ``EnergyCallback``: its methods for the calls made inside a loop. No state of its
    own: they read and write the callback's (see ``EnergyCallback._unused``)."""

    def _point_back(self) -> None:
        """Point ``self.model`` back at the fit's model as a call inside the fit ends. Keras points it
        at the model of every call this callback is given: an ``evaluate`` / ``predict`` of another
        model (an EMA copy, a teacher) that a callback made inside the fit, passing this one on,
        left it there for good, and the fit's later epochs read that model's loss tracker (its
        evaluation's 30 samples for the epoch's 100) and optimizer step."""
        call = self._call
        self._set_model(call.model if call is not None and call.kind == "fit" else None)

    def _set_model(self, model: Any) -> None:
        if model is not None and self._model is not model:
            self.set_model(model)

    def _calls_inside_running(self) -> int:
        """How many calls inside the current one are running: the ``evaluate`` / ``predict`` calls given
        this callback on the stack, but an outermost one."""
        call = self._call
        outer = call is not None and call.kind != "fit" and call.in_keras_loop
        return _calls_running(self) - outer

    def _begin_inside(self, model: Any, testing: bool) -> None:
        """A call inside another loop begins (fit's validation, or an ``evaluate`` / ``predict`` that a
        callback makes inside a loop, given this callback), on ``model``. Its hooks keep their state in
        the attributes the enclosing loop's use: that state is put aside until this call ends. The
        enclosing loop's count is banked first, as this call may reset its model's metrics (an
        evaluate of that model, or one made inside a predict of it)."""
        top = self._phases[-1][0] if self._phases else None
        self._set_model(self._call.model if top == "train" else self._loop_model)  # the enclosing loop's
        if top == "train":
            if not (testing and model is self._call.model) and self._evaluated_unseen_since_watched():
                # An evaluate of the fit's model not given this callback, just before this call in the
                # same hook (a predict, an EMA copy's evaluate), which ends by watching it anew: 88
                # samples and 264 tokens, exact, for 40 and 120. (One of the fit's model itself sets
                # the sign it would be told by.)
                self._evaluated_unseen()
            self._bank_train_samples()  # read before evaluate resets the metrics
            self._bank_train_tokens()
            with self._progress.lock:
                if self._train_tokens is not None and not self._progress.nested_since:
                    # The epoch's tokens read whole (summed over replicas where Keras sums on read),
                    # for its record if this call fails: no training batch runs until it ends.
                    self._progress.train_tokens = self._train_tokens[1]
                    self._progress.tokens_known = (
                        self._replicas() <= 1 or logs_sum_metrics_over_replicas(_KERAS_VERSION))
                self._progress.nested_since = True  # this call may reset the metric (see _Progress.train_tokens)
            if testing:
                step = self._step()  # on the training thread, which waits while the loop runs
                trained = self._trained_so_far()
                with self._progress.lock:
                    self._progress.step_in_test, self._progress.trained_before_test = step, trained
        elif top in ("validation", "test"):
            self._test_banked = self._test_samples_seen()  # read before this call may reset the count
        progress = self._progress
        with progress.lock:
            predicting = (progress.predicted, progress.predicting)
        self._outside.append(({name: getattr(self, name) for name in _LOOP_STATE}, predicting))
        self._set_model(model)

    def _end_inside(self) -> None:
        """A call inside another loop has ended, or raised (its phase popped): the enclosing loop's
        state back, the callback on that loop's model (see ``_point_back``), and the count the loop
        goes on from."""
        if self._outside:
            state, (predicted, predicting) = self._outside.pop()
            self.__dict__.update(state)
            with self._progress.lock:
                self._progress.predicted, self._progress.predicting = predicted, predicting
        top = self._phases[-1][0] if self._phases else None
        if top in ("train", None):  # inside the fit's epoch, or between its epochs
            self._point_back()
        if top == "train":
            with self._progress.lock:
                self._progress.step_in_test = None
            # Left in the tracker: the epoch's training counts on from it (a count of steps without
            # data there too, so the difference training adds stays exact). None: training's count
            # is lost (see _bank_train_samples).
            self._train_offset = self._samples_seen()
            if self.token_counter is not None:
                self._tokens_offset = self._token_metric()  # and so do its tokens
            self._watching = _watch_evaluations(self._call.model)  # this call's evaluate was seen
        elif top is not None:
            self._set_model(self._loop_model)
            if top in ("validation", "test"):
                self._test_offset = self._samples_seen()

    @never_raises
    def _end_failed_calls_inside(self) -> None:
        """A batch of a test or predict loop begins (one inside another, or one a call was made
        inside): the calls made inside it that raised, their exception caught inside it, end here
        as ``partial``, as those made inside a training epoch end as its next batch begins. Left
        open, such a call took the rest of the loop's time, and the loop's batches were counted in
        the failed call's state. Only a batch of another list than the open loop's walks the stack."""
        if self._loop_list is None or _calling_list(self) is not self._loop_list():
            self._end_failed_nested_calls(self._calls_inside_running())

    @never_raises
    @_whole
    def _end_failed_nested_calls(self, running: int = 0) -> None:
        """End the phases of ``evaluate`` / ``predict`` calls made inside ``fit`` (by a callback, given
        this one) that raised, their exception caught by that callback: Keras called no end hook, and
        the watch sees no failure (it watches the fit, which goes on). Left open, such a phase took
        the rest of the epoch's training time, a predict's record said 0 samples, and the epoch's
        training count took in the evaluation's. Called where the fit goes on (a training batch or
        epoch begins, the epoch or the fit ends), where no call inside it can be running, and as such a call
        begins (a retry after the failure), with the ``running`` calls it is made inside; and so for
        calls made inside such a call, as its batch begins or it ends. Each ends there as
        ``partial``, a predict with the batches it finished, an evaluation uncounted; the loop it was
        made in counts on from what it left in the loss tracker."""
        nested = [p for p in self._phases if p[0] in ("validation", "test", "predict") and not p[1]]
        while len(nested) > max(running, 0) and self._phases[-1] == nested[-1]:
            nested.pop()
            phase, _ = self._phases.pop()
            progress = self._progress
            if phase == "predict":
                with progress.lock:
                    samples, progress.predicting = progress.predicted, False
                self.tracker.add_samples(samples)  # into the predict, the innermost phase; None: uncounted
            self._end_inside()
            self.tracker.end(phase, step=self._step(), partial=True)
