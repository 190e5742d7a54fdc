"""Power usage effectiveness: facility energy / IT energy. Defaults come from ``data/pue.csv``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from greencallbacks.carbon import tables
from greencallbacks.checks import as_float, shown

MIN_PUE = 1.0
# The worst data centres surveyed are ~2.5; above 3 is almost surely a typo.
MAX_PUE = 3.0
IT_ONLY_PUE_SOURCE = "1.0: IT energy only (no PUE given and no cloud region)"


@dataclass(frozen=True)
class Pue:
    value: float
    source: str


def validate_pue(value: object) -> float:
    """``value`` as a float in [1, 3], else ``ValueError`` naming ``pue``."""
    number = as_float(value)
    if not (math.isfinite(number) and MIN_PUE <= number <= MAX_PUE):
        raise ValueError(
            f"pue must be a finite number between {MIN_PUE:g} (IT energy only) and {MAX_PUE:g}, got {shown(value)}"
        )
    return number


def user_pue(value: object) -> Pue:
    return Pue(value=validate_pue(value), source="user-supplied pue")


def provider_pue(provider: str) -> Pue:
    """The provider's published fleet PUE (aws, azure, gcp)."""
    row = tables.pue_defaults()[provider]
    return Pue(value=row.pue, source=f"{row.source}, {row.year}")


def industry_average_pue() -> Pue:
    """For users who want a typical on-premises figure: ``Carbon(pue=industry_average_pue().value)``."""
    return provider_pue("industry_average")


def it_only_pue() -> Pue:
    return Pue(value=1.0, source=IT_ONLY_PUE_SOURCE)
