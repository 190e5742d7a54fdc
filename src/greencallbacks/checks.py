"""The one check every numeric setting starts from: is this a number a float can hold?

``math.isfinite(10**400)`` and ``float(10**400)`` raise a bare ``OverflowError`` naming nothing;
each setting's own check reads its value through ``as_float`` instead, so that an integer past a
float's range is refused like any other number out of range: a ``ValueError`` naming the
argument and what is valid.
"""

from __future__ import annotations

import math
import numbers


def as_float(value: object) -> float:
    """``value`` as a float; NaN where it is no real number (a bool, a string, None) or none a
    float can hold (``10**400``), which every range check then refuses."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def shown(value: object) -> str:
    """``repr(value)`` for a message; an integer past a float's range by its size (10**400 has 401
    digits, and one past 4300 digits has no repr at all)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            digits = int(abs(int(value)).bit_length() * math.log10(2))
            return f"an integer of about {'-' if value < 0 else ''}10**{digits}"
    return repr(value)
