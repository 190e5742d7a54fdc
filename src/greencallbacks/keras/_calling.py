"""Who is calling the callback: the ``CallbackList`` whose method runs its hook, the model's
``fit`` / ``evaluate`` / ``predict`` frames on the stack, and what that list and the fit hold.

Keras gives callbacks no handle on the ``CallbackList`` that calls them, nor on the data of the
call: both are found by looking at the caller's frames (every Keras 3 backend calls callbacks from
``CallbackList`` methods, inside its public ``fit`` / ``evaluate`` / ``predict``). From the list:
the callbacks it holds (this one listed twice, the callbacks it goes before), the steps Keras
planned, a ``BackupAndRestore`` and whether it restores a backup, a KerasTuner trial; from the
fit's frame, the batch sizes its data adapter fixes. A future Keras that hides them leaves each
not known (None), never guessed. The callback (``_callback``) decides when to read.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import keras

from greencallbacks import watch
from greencallbacks.keras._backend import epochs_run_on_in_passes
from greencallbacks.keras._counts import _KERAS_VERSION, _per_execution
from greencallbacks.meter import warn

_Callback = keras.callbacks.Callback


def _calling_list(callback: _Callback) -> keras.callbacks.CallbackList | None:
    """The ``CallbackList`` whose method is calling ``callback`` right now, if any."""
    frame = sys._getframe(2)  # above this function and the hook
    try:
        for _ in range(4):
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList) and any(c is callback for c in owner.callbacks):
                return owner
            frame = frame.f_back
        return None
    finally:
        del frame  # frames in locals make reference cycles


def _drop_repeats(callback: _Callback, callback_list: keras.callbacks.CallbackList, kind: str) -> None:
    """``callbacks=[energy, energy]``: Keras would call each of its hooks twice, beginning every
    phase twice (nested) and counting its samples twice. Its first place stays, for this call.

    Called from its first place (the list's loop reaches it first): dropping later entries leaves
    the loop's position, so every other callback is still called once."""
    callbacks = callback_list.callbacks
    places = [i for i, c in enumerate(callbacks) if c is callback]
    if len(places) < 2:
        return
    for i in reversed(places[1:]):
        del callbacks[i]
    warn(f"greencallbacks: EnergyCallback is listed {len(places)} times in {kind}(callbacks=[...]), so Keras would "
         "call each of its hooks that many times and count every phase's samples as often; it kept its first "
         "place only. List it once to silence this warning.")


def _model_call_frame(model: Any):
    """The frame of the ``fit`` / ``evaluate`` / ``predict`` of ``model`` that is calling us (public API names)."""
    return watch.calling_frame(lambda f: f.f_code.co_name in _MODEL_CALLS and f.f_locals.get("self") is model)


_MODEL_CALLS = ("fit", "evaluate", "predict")


def _calls_running(callback: _Callback) -> int:
    """How many ``evaluate`` / ``predict`` calls given ``callback`` are on this thread's stack (the
    fit's validation among them), of whatever model: a call inside a call of another model (an EMA
    copy's evaluate inside the fit's validation, the fit's predict inside it) counts. Walks the
    whole stack: only as a call inside another begins or ends.

    A call is told by the ``CallbackList`` its loop runs (Keras's loop makes one of the list it is
    given): a user's override of ``evaluate`` that takes ``callbacks`` and calls ``super()`` holds
    the same list, or the plain list it was given, in a frame of the same name, and counted as a
    second call (a failed call inside it then stayed open, and the loop around it ended as failed)."""
    frame, lists = sys._getframe(1), set()
    try:
        while frame is not None:
            if frame.f_code.co_name in ("evaluate", "predict"):
                callbacks = frame.f_locals.get("callbacks")
                if isinstance(callbacks, keras.callbacks.CallbackList) and any(c is callback for c in callbacks.callbacks):
                    lists.add(id(callbacks))
            frame = frame.f_back
        return len(lists)
    finally:
        del frame  # frames in locals make reference cycles


def _overrides_epoch_end(callback: _Callback) -> bool:
    method = callback.on_epoch_end
    return getattr(method, "__func__", method) is not _Callback.on_epoch_end


_NO_FIXED_BATCHES = (None, None, None, False)  # see _fixed_batches: not known


def _fixed_batches(model: Any, replicas: int) -> tuple[int | None, int | None, int | None, bool]:
    """``(batch size, pass, last, runs on)`` of the training data of the ``fit`` of ``model`` in
    progress, where Keras's data adapter fixes them: every batch has ``batch size`` samples but the
    last of each pass over the data, the ``pass``-th batch (None: no pass ends, every batch), which
    has ``last``; ``runs on``: an epoch begins where the last one stopped in the pass, not at its
    start. ``(None, None, None, False)`` where they are not known.

    Known for NumPy arrays and tensors (Keras slices them into batches of ``batch_size``, the last
    one shorter, and starts each epoch at their start unless given ``steps_per_epoch``, which runs
    on where the last epoch stopped and ends an epoch at the pass's end: see
    ``_Progress.trained_by_batches``) and for a ``tf.data`` data set whose batch dimension is static
    (``drop_remainder=True``: every batch has it, a promise of TensorFlow's; its passes end as the
    arrays' do where its length is known; with ``steps_per_execution`` > 1 it must be known, or
    endless). Not for a generator, a ``PyDataset`` or a torch ``DataLoader`` (a sampler, a
    ``collate_fn`` or an iterable data set may make any batch shorter), nor on several replicas (a
    multi-worker strategy shards the data).
    Read from the ``epoch_iterator`` of the ``fit`` frame (the same name in Keras 3.3 and 3.15, on
    every backend), on the training thread as the fit begins: nothing is read while it trains."""
    if replicas != 1:
        return _NO_FIXED_BATCHES
    frame = _model_call_frame(model)
    try:
        iterator = frame.f_locals.get("epoch_iterator") if frame is not None else None
    except Exception:  # noqa: BLE001 - a frame's locals a future Python refuses: not known
        iterator = None
    finally:
        del frame  # frames in locals make reference cycles
    adapter = getattr(iterator, "data_adapter", None)
    kind = type(adapter).__name__
    try:
        size = adapter.batch_size if kind in ("ArrayDataAdapter", "TFDatasetAdapter") else None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return _NO_FIXED_BATCHES
        runs_on = iterator.steps_per_epoch is not None
        if kind == "TFDatasetAdapter":
            # A static batch dimension: every batch has it. A data set of known length ends its
            # passes as arrays do (an endless one never does): 5 batches by 2 steps ran 2, 2 and 1.
            batches, last = adapter.num_batches, size
            if batches is None and _endless(adapter):
                return size, None, None, False
        else:
            batches, last = adapter.num_batches, adapter.partial_batch_size or size
        if not isinstance(batches, int) or batches < 1 or (runs_on and not epochs_run_on_in_passes(_KERAS_VERSION)):
            # Where a pass ends, or an epoch begins in it, is not known: every batch is full where the
            # last one is, but an execution of several steps may have stopped at the pass's end.
            return (size, None, None, False) if last == size and _per_execution(model) == 1 else _NO_FIXED_BATCHES
        if isinstance(last, int) and 0 < last <= size:
            return size, batches, last, runs_on
    except Exception:  # noqa: BLE001 - a data adapter of another Keras: not known
        pass
    return _NO_FIXED_BATCHES


def _endless(adapter: Any) -> bool:
    """Is the ``tf.data`` data set of a ``TFDatasetAdapter`` endless (``repeat()``)? Its ``num_batches``
    is None for that and for a length TensorFlow does not know (``filter()``) alike. False where not told."""
    try:
        cardinality = adapter._dataset.cardinality  # a method; an attribute of a DistributedDataset (as Keras reads it)
        return int(cardinality() if callable(cardinality) else cardinality) == -1  # tf.data.INFINITE_CARDINALITY
    except Exception:  # noqa: BLE001 - an adapter of another Keras
        return False


def _planned_steps(callback: _Callback, callback_list: keras.callbacks.CallbackList | None) -> int | None:
    """The ``steps`` that the call's ``CallbackList`` was given, where Keras knows them: a list built
    without them (Keras never sets them then) leaves the callback the ``params`` of an earlier call."""
    params = getattr(callback_list, "params", None) if callback_list is not None else getattr(callback, "params", None)
    steps = params.get("steps") if isinstance(params, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def _restores_a_backup(callback_list: keras.callbacks.CallbackList | None) -> bool:
    """Does a ``BackupAndRestore`` of this fit restore a backup (asked when its first epoch begins)?

    Its ``training_metadata.json`` is written with every backup and deleted when a fit ends
    normally, and this fit has saved none before its first epoch begins: one that is there was
    left by a fit that did not end, and restored in ``on_train_begin``. The restored epoch itself
    comes to us as the first epoch; this tells a restore inside epoch 0 (``save_freq=<steps>``)
    from a new fit. The file name is the same in Keras 3.3 and 3.15 (read); a backup on a remote file
    system (``gs://``) is not seen, and the fit is then measured as a new run.
    """
    backup_dir = _backup_dir(callback_list)
    return backup_dir is not None and os.path.isfile(_backup_metadata(backup_dir))


def _tuners_trial(callback_list: keras.callbacks.CallbackList | None) -> str | None:
    """The trial id of a KerasTuner trial's fit (its ``TunerCallback`` in the list; "" where it names
    none), else None. Such a fit from ``initial_epoch`` > 0 is Hyperband going on from another
    trial's saved weights in a model built anew, not a resume: the run named in
    ``energy-state.json`` is merely the trial trained last."""
    tuners = [callback for callback in getattr(callback_list, "callbacks", [])
              if type(callback).__module__.split(".")[0] == "keras_tuner"]
    if not tuners:
        return None
    return next((str(trial.trial_id) for c in tuners if getattr(trial := getattr(c, "trial", None), "trial_id", None)), "")


def _backup_metadata(backup_dir: str) -> str:
    return os.path.join(backup_dir, "training_metadata.json")


def _backup_dir(callback_list: keras.callbacks.CallbackList | None) -> str | None:
    """The backup directory of this fit's ``BackupAndRestore``, if it has one."""
    for callback in getattr(callback_list, "callbacks", []):
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            return os.fspath(callback.backup_dir)
    return None
