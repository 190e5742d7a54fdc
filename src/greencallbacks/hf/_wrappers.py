"""Methods wrapped on one Trainer instance: steps counted, loops measured, HF's objective without energy."""

from __future__ import annotations

import inspect
import math
import sys
from typing import TYPE_CHECKING, Any

from transformers import Trainer

from greencallbacks.hf._counts import _samples_run
from greencallbacks.hf._trainer import _MERGED, _owners
from greencallbacks.meter import warn

if TYPE_CHECKING:
    from greencallbacks.hf._callback import EnergyCallback


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


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    # Per-sample values are NaN when nothing was counted; loggers (MLflow) reject NaN.
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
