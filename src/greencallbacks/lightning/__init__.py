"""Energy and CO2eq of every epoch in your Lightning loggers, with one callback.

    from greencallbacks.lightning import EnergyCallback      # lightning.pytorch
    from greencallbacks.lightning.pl import EnergyCallback   # pytorch_lightning

    trainer = Trainer(callbacks=[EnergyCallback(country="FR")])

Logged each epoch to every configured logger (through each logger's ``log_metrics``; a test or a
validate run alone through ``LightningModule.log``):
``energy_kwh``, ``co2eq_g``, ``energy_kwh_total``, ``co2eq_g_total``, ``energy_j_per_sample``,
``co2eq_g_per_sample``, ``power_w`` for the training epoch (its validation excluded; the totals
cover the whole run so far), and the same stems prefixed ``val_`` / ``test_`` / ``predict_`` for
those loops (their totals cover that loop so far). Records go to ``energy-records.jsonl`` in the
trainer's log directory.

The flavour is imported lazily, so ``greencallbacks.lightning.pl`` never imports ``lightning``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greencallbacks.lightning._lightning import EnergyCallback

__all__ = ["EnergyCallback"]


def __getattr__(name: str) -> Any:
    if name == "EnergyCallback":
        from greencallbacks.lightning._lightning import EnergyCallback

        return EnergyCallback
    raise AttributeError(f"module 'greencallbacks.lightning' has no attribute {name!r}")
