"""Where the callback's values go (``_LoggedValues``): every logger, at the step Lightning's own
metrics use, ``trainer.callback_metrics``, ``trainer.logged_metrics`` and the progress bar; an
epoch's values through ``LightningModule.log`` where that call returns them (``test``, ``validate``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from greencallbacks.meter import warn

PREFIXES = {"train": "", "validation": "val_", "test": "test_", "predict": "predict_"}
# The progress bar has little room: the running totals are what a user watches.
PROGRESS_BAR_METRICS = ("energy_kwh_total", "co2eq_g_total")


class _LoggedValues:
    """Part of ``EnergyCallbackBase``: its methods that log the values. No state of its own: they
    read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

    # ------------------------------------------------------------------------------- logging
    def _end_and_log(self, phase: str, trainer: Any, pl_module: Any) -> None:
        """End ``phase`` (a collective: every rank is in this hook) and log its metrics.

        Training and in-fit validation go straight to every logger, at the step and with the
        ``epoch`` key Lightning uses for the epoch's own metrics (``_to_loggers``):
        ``LightningModule.log`` would cost ~0.6 ms per value every epoch. The values are also
        put in ``trainer.callback_metrics`` (so checkpointing and early stopping can monitor them)
        and the progress bar. ``test`` and standalone ``validate`` go through ``pl_module.log`` so
        that they are part of the results those calls return.
        """
        if self.tracker.end(phase, step=trainer.global_step) is None:
            return
        if phase == "train" and self.session.check_budget():  # before logging: its metrics go with the epoch's
            self._stop_training(trainer)  # Lightning ends after this epoch: checkpoints and loggers finish as usual
        values = self.session.metrics(phase, self.prefix + PREFIXES[phase])
        metrics = _finite(values)
        if phase == "train" or (phase == "validation" and trainer.state.fn == "fit"):
            # Lightning writes a training epoch's metrics one step back (its loop has already
            # counted the next batch); validation at the current step. LearningRateMonitor reads
            # the same counter.
            left_out = [name for name in values if name not in metrics]
            per_token = self.prefix + PREFIXES[phase] + "energy_j_per_token"
            if per_token not in metrics:
                # A phase without tokens, or counted in part (its token_counter failed there), has no
                # per-token value: left in callback_metrics, an earlier epoch's cost per token stood as this one's.
                left_out.append(per_token)
            self._log_directly(metrics, trainer, phase, left_out=left_out)
            return
        # Every rank already holds the same summed values; syncing with `max` keeps them exact and
        # tells Lightning they are synchronised (it warns about unsynchronised epoch metrics).
        # As float64 tensors on the module's device: a float becomes float32 there (a relative
        # 3e-8 off the records), and `max` keeps the wider type. MPS has no float64.
        import torch

        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        for name, value in metrics.items():
            pl_module.log(
                name,
                torch.tensor(value, dtype=dtype, device=device),
                on_step=False,
                on_epoch=True,
                logger=bool(trainer.loggers),  # without loggers we warned once in setup; Lightning would per name
                batch_size=1,
                sync_dist=trainer.world_size > 1,
                reduce_fx="max",
            )

    def _log_live(self, trainer: Any) -> None:
        """The run's totals so far and the power since the last such log, at Lightning's logging step.

        To every logger at the step Lightning's own step metrics use (see ``_to_loggers``), and
        into the progress bar; not into ``callback_metrics``, which keep the epoch's values for
        checkpoints and early stopping.
        """
        values = _finite(self.session.live_metrics(self.prefix))
        if self.session.budget_stops_training:  # on every rank alike: Lightning ends the epoch after this batch
            self._stop_training(trainer)
        if not values or not trainer.is_global_zero:
            return
        self._to_loggers(values, trainer)
        if self.progress_bar:
            self._to_bar(values, trainer)

    def _log_directly(self, metrics: dict[str, float], trainer: Any, phase: str, left_out: Iterable[str] = ()) -> None:
        import torch

        # Lightning writes a training epoch's metrics one step back (its loop has already counted
        # the next batch), validation's at the current step. LearningRateMonitor reads the same counter.
        self._to_loggers({**metrics, "epoch": trainer.current_epoch}, trainer, steps_back=int(phase == "train"),
                         left_out=left_out)
        shown = _shown(trainer, "_callback_metrics")
        # Lightning keeps callback_metrics over a fit's epochs: an epoch that counted no sample
        # would show the last counted epoch's per-sample cost as its own (to ModelCheckpoint, and
        # to mlflow.pytorch.autolog, which logs them at this epoch).
        for name in left_out:
            shown.pop(name, None)
        # float64, as validate() and test() put them there: torch.tensor(float) is float32, a
        # relative 3e-8 off the records in what reads them (mlflow.pytorch.autolog logs
        # callback_metrics into a float64 store).
        shown.update({name: torch.tensor(value, dtype=torch.float64) for name, value in metrics.items()})
        if self.progress_bar and phase == "train":
            self._to_bar(metrics, trainer)

    def _to_bar(self, values: dict[str, float], trainer: Any) -> None:
        """The running totals among ``values`` into the progress bar."""
        bar = _shown(trainer, "_progress_bar_metrics")
        for name in (self.prefix + stem for stem in PROGRESS_BAR_METRICS):
            if name in values:
                bar[name] = values[name]

    def _to_loggers(self, values: dict[str, float], trainer: Any, steps_back: int = 0,
                    left_out: Iterable[str] = ()) -> None:
        """``values`` to every logger (each writes on rank 0 only), at the step Lightning's own metrics use;
        ``trainer.logged_metrics`` shows them, and no longer shows the names ``left_out``.

        Each logger's public ``log_metrics``, without the ``save()`` that Lightning's connector adds
        to every call: a save costs 0.4-1 ms on the training thread (the CSV logger appends to its
        file, TensorBoard flushes its event file). The values are written at the logger's own
        cadence instead: at Lightning's next log of its own metrics, which saves every logger, at
        the CSV logger's ``flush_logs_every_n_steps``, and at ``finalize``, which Lightning calls
        when a fit ends and when it fails.
        """
        stepped = _batches_that_stepped(trainer)
        if stepped is not None:
            step = stepped - steps_back
        else:
            step = trainer.global_step
            if not self._warned_seams:
                self._warned_seams = True
                warn(
                    "greencallbacks: this Lightning version has no fit_loop.epoch_loop._batches_that_stepped; "
                    "energy goes to each logger at the global step instead (values unchanged, steps may "
                    "differ by one from Lightning's own epoch metrics)."
                )
        for logger in trainer.loggers:
            if _csv_writer_without_prefix(logger):
                # Its log_metrics also saves when step + 1 is a multiple of its
                # flush_logs_every_n_steps, which our epoch and step values often are (every
                # 100-step epoch): a save Lightning's own log at that step makes anyway.
                logger.experiment.log_metrics(values, step)
            else:
                logger.log_metrics(values, step=step)
        # What trainer.logged_metrics shows (its public property computes the module's metrics first).
        # Kept over the fit like callback_metrics: a value this epoch leaves out is dropped there too.
        logged = getattr(getattr(trainer, "_logger_connector", None), "_logged_metrics", None)
        if isinstance(logged, dict):
            for name in left_out:
                logged.pop(name, None)
            logged.update(values)


def _batches_that_stepped(trainer: Any) -> int | None:
    """The step Lightning logs its own metrics at (a private counter in 2.2 to 2.6), or None when a release drops it."""
    stepped = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    return stepped if isinstance(stepped, int) else None


def _shown(trainer: Any, name: str) -> dict:
    """The dict behind ``trainer.callback_metrics`` (``name`` ``"_callback_metrics"``) or
    ``trainer.progress_bar_metrics`` (``"_progress_bar_metrics"``), to put our values in.

    Each public property first gathers every metric the module logged (``_ResultCollection.metrics``)
    and turns each progress-bar tensor into a number with ``.item()``: 20-70 us at a logging step
    on a CPU, and a wait for the queued steps on a GPU. Updating the dict it returns shows the
    same values wherever the property is read. Private (Lightning 2.2 to 2.6): where a release
    drops it, the property.
    """
    shown = getattr(getattr(trainer, "_logger_connector", None), name, None)
    if isinstance(shown, dict):
        return shown
    return trainer.callback_metrics if name == "_callback_metrics" else trainer.progress_bar_metrics


def _csv_writer_without_prefix(logger: Any) -> bool:
    """Lightning's CSV logger, whose writer (its public ``experiment``) takes our values as they are.

    Only with Lightning's own ``log_metrics`` (a subclass's override is the user's and runs) and
    no ``prefix`` (a private attribute since 2.0, read with a default that says no): any other
    logger goes through ``log_metrics``, which costs at most a save more.
    """
    log_metrics = getattr(type(logger), "log_metrics", None)
    return (
        getattr(log_metrics, "__qualname__", None) == "CSVLogger.log_metrics"
        and getattr(log_metrics, "__module__", "").endswith("fabric.loggers.csv_logs")
        and getattr(logger, "_prefix", None) == ""
    )


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """Per-sample values are NaN when no samples were counted: leave them out rather than log NaN."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}

