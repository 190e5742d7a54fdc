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

# _callback imports transformers (or says how to install it) before the modules that use it.
from greencallbacks.hf._callback import EnergyCallback

# Private names that tests and benchmarks import from the package (re-exported as such). A test that
# patches a name patches it where it is read (``_callback._LOOPS``, ``_wrappers._loop_arguments``).
from greencallbacks.hf._callback import _wrap_trainer as _wrap_trainer
from greencallbacks.hf._counts import _rows_per_pair as _rows_per_pair
from greencallbacks.hf._trainer import _OWNERS as _OWNERS
from greencallbacks.hf._trainer import _devices_and_sync as _devices_and_sync

# A Trainer pickled by a version before this package was split into modules names the wrappers the
# callback set on it here (``greencallbacks.hf._CountingTrainingStep``): unpickling looks them up here.
from greencallbacks.hf._callback import _NotingReplacedCallbacks as _NotingReplacedCallbacks
from greencallbacks.hf._wrappers import _CountingPredictionStep as _CountingPredictionStep
from greencallbacks.hf._wrappers import _CountingPreparedInputs as _CountingPreparedInputs
from greencallbacks.hf._wrappers import _CountingTrainingStep as _CountingTrainingStep
from greencallbacks.hf._wrappers import _MeasuredLoop as _MeasuredLoop
from greencallbacks.hf._wrappers import _ObjectiveWithoutEnergy as _ObjectiveWithoutEnergy

__all__ = ["EnergyCallback"]
