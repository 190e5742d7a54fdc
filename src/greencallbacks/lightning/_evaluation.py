"""The validation, test and predict loops' hooks (``_EvaluationHooks``): each loop's phase begun and
ended, its batches counted, and the epoch it is labelled with.
"""

from __future__ import annotations

from typing import Any

from greencallbacks.guard import hook_failed, never_raises
from greencallbacks.lightning._logging import PREFIXES, _finite


class _EvaluationHooks:
    """Part of ``EnergyCallbackBase``: its validation, test and predict hooks. No state of its
    own: they read and write the callback's (see ``EnergyCallbackBase.__init__``)."""

    # ---------------------------------------------------------------------------- validation
    @never_raises
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.val_dataloaders, "validation")
        if not trainer.sanity_checking:  # the sanity check is billed to `other`
            self.tracker.begin("validation", self._evaluation_epoch(trainer))

    @never_raises
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._counter.collate = self._train_collates[0] if self._train_collates else None  # training goes on
        self._counter.loader_batches = self._train_loader_batches

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        try:  # guarded here, as on_train_batch_end
            if not trainer.sanity_checking:
                self._add_evaluated(batch, dataloader_idx)
        except Exception as error:  # noqa: BLE001
            hook_failed(self, "on_validation_batch_end", error)

    def _evaluation_epoch(self, trainer: Any) -> int:
        """The checkpoint's epochs run for an evaluation that restored one, or the Trainer's epoch
        (a fit's own validation: set only outside ``fit``)."""
        return self._checkpoint_epoch if self._checkpoint_epoch is not None else trainer.current_epoch

    @never_raises
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._end_and_log("validation", trainer, pl_module)

    # ---------------------------------------------------------------------------------- test
    @never_raises
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.test_dataloaders, "test")
        self.tracker.begin("test", self._evaluation_epoch(trainer))

    @never_raises
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._add_evaluated(batch, dataloader_idx)

    @never_raises
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_and_log("test", trainer, pl_module)

    # ------------------------------------------------------------------------------- predict
    @never_raises
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._plan_evaluation(trainer, trainer.predict_dataloaders, "predict")
        self.tracker.begin("predict", self._evaluation_epoch(trainer))

    @never_raises
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._add_evaluated(batch, dataloader_idx)

    @never_raises
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker.end("predict", step=trainer.global_step) is None:
            return
        # Lightning forbids `self.log` in predict hooks: write to the loggers directly, at the
        # step its test and validate metrics go to (global_step counts every optimizer's steps
        # under manual optimization: twice as far with two), saved now (no log of Lightning's follows).
        metrics = _finite(self.session.metrics("predict", self.prefix + PREFIXES["predict"]))
        self._to_loggers(metrics, trainer)
        for logger in trainer.loggers:
            logger.save()
