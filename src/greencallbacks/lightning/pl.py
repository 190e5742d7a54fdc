"""``EnergyCallback`` for ``pytorch_lightning`` (imports only that flavour, never ``lightning``).

    from greencallbacks.lightning.pl import EnergyCallback
    trainer = pytorch_lightning.Trainer(callbacks=[EnergyCallback(country="FR")])
"""

from __future__ import annotations

from greencallbacks import extras

try:
    import pytorch_lightning
    from pytorch_lightning.callbacks import Callback, Timer
except ImportError as error:
    raise extras.missing(error, "greencallbacks.lightning.pl", ("pytorch_lightning",), "pip install pytorch-lightning") from None

from greencallbacks.lightning._shared import EnergyCallbackBase


class EnergyCallback(EnergyCallbackBase, Callback):
    __doc__ = EnergyCallbackBase.__doc__
    _timer_class = Timer  # max_time=, Timer(duration=): the time the fit has left
    _framework = f"pytorch_lightning {pytorch_lightning.__version__}"


__all__ = ["EnergyCallback"]
