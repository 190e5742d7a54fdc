"""Carbon intensity (gCO2eq/kWh) and PUE: where the CO2eq of each joule comes from.

Offline only: a number, a country, a US state, a cloud region or a time-series file, from small
tables shipped in ``greencallbacks/data`` (loaded on first use). Every :class:`Intensity` records
its source, year and licence. Imports nothing heavy.
"""

from __future__ import annotations

from greencallbacks.carbon.intensity import WORLD_AVERAGE_ZONE, Intensity, list_zones
from greencallbacks.carbon.pue import industry_average_pue
from greencallbacks.carbon.series import IntensitySeries, IntensitySource
from greencallbacks.carbon.source import Carbon

__all__ = [
    "Carbon",
    "Intensity",
    "IntensitySeries",
    "IntensitySource",
    "WORLD_AVERAGE_ZONE",
    "industry_average_pue",
    "list_zones",
]
