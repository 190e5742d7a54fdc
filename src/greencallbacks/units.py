"""Units. Inside the library everything is joules, seconds and grams; friendly units only at the edges."""

from __future__ import annotations

J_PER_KWH = 3.6e6
J_PER_WH = 3.6e3


def j_to_kwh(energy_j: float) -> float:
    return energy_j / J_PER_KWH


def kwh_to_j(energy_kwh: float) -> float:
    return energy_kwh * J_PER_KWH


def co2eq_g(energy_j: float, intensity_g_per_kwh: float) -> float:
    """Grams of CO2eq for ``energy_j`` joules at ``intensity_g_per_kwh`` gCO2eq/kWh."""
    return j_to_kwh(energy_j) * intensity_g_per_kwh


def mean_power_w(energy_j: float, duration_s: float) -> float:
    # Below a nanosecond no meter resolves power; dividing by a subnormal duration gives inf.
    return energy_j / duration_s if duration_s > 1e-9 else 0.0
