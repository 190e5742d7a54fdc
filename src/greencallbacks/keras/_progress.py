"""How far a Keras call got (``_Progress``): the steps, samples and tokens its hooks saw, kept for
the write-up of a call that failed (``_call._abandon``), which gives the phases it left open what
is known, from the watch thread.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from greencallbacks.keras._counts import _a_number, _step_range

_LABEL_WAIT_S = 1.0  # the batch hooks hold the progress lock for microseconds


class _Progress:
    """How far a call got, kept by the hooks (on the training thread and Keras's batch-hook
    threads) for ``_abandon``, which labels the phases a failed call left open from the watch
    thread: plain ints under a lock there, never the model's variables (reading those would
    synchronise the device from another thread, and JAX keeps them out of date mid-epoch)."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.step: int | None = None  # the optimizer's step, read on the training thread at the last epoch boundary
        self.training = False  # a training epoch is open
        self.epoch: int | None = None  # the open (or last) training epoch
        self.one_step_per_batch = False  # the open epoch's batches each advance the step by one
        self.train_steps = 0  # training batches run in the open epoch (the batch hooks' highest `batch` + 1)
        self.per_execution = 1  # the model's steps_per_execution, read as the epoch began
        # An execution of several steps that raised may have applied the steps before the one that
        # failed: TensorFlow runs them one after another in one call (JAX returns its state only
        # as the whole call ends; torch runs one step per call).
        self.applies_in_part = False
        # Calls of the compiled step begun and ended (the batch hooks) in the open epoch: one begun
        # and never ended ran out of data inside it (see _backend.may_run_past_the_data).
        self.train_calls_begun = self.train_calls_ended = 0
        # The steps Keras planned per epoch (fit) or for the loop (evaluate), read as the call began
        # (an evaluate inside the fit given this callback replaces its params); None: not known.
        # With steps_per_execution=k a short last execution is reported as k steps: capped by it.
        self.planned_steps: int | None = None
        # The step read as a test loop began inside the open epoch (fit's validation): training
        # waits there, and the last batch hooks, asynchronous, may not have run yet.
        self.step_in_test: int | None = None
        self.predicting = False
        self.predicted: int | None = 0  # samples of the open predict; None once a batch could not be counted
        # The token_counter's value in the logs of the open epoch's latest training batch: a number
        # Keras made for its batch hooks (no read of ours), the epoch's tokens so far, for its record
        # if it fails. Not known (``tokens_known`` False) where the metric is not summed over
        # replicas or a call inside the epoch reset it (the value then counts from that reset). A
        # call inside the epoch (its validation) replaces it with the metric read as that call
        # began (see _begin_inside), good until a training batch ends after it (``nested_since``):
        # a failed validation keeps the tokens its epoch trained.
        self.counts_tokens = False  # a token_counter is given
        self.tokens_known = True
        self.nested_since = False  # a call began inside the epoch, which may have reset the metric
        self.train_tokens: Any = 0
        # The open epoch's training samples where it fails: the loss tracker's count is read at the
        # epoch's end only (a read per batch would wait for the device), and never from the watch
        # thread (see above). Instead, the batch size that Keras's data adapter fixes, read as the
        # fit began (see _fixed_batches): each batch has `fixed_batch` samples but the last of each
        # pass over the data, the `pass_batches`-th (None: no pass ends), which has `last_batch`.
        # The open epoch began at batch `pass_offset` of a pass (None: not known), 0 unless an
        # epoch runs on where the last one stopped (`runs_on`: steps_per_epoch with arrays).
        self.fixed_batch: int | None = None
        self.pass_batches: int | None = None
        self.last_batch: int | None = None
        self.runs_on = False
        self.pass_offset: int | None = 0
        # What the loss tracker counted for the epoch's training as a test loop inside it began
        # (fit's validation): a failure inside that loop left the training at that. None: not known.
        self.trained_before_test: int | None = None

    def label(self, tracker: Any) -> None:
        """Give the failed call's open phases what is known: the step it reached, predict's count."""
        # Not waiting for ever: a Ctrl-C under a trace function (a debugger) can leave the lock
        # acquired by the batch hook it interrupted on the training thread. The call has ended then,
        # and its values are final.
        locked = self.lock.acquire(timeout=_LABEL_WAIT_S)
        try:
            step, predicted = self.step, self.predicted
            if self.step_in_test is not None:
                step = self.step_in_test
            elif step is not None and self.training and self.one_step_per_batch:
                step += _step_range(self.train_steps, self.per_execution, self.planned_steps)[1]
            predicting = self.predicting
            # Training, or a loop inside its epoch (its validation): the batches trained before it.
            training_tokens = self.training and self.counts_tokens
            tokens, known = self.train_tokens, self.tokens_known
            trained = self.trained() if self.training and not predicting else None
            if self.failed_in_part():  # its tokens, as its samples, are past the last hook's
                known = False
        finally:
            if locked:
                self.lock.release()
        if trained is not None:
            # Its record said samples_counted: false, and the run's cost per sample was n/a.
            tracker.samples_so_far("train", trained)
        if predicting:
            tracker.add_samples(predicted)  # the innermost open phase; None: uncounted
        if training_tokens:
            # The batches it trained: without them its record had no tokens, and the run's J/token was n/a.
            known = known and _a_number(tokens) and math.isfinite(tokens) and tokens >= 0
            tracker.add_tokens_to("train", int(round(tokens)) if known else None)  # None: tokens_counted false
        if step is not None:
            tracker.step = step

    def trained(self) -> int | None:
        """The samples the open training epoch trained before the call failed, where that is known
        (under the lock). Its batches whose end hooks ran count: a batch that failed did not train,
        and a ``KeyboardInterrupt`` landing between a step and its hook leaves that step out, as its
        tokens and the step reached are. Asynchronous hooks still running (more than the one failed
        batch begun and not ended): not known."""
        if self.step_in_test is not None:  # the test loop the failure came in is inside the epoch
            before, by_batches = self.trained_before_test, self.trained_by_batches(unended=0)
            # The loss tracker's count falls short of the batches where a call this callback was not
            # given (a callback's model.evaluate mid-epoch) reset it unseen: 76 of 100 trained.
            return by_batches if by_batches is not None and (before is None or before < by_batches) else before
        if self.failed_in_part():
            return None  # 24 samples recorded, exact, for 32 trained: 3 steps by 3, failing at the 5th
        return self.trained_by_batches(unended=1)

    def failed_in_part(self) -> bool:
        """Did the training fail inside an execution of several steps that may have applied some of
        them (under the lock)? Its hook never ran: how many it applied is not known here."""
        return (self.step_in_test is None and self.applies_in_part
                and self.train_calls_begun > self.train_calls_ended)

    def trained_by_batches(self, unended: int) -> int | None:
        """The samples of the open training epoch's batches whose end hooks ran, where Keras's data
        adapter fixes their size (see ``_fixed_batches``; under the lock); not known where more than
        ``unended`` batches began without ending (asynchronous hooks still running)."""
        if self.fixed_batch is None or self.train_calls_begun - self.train_calls_ended > unended:
            return None
        steps = self.steps_ended()
        if steps is None or self.pass_batches is None:
            return None if steps is None else steps * self.fixed_batch
        # Each epoch ends at the pass's end (Keras 3.3 and 3.15 alike; a cut-short epoch before it):
        # its batches are full but the pass's last, which ends it, 4 of 100 in batches of 32.
        ends_the_pass = self.pass_offset + steps == self.pass_batches
        return steps * self.fixed_batch - (self.fixed_batch - self.last_batch) * ends_the_pass

    def steps_ended(self) -> int | None:
        """The steps the open training epoch's ended executions ran, where the batches' sizes are
        fixed (see ``_fixed_batches``; under the lock); None: not known.

        With ``steps_per_execution=k`` a hook covers up to k steps (see ``_step_range``). Where the
        data's batches are fixed, an execution runs k steps unless it reaches the pass's end (which
        ends the epoch) or Keras's plan (which Keras 3.15 runs past, to a multiple of k: 3 steps by
        2 ran 4; Keras 3.3 stops at it): so one that ended before both ran k, and one that reached
        the pass's end first ran to it."""
        reported, per_execution = self.train_steps, self.per_execution
        left = None
        if self.pass_batches is not None:
            if self.pass_offset is None:
                return None  # an earlier epoch's steps were not known, nor where this one began
            left = self.pass_batches - self.pass_offset
        if per_execution == 1:
            # More than the pass had left: a Keras that runs an epoch on past the pass's end.
            return reported if left is None or reported <= left else None
        if reported <= 0:
            return 0
        end = _step_range(reported, per_execution, None)[1]  # the last step the hooks may mean
        planned = self.planned_steps
        if planned is None and left is None:
            return None  # data of unknown length: any execution may have run out of it
        if end <= min(bound for bound in (planned, left) if bound is not None):
            return end
        return left if left is not None and (planned is None or left <= planned) else None

    def end_epoch(self) -> None:
        """Where the next epoch begins in the pass over the data (under the lock, at an epoch's end)."""
        if not self.runs_on or self.pass_offset is None or self.pass_batches is None:
            return
        steps = self.steps_ended()
        self.pass_offset = None if steps is None else (self.pass_offset + steps) % self.pass_batches
