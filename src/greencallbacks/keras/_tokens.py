"""The tokens of a Keras loop (``_TokenCounting``): the ``token_counter`` metric, read from the
epoch's ``logs`` and banked around the calls inside a training epoch, and the one warning per run
where it cannot be used.
"""

from __future__ import annotations

from typing import Any

import keras

from greencallbacks.keras._backend import logs_sum_metrics_over_replicas
from greencallbacks.keras._counts import _KERAS_VERSION
from greencallbacks.meter import warn


class _TokenCounting:
    """Part of ``EnergyCallback``: its methods that count a loop's tokens. No state of its own:
    they read and write the callback's (see ``EnergyCallback._unused``)."""

    def _bank_train_tokens(self) -> None:
        """The training epoch's tokens as a loop inside the epoch begins (the fit's validation, a
        callback's evaluate), before that loop may reset the ``token_counter`` metric, with the
        training batches begun by then: those banked before the last such loop, plus what the metric
        added since it (see ``_tokens_since``). Keras 3.15's fit on torch (not 3.12's) hands
        ``on_epoch_end`` the epoch's metric results as tensors that share a ``Sum``'s variable, read
        only after its validation has reset and refilled it: 303 training tokens were logged as the
        validation's 93. Used at the epoch's end, counting on from it where training went on."""
        before, self._train_tokens = self._train_tokens, None
        if self.token_counter is None:
            return
        # Begun, not ended: the end hooks may still be running (Keras 3.15 on torch and JAX runs them
        # on threads, and waits for them before on_epoch_end, not before validation), and their steps
        # behind told the epoch's end that training went on after its validation (192 tokens for 120).
        begun = self._progress.train_calls_begun  # the training thread's (see on_train_batch_begin)
        value = self._token_metric()
        if value is not None:  # absent, not one number, any failure: the logs' value, warned of there
            self._train_tokens = (begun, value if before is None else self._tokens_since(before[1], value))

    def _tokens_since(self, banked: float | None, value: Any) -> float | None:
        """``banked`` tokens plus what the token metric, now ``value``, added since the last call inside
        the epoch left it at ``_tokens_offset``. None: not known (a value below it: reset unseen)."""
        try:
            value = float(keras.ops.convert_to_numpy(value))
        except Exception:  # noqa: BLE001 - not one number
            return None
        offset = self._tokens_offset
        return None if banked is None or offset is None or not value >= offset else banked + value - offset

    def _token_metric(self) -> float | None:
        """The ``token_counter`` metric's value now (a read of the device); None where it cannot be read."""
        try:
            return float(keras.ops.convert_to_numpy(self.model.get_metrics_result().get(self.token_counter)))
        except Exception:  # noqa: BLE001 - absent, not one number, any failure
            return None

    def _add_tokens(self, logs: dict | None) -> None:
        """Tokens of the open phase from the ``token_counter`` metric in Keras's ``logs``; a metric
        missing or not a count is warned of once per run, as the other callbacks warn of an
        unusable ``token_counter``, and the phase's record says ``tokens_counted: false``, as the
        other callbacks' records say where their ``token_counter`` fails."""
        if self.token_counter is None or not logs:  # no logs: no step ran, so no token either
            return
        name = self.token_counter
        if name not in logs:
            present = ", ".join(sorted(map(str, logs)))
            self._unusable_tokens(f"token_counter {name!r} is not among the metrics in logs ({present})")
            return
        value = logs[name]
        if self._replicas() > 1 and not logs_sum_metrics_over_replicas(_KERAS_VERSION):
            self._unusable_tokens(
                f"token_counter {name!r} logged {value!r}, which Keras {keras.__version__} does not sum over the "
                f"{self._replicas()} tf.distribute replicas (Keras 3.10 and later do)",
                fix="Keras 3.10 or later counts them")
            return
        try:
            tokens = int(round(float(value)))
        except (TypeError, ValueError, OverflowError):  # not a number, NaN, inf
            tokens = -1
        if tokens < 0:
            self._unusable_tokens(f"token_counter {name!r} logged {value!r} (not a non-negative count)")
        elif tokens > 0:
            self.tracker.add_samples(0, tokens=tokens)

    def _unusable_tokens(self, what: str, fix: str = "Fix token_counter= (the name of a metric in logs that counts "
                         "tokens, e.g. a keras.metrics.Sum of the label mask added in compile)") -> None:
        self.tracker.add_samples(0, tokens=None)  # the open phase's record: tokens_counted false
        if self._warned_tokens == self.tracker.run_id:
            return
        self._warned_tokens = self.tracker.run_id
        warn(f"greencallbacks: EnergyCallback {what}; its tokens are left out of energy_j_per_token (this warning "
             f"comes once per run). {fix}.")
