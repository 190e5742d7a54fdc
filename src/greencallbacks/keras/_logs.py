"""What the callback puts into Keras's ``logs`` (``_LoggedValues``): the energy keys of each epoch,
and the step values of the batches a ``TensorBoard`` in the same list writes.
"""

from __future__ import annotations

import math

import keras

from greencallbacks.guard import never_raises
from greencallbacks.tracker import METRIC_STEMS


class _LoggedValues:
    """Part of ``EnergyCallback``: its methods that add values to Keras's ``logs``. No state of
    its own: they read the callback's (see ``EnergyCallback._unused``)."""

    @never_raises
    def _add_live(self, logs: dict) -> None:
        if self._call is not None and self._call.run is not None and self.session.running:
            logs.update(self.session.live_metrics())
            if self.session.budget_stops_training:  # Keras ends the epoch after this batch
                self.model.stop_training = True

    def _tensorboard_batch_every(self, callback_list: keras.callbacks.CallbackList | None) -> int:
        """The ``update_freq`` of a TensorBoard in the list that logs batches; 0 when none does."""
        if not self.step_metrics:
            return 0
        for callback in getattr(callback_list, "callbacks", []):
            every = getattr(callback, "update_freq", None) if isinstance(callback, keras.callbacks.TensorBoard) else None
            if isinstance(every, int) and not isinstance(every, bool) and every > 0:
                return every
        return 0

    def _keras_metrics(self, phase: str, prefix: str) -> dict[str, float]:
        # The same keys at every epoch, NaN until known (the prediction, from a fit's 4th epoch):
        # CSVLogger fixes its columns at a fit's first epoch and, appending, never checks them
        # against the file's header, and History appends per key, so a key that appears later
        # misaligns both (pandas.DataFrame(history.history) raises).
        values = self.session.metrics(phase, prefix)
        out = {prefix + stem: values.get(prefix + stem, math.nan) for stem in METRIC_STEMS}
        out.update({k: v for k, v in values.items() if k not in out})
        if self.token_counter is not None:  # an epoch whose batches carried no token
            out.setdefault(prefix + "energy_j_per_token", math.nan)
        return out
