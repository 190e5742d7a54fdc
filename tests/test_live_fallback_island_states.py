"""An Electricity Maps zone inside Alaska or Hawaii falls back, offline, to that state's row: Oahu
(US-HI-OA) was priced at the national 369 g/kWh, though the table has Hawaii's 633."""

from __future__ import annotations

import pytest

from greencallbacks.carbon.intensity import zone_intensity
from greencallbacks.carbon.live import static_fallback


@pytest.mark.parametrize("zone, state", [("US-HI-OA", "US-HI"), ("US-HI-MA", "US-HI"), ("US-AK-SEAPA", "US-AK"),
                                         ("US-HI", "US-HI"), ("US-AK", "US-AK")])
def test_a_zone_in_alaska_or_hawaii_falls_back_to_its_state(zone, state):
    fallback = static_fallback(zone)
    assert fallback.zone == state
    assert fallback.g_per_kwh == pytest.approx(zone_intensity(state).g_per_kwh)


def test_zones_spanning_several_states_still_take_the_national_row():
    assert static_fallback("US-CAR-DUK").zone == "USA"  # the Carolinas
    assert static_fallback("US-NE-ISNE").zone == "USA"  # New England, not Nebraska
