"""greencallbacks for Keras 3, on any backend (torch, tensorflow, jax).

    from greencallbacks.keras import EnergyCallback

    model.fit(x, y, epochs=10, validation_data=(xv, yv),
              callbacks=[EnergyCallback(country="FR"), keras.callbacks.CSVLogger("log.csv")])

Put ``EnergyCallback`` first in the list: it adds the energy keys to each epoch's ``logs``, which
Keras hands to callbacks in list order (if it is not first it moves itself there and warns).
"""

from greencallbacks.keras._callback import EnergyCallback

__all__ = ["EnergyCallback"]
