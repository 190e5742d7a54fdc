"""``EnergyCallback`` for ``lightning.pytorch`` (imports only that flavour)."""

from __future__ import annotations

from greencallbacks import extras

try:
    import lightning
    from lightning.pytorch.callbacks import Callback, Timer
except ImportError as error:
    raise extras.missing(error, "greencallbacks.lightning", ("lightning",), extras.LIGHTNING) from None

from greencallbacks.lightning._shared import EnergyCallbackBase


class EnergyCallback(EnergyCallbackBase, Callback):
    __doc__ = EnergyCallbackBase.__doc__
    _timer_class = Timer  # max_time=, Timer(duration=): the time the fit has left
    _framework = f"lightning.pytorch {lightning.__version__}"


__all__ = ["EnergyCallback"]
