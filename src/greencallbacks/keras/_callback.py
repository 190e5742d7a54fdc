"""The Keras 3 callback: Keras hooks -> tracker phases, tracker metrics -> the epoch's ``logs``.

Hooks -> phases (the tracker bills everything in between to ``other``):

    train       on_epoch_begin .. on_epoch_end (the validation inside the epoch excluded)
    validation  on_test_begin .. on_test_end, when ``fit`` runs them
    test        on_test_begin .. on_test_end of ``model.evaluate``
    predict     on_predict_begin .. on_predict_end

Keras gives callbacks no exception hook and no handle on the ``CallbackList`` that calls them.
The callback finds that list by looking at its caller's frame (``_calling``: every Keras 3 backend
calls callbacks from ``CallbackList`` methods) and uses it for two things: to move the callback to
the front of the list (so loggers see the energy keys) and to tell validation inside ``fit`` from
a standalone ``evaluate``. Without it (a future Keras), the callback still logs every epoch, asks
to be put first, and tells validation by the ``fit`` in progress. That a call raised is seen by
``greencallbacks.watch``: its frame has left the stack (``_call``). Which run a fit continues is
kept in ``_state``; what a loop ran and counted is read in ``_counts``; how far a call got, for
the write-up of one that failed, is kept in ``_progress``.

This module holds the hooks and the callback's state; the helpers they call are the methods of
its mixins, one idea each, which keep no state of their own: which run a call measures
(``_runs``), the calls made inside a loop (``_nested``), a loop's samples (``_samples``) and
tokens (``_tokens``), and the values added to Keras's ``logs`` (``_logs``). ``_whole`` holds a
hook's bookkeeping whole against Ctrl-C.
"""

from __future__ import annotations

import numbers
import threading
import weakref
from typing import Any

from greencallbacks import extras

try:
    import keras
except ImportError as error:
    raise extras.missing_keras_backend(error) or extras.missing(
        error, "greencallbacks.keras", ("keras",), "pip install 'greencallbacks[keras]'") from None

from greencallbacks import interrupts
from greencallbacks.guard import never_raises
from greencallbacks.keras._call import _Call
from greencallbacks.keras._calling import (
    _NO_FIXED_BATCHES, _calling_list, _drop_repeats, _fixed_batches, _model_call_frame, _overrides_epoch_end,
    _planned_steps,
)
from greencallbacks.keras._counts import (
    _a_number, _custom_step, _may_run_past_the_data, _one_step_per_batch, _past_the_data, _per_execution,
    _resets_loss_tracker, _step_range, _watch_evaluations,
)
from greencallbacks.keras._logs import _LoggedValues
from greencallbacks.keras._nested import _NestedCalls
from greencallbacks.keras._progress import _Progress
from greencallbacks.keras._runs import DEFAULT_OUTPUT_DIR as DEFAULT_OUTPUT_DIR  # (defined there, kept importable here)
from greencallbacks.keras._runs import _RunChoice
from greencallbacks.keras._samples import _SampleCounting
from greencallbacks.keras._state import _Owner, _remember_run_of, _Run
from greencallbacks.keras._tokens import _TokenCounting
from greencallbacks.keras._whole import _whole
from greencallbacks.meter import warn
from greencallbacks.samples import BatchCounter
from greencallbacks.session import EnergySession, keyword_names, reject_unknown_arguments, warn_two_callbacks

_Callback = keras.callbacks.Callback


# ------------------------------------------------------------------------------- the callback
class EnergyCallback(_RunChoice, _NestedCalls, _SampleCounting, _TokenCounting, _LoggedValues, _Callback):
    """Per-epoch energy (kWh) and CO2eq (g) of ``fit``, ``evaluate`` and ``predict``, in the epoch's ``logs``.

    At each epoch end it adds ``energy_kwh``, ``co2eq_g``, ``energy_kwh_total``, ``co2eq_g_total``,
    ``energy_j_per_sample``, ``co2eq_g_per_sample`` and ``power_w`` to ``logs`` (and ``val_<stem>``
    in the epochs where Keras adds ``val_loss``), so ``History``, the progress bar, ``CSVLogger``,
    ``TensorBoard``, W&B's Keras callbacks, ``EarlyStopping`` and ``ModelCheckpoint`` all see them.
    ``evaluate`` and ``predict`` are recorded as phases ``test`` and ``predict``: see ``metrics()``
    and the records in ``output_dir``.

    **Put it first in** ``callbacks=[...]``: Keras hands ``logs`` to callbacks in list order, so a
    logger before it would miss the energy keys. If it is not first, it moves itself to the front
    of the list for that ``fit`` and warns, naming the callbacks it overtook.

    Args:
        country / zone / region / intensity / series / pue: where gCO2eq/kWh and PUE come from (see
            ``greencallbacks.carbon.Carbon``). Nothing given: the world average, said in a warning
            and in every record.
        output_dir: where ``energy-records.jsonl``, ``energy-summary.json`` and ``energy-state.json``
            go. Default: the ``log_dir`` of a ``TensorBoard`` callback in the same list, else
            ``./energy_logs``.
        samples_per_epoch: training samples per epoch, for the per-sample values. Default: counted
            exactly by Keras's own loss tracker (the built-in ``train_step`` counts every sample it
            sees, whatever the input: arrays, ``tf.data``, ``PyDataset``, torch ``DataLoader``); pass
            it when a custom ``train_step`` bypasses that tracker, or past what the tracker's count
            (a float of ``keras.config.floatx()``) holds exactly: 2**24 (16.7 M) samples per epoch
            in float32, 2048 in float16, 256 in bfloat16; past that a phase is recorded as
            ``samples_counted: false``, with one warning. It is a whole epoch's: an epoch that ends
            before its planned steps (``model.stop_training`` set inside it by ``TerminateOnNaN``,
            a budget or a callback; its data run out), or, where Keras plans none (data of unknown
            length), before the steps an earlier epoch of the fit ran, is recorded as
            ``samples_counted: false``, with that warning, not as given. Validation and ``evaluate`` are
            counted the same way; a loop that ran no step (an empty validation set) counts 0 and
            logs NaN per-sample values. A count that is not available (a custom step that leaves
            the tracker at 0, or that updates it once per batch, as Keras's guide to customizing
            ``fit()`` does: its count is the steps run, times the replicas of a ``tf.distribute``
            strategy) is recorded as ``samples_counted: false``, with one warning (any count the
            steps could be, with ``steps_per_execution`` > 1 not dividing them). A custom step
            that weights the loss by the batch size (``update_state(loss,
            sample_weight=batch_size)``) is counted. An ``evaluate`` inside
            a training epoch (a callback evaluating every N batches) resets the loss tracker: pass
            this callback on in its ``callbacks`` and the counts stay exact (without it, the
            samples stay exact where Keras fixes the batch size, over arrays, and are otherwise
            uncounted, and the epoch's tokens are uncounted); one that raises, its exception
            caught by that callback, is recorded ``partial``, and one of another model (an EMA copy) leaves the fit's count as it is.
            A loop of your own that drives a ``CallbackList`` around ``train_on_batch`` /
            ``test_on_batch`` gives no count (uncounted, unless this is given), and so do a model
            whose ``metrics`` property leaves out its loss tracker (Keras never resets it) and a
            count below the steps run (a callback calling ``model.reset_metrics()`` mid-loop). So
            is a loop that ran out of data inside a compiled TensorFlow call, where Keras may count
            steps that had no data (a data set of unknown length with ``steps_per_execution=1``,
            unless its count shows none: one that the steps run plus one do not divide, as a shorter
            last batch leaves it; before Keras 3.7 also a last execution shorter than
            ``steps_per_execution``), and a
            ``tf.distribute`` count on Keras 3.7 to 3.9, which those do not sum over replicas.
        sample_counter: ``outputs -> int`` samples in one ``predict`` batch. Keras hands callbacks
            no input batches; the only per-batch values are ``predict``'s outputs, which
            ``greencallbacks.samples.count_samples`` counts by default (one array, or a list,
            tuple or dict of them for multi-output models). Training and evaluation are counted
            by the loss tracker (above).
        token_counter: the name of a metric in ``logs`` whose epoch value is the number of tokens
            (e.g. a ``keras.metrics.Sum`` of the label mask, added in ``compile``), giving
            ``energy_j_per_token`` for training (``name``), validation (``val_<name>`` is read
            from the validation's own ``logs``) and ``evaluate``. A name, not a ``batch -> int``
            function as in the Lightning and HF callbacks, because Keras runs batches inside
            compiled functions that callbacks never see. Left out, with one warning, on several
            ``tf.distribute`` replicas before Keras 3.10, whose logs do not sum a metric over them.
        **session_kwargs: passed to ``EnergySession`` (``run_id``, ``gpus``, ``cpu_tdp_w``,
            ``extra_sensors``, ``sensors``, ``carbon_aware``, ``budget``, ``embodied``). With
            ``budget=Budget(..., on_exceed="stop")`` a budget reached (or confidently predicted)
            sets ``model.stop_training`` at that epoch's end, so ``ModelCheckpoint`` and the
            loggers still see the epoch (or at a batch ``step_metrics`` logs, when that reaches it);
            a resumed fit whose budget was spent stops after one batch.
        step_metrics: when a ``keras.callbacks.TensorBoard`` in the same list logs batches (an
            integer ``update_freq``; on several processes, in any rank's list), also put
            ``energy_kwh_total``, ``co2eq_g_total`` (so far, the epoch in progress included) and
            ``power_w`` (since the previous such batch) into the batch ``logs`` every
            ``update_freq`` batches, so it writes them; no records are added.
            Otherwise, or with False, the batch hook does nothing and Keras keeps dispatching batch
            hooks asynchronously.

    Runs: a ``fit`` that starts at epoch 0 starts a new run (new ``run_id``, totals from zero). A
    ``fit`` that starts later (``initial_epoch=``, or ``BackupAndRestore`` after a crash) continues
    the current run, or in a new process the run in ``output_dir/energy-state.json`` if that run
    reached the epoch before, or failed inside it (a ``ModelCheckpoint(save_freq=<steps>)``
    checkpoint saved there, which Keras names with the next epoch). A run that went past it is
    continued too, its later epochs counted as
    trained again, with a warning unless a ``run_id=`` or the fit's ``BackupAndRestore`` names it
    (or it is this object's run, on the same model): the trials of a sweep that share one
    ``output_dir`` are not told apart otherwise. A KerasTuner trial's fit from ``initial_epoch`` > 0
    (Hyperband going on from another trial's weights) is a new run, from that epoch; given
    ``run_id=``, each execution of a trial is the run ``<run_id>-trial-<trial id>`` (its later
    executions ``-2``, ``-3``...). A callback
    given ``run_id=`` continues that run only (its state is kept in a file of its own), and a
    second EnergyCallback in the same fit (two grids) continues the run of the callback in its
    place in ``callbacks=[...]``. A loop of ``fit(initial_epoch=e)`` with a new callback given
    ``run_id=`` each, run again into the same directory, stays in the ``<id>-N`` its first fit was
    recorded as (the same model trained it last). ``evaluate`` / ``predict`` continue the run of
    the model they are called on: the run it
    last trained in with this callback (a callback given to two models keeps each model's inference
    in that model's run), or the one it last trained in with another callback in this process (a
    new callback each call), unless another ``run_id=`` is given. For a model this process did not
    train they continue the current run; before any ``fit`` they are a run of their own, which a
    later resumed ``fit`` does not continue. A copy (``copy.deepcopy``, ``pickle``) taken while a
    call runs is the callback as it was before measuring anything; the original goes on.

    Failures: each phase's record is on disk when the phase ends. Keras has no exception hook: when
    ``fit``, ``evaluate`` or ``predict`` raises (an error, Ctrl-C in a notebook), a background watch
    sees the call's frame leave the stack and, within a fraction of a second, writes the unfinished
    phase as ``partial`` (at the optimizer's step reached; ``predict`` with the batches it finished;
    training with the batches it finished times the batch size where Keras fixes it, for NumPy
    arrays and a ``tf.data`` batch of static size, or, failing in the epoch's validation, with
    what the loss tracker counted before it; evaluation, and training from a generator, a
    ``PyDataset`` or a torch ``DataLoader``, without a sample count) and the run summary, and stops
    the meter's thread, whether or not the exception stays referenced.
    """

    # The batch hooks here (counting predicted samples and training steps, under a lock; the step
    # values, only when a TensorBoard that logs batches makes Keras dispatch synchronously anyway)
    # are thread-safe, so Keras may keep dispatching batch hooks asynchronously: this callback
    # never slows the training loop down.
    async_safe = True

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
        samples_per_epoch: int | None = None,
        sample_counter: Any = None,
        token_counter: str | None = None,
        step_metrics: bool = True,
        **session_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(step_metrics, bool):
            raise ValueError(f"step_metrics must be True or False, got {step_metrics!r}")
        self.step_metrics = step_metrics
        if token_counter is not None and not (isinstance(token_counter, str) and token_counter):
            raise ValueError(
                "token_counter must be the name of a metric in logs that counts tokens (Keras callbacks see no "
                f"batches), or None; got {token_counter!r}"
            )
        self._counter = BatchCounter(sample_counter, batch_name="predict output")  # checks it is a function or None
        self.token_counter = token_counter
        if samples_per_epoch is not None:
            if not (isinstance(samples_per_epoch, numbers.Integral) and not isinstance(samples_per_epoch, bool)
                    and samples_per_epoch > 0):  # NumPy's integers too (a data set's len as np.int64)
                raise ValueError(f"samples_per_epoch must be a positive int or None, got {samples_per_epoch!r}")
            samples_per_epoch = int(samples_per_epoch)
        # framework= is refused here too, as by the other adapters: the callback names its framework itself
        reject_unknown_arguments(type(self).__name__, session_kwargs, _OWN_ARGUMENTS)
        self._session_kwargs = dict(
            country=country, zone=zone, region=region, intensity=intensity, series=series, pue=pue,
            output_dir=output_dir, **session_kwargs, framework=f"keras {keras.__version__} ({keras.backend.backend()})",
        )
        self.samples_per_epoch = samples_per_epoch
        self._unused()  # bad settings fail here (the session), before training

    def _unused(self) -> None:
        """The state of a callback that has measured nothing yet: set by ``__init__``, and in a copy
        taken while a call is in progress (see ``__getstate__``)."""
        self._live_every = 0  # a TensorBoard's per-batch update_freq during a fit; 0: off
        self._live_batches = 0
        self._run = _Run(EnergySession(**self._session_kwargs))
        self._run_used = False
        # The runs this callback measured, by run id, that a model still alive trained last (and the
        # current one): an evaluate / predict continues the run of the model it is called on, not the
        # run of another model fitted with this callback since.
        self._runs: dict[Any, _Run] = {}
        self._call: _Call | None = None
        self._phases: list[tuple[str, bool]] = []  # open phases: (phase, started by an outermost call)
        self._epoch: int | None = None
        # The open epoch's training samples counted so far by the loss tracker: banked before each
        # test loop inside the epoch (fit's validation, an evaluate a callback runs between
        # batches), which resets Keras's metrics; `_train_offset` is what that loop's count left
        # in the tracker, which training then counts on from. None: not countable this epoch.
        self._train_samples: int | None = None
        self._train_tokens: tuple[int, float | None] | None = None  # (training batches begun, tokens): see _bank_train_tokens
        self._tokens_offset: float | None = 0.0  # the token metric as the last call inside the epoch left it
        # The open epoch's metrics were reset unseen (see _evaluated_unseen): its count and tokens are lost.
        self._train_reset = False
        self._watching = False  # the fit's model holds the mark of _watch_evaluations
        # None: the test loop left the tracker past its exact count (see _exact_count).
        self._train_offset: int | None = 0
        self._train_why: str | None = None  # why _train_samples is None, for _uncounted's warning
        self._test_counted = True  # the open test loop is Keras's own (its loss tracker counts it)
        # What the open test loop's count banked before the calls inside it (which may reset its
        # model's metrics), and what the last of them left in its loss tracker: as _train_samples
        # and _train_offset. None: not countable.
        self._test_banked: int | None = 0
        self._test_offset: int | None = 0
        self._loop_model: Any = None  # the model of the open test or predict loop
        self._loop_list: weakref.ref | None = None  # the CallbackList calling its hooks
        # The state of each loop a call inside it put aside (fit's validation, and an evaluate or
        # predict a callback makes inside a loop, given this callback), innermost last: the inner
        # loop's hooks use the same attributes (see _begin_inside).
        self._outside: list[tuple[dict, tuple]] = []
        self._validated = False
        self._pause_due = False  # an epoch of this fit ended: a carbon-aware pause may precede the next
        # The current call's progress (training steps, predicted samples; see _Progress).
        self._progress = _Progress()
        # Steps run in the open evaluation loop, from the batch hooks (which Keras may run out of
        # order on its worker threads; it waits for them before on_test_end): a count below them is
        # not samples, nor, for a custom step, one equal to them (see _not_steps). Training's are
        # in _progress.
        self._test_steps = 0
        self._test_calls_begun = self._test_calls_ended = 0  # as _Progress's train_calls_*
        self._seen_why = "past_exact"  # why _samples_seen last gave None (see _uncounted)
        self._steps_lock = threading.Lock()
        self._warned_samples = False
        self._warned_tokens = None  # the run the token_counter was last warned of (see _unusable_tokens)

    def __getstate__(self) -> dict:
        # Copied or pickled (scikit-learn wrappers clone their estimators' callbacks): the lock and
        # a call in progress, with its watch, are this process's.
        state = dict(self.__dict__)
        if (self._call is not None and self._call.active) or self.session.running:
            # Mid-call (another callback copying it at an epoch end): the run in progress, its meter
            # thread and the model stay with this callback, which goes on unaffected; the copy is
            # this callback as it was before measuring anything, as a copy taken before the fit is.
            fresh = object.__new__(type(self))
            fresh.__dict__.update(state)
            fresh._unused()
            fresh._model, fresh.params = None, None  # (Keras's, set as each call begins)
            state = fresh.__dict__
        state["_steps_lock"], state["_call"], state["_outside"] = None, None, []
        state["_loop_model"], state["_loop_list"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._steps_lock = threading.Lock()

    @property
    def session(self) -> EnergySession:
        return self._run.session

    @property
    def tracker(self):
        return self._run.session.tracker

    def metrics(self, phase: str) -> dict[str, float]:
        """The last finished ``phase``'s metrics (``train``, ``validation``, ``test``, ``predict``), Keras-named."""
        return self.session.metrics(phase, "val_" if phase == "validation" else "")

    # ------------------------------------------------------------------------------ training
    @never_raises
    @_whole
    def on_train_begin(self, logs: dict | None = None) -> None:
        callback_list = _calling_list(self)
        if not self._enter("fit", callback_list):
            return
        self._call.model = self.model
        progress = self._progress
        progress.planned_steps = _planned_steps(self, callback_list)  # per epoch
        batches = _fixed_batches(self.model, self._replicas()) if self._call.in_keras_loop else _NO_FIXED_BATCHES
        with progress.lock:
            progress.fixed_batch, progress.pass_batches, progress.last_batch, progress.runs_on = batches
            progress.pass_offset = 0  # a fit's epoch iterator begins a pass
        if callback_list is not None:
            self._go_first(callback_list)
        self._live_every, self._live_batches = self._tensorboard_batch_every(callback_list), 0
        self._pause_due = False

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        # No lock: Keras calls the begin hooks on the training thread only, their one writer and
        # reader (on_epoch_end). A lock here could be left acquired by a Ctrl-C (see _whole), and
        # holding Ctrl-C at every batch would cost more than the batch hook itself.
        self._progress.train_calls_begun += 1
        # TensorBoard counts its steps here, a step begun whose data ran out (no end hook) among
        # them: counted at the end hook, every later step value went where it writes none.
        self._live_batches += 1
        if self._phases and self._phases[-1] != ("train", False):  # a tuple comparison per batch
            self._end_failed_nested_calls()
        if self._evaluated_unseen_since_watched():  # an attribute read per batch
            self._evaluated_unseen()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # The steps run: a custom train_step's loss-tracker count is told from samples by them, and
        # a failed epoch's step is counted on from its start by them (an uncontended lock, no read).
        progress = self._progress
        tokens = logs.get(self.token_counter) if self.token_counter is not None and logs is not None else None
        with progress.lock:  # `batch`: a step of the execution the hook covers (see _step_range)
            if progress.nested_since:
                progress.tokens_known = False  # counted from the reset a call inside the epoch made
            if batch + 1 >= progress.train_steps:  # the latest step: asynchronous hooks may end out of order
                progress.train_tokens = tokens
            progress.train_steps = max(progress.train_steps, batch + 1)
            progress.train_calls_ended += 1
        # TensorBoard writes a batch when its count since train begin is a multiple of update_freq.
        if self._live_every and self._live_batches % self._live_every == 0 and logs is not None:
            self._add_live(logs)

    @never_raises
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        call = self._call
        if call is None or not call.active or call.kind != "fit":
            return
        if self._pause_due:  # before an epoch that follows one, never after the last: billed to the gap
            self._pause_due = False
            # Outside the hold: a pause can wait for hours, and a Ctrl-C must end it at once.
            self.session.pause_between_epochs()
        self._begin_epoch(call, epoch)

    @_whole
    def _begin_epoch(self, call: _Call, epoch: int) -> None:
        self._end_failed_nested_calls()  # one a callback's on_epoch_end made
        # Keras's fit reset the metrics just before: the loss tracker counts this epoch from 0.
        self._epoch, self._validated = epoch, False
        self._train_samples = 0 if call.in_keras_loop and call.resets_loss_tracker else None
        self._train_tokens, self._tokens_offset, self._train_reset = None, 0.0, False
        self._train_offset, self._train_why = 0, None if call.resets_loss_tracker else "not_reset"
        self._watching = _watch_evaluations(call.model)  # after Keras's reset of the metrics for this epoch
        progress = self._progress
        with progress.lock:
            progress.train_steps, progress.training = 0, False
            progress.train_calls_begun = progress.train_calls_ended = 0
            progress.per_execution = _per_execution(self.model)
            progress.applies_in_part = progress.per_execution > 1 and keras.backend.backend() == "tensorflow"
            progress.counts_tokens, progress.train_tokens = self.token_counter is not None, 0
            # A batch's logs hold the first tf.distribute replica's value (Keras's "auto" reduction of
            # the step's outputs, 3.15 too; the epoch's logs sum them since 3.10): 36 of 72 tokens on two.
            progress.tokens_known = self._replicas() <= 1
            progress.nested_since = False
            progress.trained_before_test = None
        self._phases.append(("train", False))  # first: the epoch's keys reach `logs` even if starting fails
        starting = call.run is None
        if starting:
            self._start(call, first_epoch=epoch)
        # Where the optimizer's step starts this epoch (read here, on the training thread, where the
        # model's variables are up to date on every backend): a failed epoch counts on from it. The
        # gap before the epoch ends at it too: Keras keeps the step over fits of one compiled model,
        # so a run's first record says where its training began (a second fit(epochs=1) of the
        # model ends its epoch 0 at step 8 after 4 steps; the report read 8 steps per epoch).
        step, one_step_per_batch = self._step(), _one_step_per_batch(self.model)
        if step is not None:
            self.tracker.step = step
        self.tracker.begin("train", epoch)
        self.tracker.add_samples(None)  # uncounted until its end counts it: a failed epoch stays so
        if starting and self.session.check_budget():
            # A resumed run whose budget was already spent. Keras reads stop_training only after a
            # batch: this epoch ends after its first one, the earliest Keras allows.
            self.model.stop_training = True
        with progress.lock:
            progress.step, progress.training, progress.one_step_per_batch = step, True, one_step_per_batch
            progress.epoch = epoch

    @never_raises
    @_whole
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if ("train", False) not in self._phases:
            return
        self._end_failed_nested_calls()  # one made at the epoch's last batch
        self._phases.remove(("train", False))
        if self._evaluated_unseen_since_watched():
            self._evaluated_unseen()  # one made at the epoch's last batch, with no validation since
        # What the loss tracker counted before the test loops inside the epoch reset it, plus what it
        # counted since the last of them; the steps are complete only now (Keras waits for its
        # asynchronous batch hooks before on_epoch_end, not before validation).
        self._bank_train_samples()
        count = self._train_samples
        progress = self._progress
        with progress.lock:
            steps, planned, per_execution = progress.train_steps, progress.planned_steps, progress.per_execution
            begun, ended = progress.train_calls_begun, progress.train_calls_ended
            by_batches = progress.trained_by_batches(unended=1)  # (one that ran out of data did not end)
            progress.end_epoch()
        ran_out = begun > ended
        why, (fewest, most) = self._train_why, _step_range(steps, per_execution, planned)
        if count is not None and ran_out and _may_run_past_the_data(self.model):
            count = _past_the_data(count, begun, ended, self._exact_past_the_data("train"))
            why = why if count is not None else "past_data"
        if by_batches is not None and not _custom_step(self.model, "train") and (
                count != by_batches if count is not None else why == "evaluated"):
            # Where Keras fixes the batch size, its own step counts exactly the batches ended: a
            # count off them was reset unseen, by a model.evaluate that a callback made mid-epoch
            # without this callback (76 or 148 of 100 trained), or model.reset_metrics(); and so was
            # the token metric. (A custom train_step's count may be steps: below.)
            self._train_reset = self._train_reset or count is not None
            count = by_batches
        if count is not None and 0 < count < fewest:
            # Every step counts a sample at least (Keras's own step counts its batch): the count was
            # reset during the epoch, unseen (a callback calling model.reset_metrics()).
            count, why, self._train_reset = None, "reset", True
        declared = self.samples_per_epoch
        ended_early = bool(steps) and self._ended_early(most, planned)
        if declared and ended_early:
            # A whole epoch's, which this one was not; the tracker's count is what it stands in for.
            declared, count, why = None, None, "ended_early"
        elif steps and not ended_early and planned is None and self._call is not None:
            self._call.whole_epoch_steps = max(self._call.whole_epoch_steps, most)
        samples = declared or (
            self._not_steps(count, "train", fewest, most) if count is not None else 0)
        # Keras's own loop finished no step: it called its step once, which found the data at its end
        # (TensorFlow: a data set of unknown length that an earlier epoch's steps_per_epoch used up),
        # or never called it (Keras 3.3 on torch and JAX: its iterator had no batch left).
        # Every release calls on_train_batch_begin before each step. Its fit hands such an epoch the
        # reset metrics' values as logs (``{"loss": 0.0}``), so they do not tell it from one that trained.
        found_no_data = self._call is not None and self._call.in_keras_loop and ended == 0
        if steps == 0 and (found_no_data or not any(not key.startswith("val_") for key in logs or ())):
            # No step ran (an empty data set): nothing was trained, whatever the loss tracker still
            # holds (on TensorFlow a stale count, taken for 32 samples an epoch) or was declared.
            samples = 0
        elif not samples:  # a step ran: 0 means the tracker did not count
            # The steps it ended short of: Keras's plan, else those of an earlier epoch of this fit.
            whole = self._call.whole_epoch_steps if self._call is not None else 0
            expected = planned if planned is not None else (whole if most < whole else None)
            self._uncounted("training", why, most if why == "ended_early" else fewest, expected, planned is not None)
            samples = None
        banked, token_logs = self._train_tokens, logs
        if banked is not None and logs and self.token_counter in logs:
            # What the epoch trained before the last call inside it, and, where it trained on after
            # that call (a callback's evaluate mid-epoch, which reset the metric), what it added since.
            tokens = banked[1] if banked[0] == begun else self._tokens_since(banked[1], logs[self.token_counter])
            token_logs = {**logs, self.token_counter: tokens}
        if self.token_counter is not None and steps and (
                self._train_reset or token_logs and token_logs.get(self.token_counter, 0) is None):
            # The metric counts on from a reset made inside the epoch, from the evaluation's tokens.
            self._unusable_tokens(
                f"could not count the training tokens of epoch {epoch}: the model's metrics (token_counter "
                f"{self.token_counter!r} among them) were reset inside it, unseen (a model.evaluate that a callback "
                "made without this callback in its callbacks=[...], or model.reset_metrics())",
                fix="Pass this callback on in that evaluate's callbacks=[...] to count them")
        else:
            self._add_tokens(token_logs)
        step = self._step()
        self.tracker.end("train", samples=samples, step=step)
        with progress.lock:
            progress.training = False
            if step is not None:
                progress.step = step
        if self.session.check_budget():
            self.model.stop_training = True  # Keras ends fit after this epoch's callbacks (ModelCheckpoint too)
        self._run.last_train_epoch, self._run.failed_in_epoch = epoch, None
        self._run.claim()
        _remember_run_of(self.model, self.tracker.run_id)
        self._run.save_state(wait=False)
        if logs is not None:
            # History appends each key of an epoch's logs to its own list: on torch and JAX an epoch
            # of Keras's own loop that ran no step gets no logs from Keras (no `loss`), and keys
            # added there alone made our lists longer than Keras's (pandas.DataFrame(history.history)
            # raised). Such an epoch's keys go where Keras's go; its record, and the next epoch's
            # totals, count it. (TensorFlow logs the reset metrics there: the keys are added.)
            keras_logged_training = (not (steps == 0 and self._call.in_keras_loop)
                                     or any(not key.startswith("val_") for key in logs))
            if keras_logged_training:
                logs.update(self._keras_metrics("train", ""))
            if self._validated and (keras_logged_training or logs):
                logs.update(self._keras_metrics("validation", "val_"))
        self._pause_due = True  # carbon-aware, if configured: before the next epoch, if one follows

    @never_raises
    @_whole
    def on_train_end(self, logs: dict | None = None) -> None:
        self._live_every = 0
        call = self._call
        if call is not None and call.kind == "fit" and call.active:
            self._end_failed_nested_calls()  # one a callback's last on_epoch_end made
            self._leave()
            self._forget_the_backup(call)

    # ------------------------------------------------------------------ validation and test
    @never_raises
    @_whole
    def on_test_begin(self, logs: dict | None = None) -> None:
        callback_list = _calling_list(self)
        outermost = self._enter("evaluate", callback_list)
        in_fit = not outermost and self._call.kind == "fit" and ("train", False) in self._phases
        phase = "validation" if in_fit and callback_list is self._call.callback_list else "test"
        if outermost:
            self._progress.planned_steps = _planned_steps(self, callback_list)  # evaluate's own
            self._start(self._call)
        if not outermost:
            # Validation runs the fit's model: Keras points the callback at no model for it, and a
            # call of another model made at the epoch's last batch, which raised, left it there.
            model = self._call.model if phase == "validation" else self._model
            # One made at the epoch's last batch (before its validation), or just before this one.
            self._end_failed_nested_calls(self._calls_inside_running() - 1)
            self._begin_inside(model, testing=True)
        self._loop_model = self._model
        self._loop_list = weakref.ref(callback_list) if callback_list is not None else None
        # Keras's own evaluate loop, which resets the metrics as it begins (see _Call.in_keras_loop).
        self._test_counted = self._call.in_keras_loop or (not outermost and _model_call_frame(self.model) is not None)
        self._phases.append((phase, outermost))
        # A lock of this loop's own: an earlier loop's could have been left acquired by a Ctrl-C in
        # its batch hook (see on_test_batch_end). Keras has waited for that loop's batch hooks.
        self._steps_lock = threading.Lock()
        self._test_steps = 0
        self._test_calls_begun = self._test_calls_ended = 0
        self._test_banked, self._test_offset = 0, 0
        self.tracker.begin(phase, self._epoch if phase == "validation" else None)
        self.tracker.add_samples(None)  # uncounted until its end counts it: a failed loop stays so

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._outside:  # a loop inside another, or one a call was made inside
            self._end_failed_calls_inside()
        self._test_calls_begun += 1  # the training thread's only (see on_train_batch_begin)

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Locked: Keras may run these on several threads at once. On the training thread (Keras
        # dispatching synchronously) a Ctrl-C under a trace function (a debugger) can leave the
        # lock acquired; the loop is over then, and the next one takes a lock of its own.
        with self._steps_lock:  # `batch`: a step of the execution the hook covers (see _step_range)
            self._test_steps = max(self._test_steps, batch + 1)
            self._test_calls_ended += 1

    @never_raises
    @_whole
    def on_test_end(self, logs: dict | None = None) -> None:
        if self._outside:  # calls inside this loop that raised, their exception caught inside it
            self._end_failed_nested_calls(self._calls_inside_running())
        if not self._phases or self._phases[-1][0] not in ("validation", "test"):
            return
        phase, outermost = self._phases.pop()
        # No step ran (an empty validation set) when Keras's logs are empty: then the loss tracker
        # holds a stale count on TensorFlow and JAX (their loops sync metrics only after a step).
        with self._steps_lock:
            steps, begun, ended = self._test_steps, self._test_calls_begun, self._test_calls_ended
        seen = self._test_samples_seen()
        # (An empty validation set runs out at its first call: no step ran, and no count moved.)
        past_data = begun > ended and steps > 0 and _may_run_past_the_data(self.model)
        if past_data and _past_the_data(seen, begun, ended, self._exact_past_the_data("test")) is not None:
            past_data = False  # the count holds no step without data: exact
        counted = bool(logs) and self._test_counted
        # Validation's planned steps are not known here (the fit's params are training's).
        fewest, most = _step_range(steps, _per_execution(self.model), self._progress.planned_steps if outermost else None)
        why = None
        if counted and past_data:
            why = "past_data"
        elif counted and seen is None:
            why = self._seen_why
        elif counted and not self._call.resets_loss_tracker:
            why = "not_reset"
        elif counted and 0 < seen < fewest:  # reset during the loop, unseen (see on_epoch_end)
            why = "reset"
        samples = self._not_steps(seen, "test", fewest, most) if counted and why is None else 0
        if why is not None:
            self._uncounted(phase, why, fewest)
            samples = None
        elif not samples and (logs or not self._test_counted):
            self._uncounted(phase)
            samples = None
        if not outermost:
            self._end_inside()
        self._add_tokens(logs)
        self.tracker.end(phase, samples=samples, step=self._step())
        self._validated = self._validated or phase == "validation"
        if outermost:
            self._leave()

    # ------------------------------------------------------------------------------ predict
    @never_raises
    @_whole
    def on_predict_begin(self, logs: dict | None = None) -> None:
        callback_list = _calling_list(self)
        outermost = self._enter("predict", callback_list)
        if outermost:
            self._start(self._call)
        else:
            model = self._model
            self._end_failed_nested_calls(self._calls_inside_running() - 1)  # one made just before
            self._begin_inside(model, testing=False)
        self._loop_model = self._model
        self._loop_list = weakref.ref(callback_list) if callback_list is not None else None
        progress = self._progress
        with progress.lock:
            progress.predicted, progress.predicting = 0, True
        self._phases.append(("predict", outermost))
        self.tracker.begin("predict")

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._outside:  # a loop inside another, or one a call was made inside
            self._end_failed_calls_inside()

    @never_raises
    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # The leading dimension of the batch's outputs: shape metadata, no device sync. Keras
        # passes {"outputs": array, list or tuple}, or a dict-output model's own dict.
        logs = logs or {}
        outputs = logs["outputs"] if len(logs) == 1 and "outputs" in logs else logs
        if _a_number(outputs) or (isinstance(outputs, dict) and outputs and all(map(_a_number, outputs.values()))):
            # Keras 3.7+ hands the logs through float() (pythonify_logs): a batch of one sample's
            # outputs arrive as plain numbers (on torch, or where NumPy is older than 2.4), and
            # left the whole predict uncounted.
            samples = 1
        else:
            samples, _ = self._counter.count(outputs, self.tracker.run_id)
        progress = self._progress
        with progress.lock:
            if samples is None or progress.predicted is None:
                progress.predicted = None
            else:
                progress.predicted += samples

    @never_raises
    @_whole
    def on_predict_end(self, logs: dict | None = None) -> None:
        if self._outside:  # calls inside this loop that raised, their exception caught inside it
            self._end_failed_nested_calls(self._calls_inside_running())
        if not self._phases or self._phases[-1][0] != "predict":
            return
        _, outermost = self._phases.pop()
        progress = self._progress
        with progress.lock:
            samples, progress.predicting = progress.predicted, False
        if samples is None:
            self.tracker.add_samples(None)  # the counter warned
        if not outermost:
            self._end_inside()
        self.tracker.end("predict", samples=samples, step=self._step())
        if outermost:
            self._leave()

    # ----------------------------------------------------------------------------- internals
    def _enter(self, kind: str, callback_list: keras.callbacks.CallbackList | None) -> bool:
        """A Keras call begins; True when it is an outermost call (not validation inside ``fit``)."""
        if callback_list is not None:
            _drop_repeats(self, callback_list, kind)
        call = self._call
        if call is not None and call.active:
            if kind != "fit" and call.running():  # nothing runs a fit inside another call
                return False
            call.abandon()  # the previous call raised: record what it measured, if the watch has not yet
        # What a call that raised left open, whether the watch wrote it up first or not: a loop's state
        # put aside held its model (an EMA copy the user let go) and made every later loop check for
        # calls inside it.
        self._phases.clear()
        self._outside.clear()
        self._call = _Call(kind, callback_list, _model_call_frame(self.model))
        self._call.resets_loss_tracker = kind == "predict" or _resets_loss_tracker(self.model)
        self._progress = self._call.progress
        return True

    def _owner(self, call: _Call) -> _Owner:
        """This callback as the owner of its run's state files in ``call`` (a fit)."""
        mine = [c for c in getattr(call.callback_list, "callbacks", []) if isinstance(c, EnergyCallback)]
        place = next((i for i, c in enumerate(mine) if c is self), 0)
        return _Owner(self._session_kwargs.get("run_id"), place)

    def _leave(self) -> None:
        """The outermost call ended normally: close the run's books for now (a collective). Whole:
        a Ctrl-C after the call was closed and before its run stopped left the meter running."""
        with interrupts.held():
            call = self._call
            call.close()
            self._phases.clear()
            if call.run is not None:
                call.run.session.stop()
                if call.run.fitted:  # an evaluate / predict alone leaves energy-state.json to the run that trained
                    call.run.save_state()

    def _go_first(self, callback_list: keras.callbacks.CallbackList) -> None:
        """Move to the front of the list, so every callback's ``on_epoch_end`` sees the energy keys.

        Safe inside the list's own loop over its callbacks: the ones after this callback keep
        their positions, so the loop calls each of them once.
        """
        callbacks = callback_list.callbacks
        index = next(i for i, c in enumerate(callbacks) if c is self)
        if any(isinstance(c, EnergyCallback) for c in callbacks[:index]):
            # Each writes the same keys into the epoch's logs: the loggers see only one of them.
            warn_two_callbacks("fit", "each overwrites the other's values")
            return
        if index == 0:
            return
        overtaken = [type(c).__name__ for c in callbacks[:index] if _overrides_epoch_end(c)]
        callbacks.insert(0, callbacks.pop(index))
        if overtaken:
            warn(
                f"greencallbacks: EnergyCallback came after {', '.join(overtaken)} in callbacks=[...]. Keras "
                "hands each epoch's logs to callbacks in list order, so those would have missed the energy "
                "metrics; EnergyCallback moved itself to the front of the list for this fit. Put "
                "EnergyCallback first in callbacks=[...] to silence this warning."
            )

    def _step(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return int(keras.ops.convert_to_numpy(optimizer.iterations))


_OWN_ARGUMENTS = keyword_names(EnergyCallback.__init__)
