"""The record schema: its name (``SCHEMA``), the phases a record may be of (``PHASES``), and what
each field may hold when read back: its JSON type (``_check_types``, which ``Record.from_dict``
runs), and in a file also a component's optional keys, finite, non-negative and possible values
(``_check_component_types``, ``_check_finite``, ``_check_non_negative``, ``_check_possible``).
"""

from __future__ import annotations

import math

SCHEMA = "greencallbacks.record/1"
PHASES = ("train", "validation", "test", "predict", "other")

# The JSON types each field must have when read back (null: only where listed, and for numbers).
_NUMBERS = ("duration_s", "it_energy_kwh", "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "pue", "uncertainty_kwh")
_OPTIONAL_NUMBERS = ("energy_j_per_sample", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low",
                     "embodied_co2eq_g_high", "paused_s")
_INTEGERS = ("seq", "samples", "ranks", "hosts", "attempt")
_OPTIONAL_INTEGERS = ("epoch", "intensity_year", "tokens", "step")
_STRINGS = ("run_id", "phase", "start_time", "intensity_source", "intensity_zone", "intensity_licence", "pue_source",
            "framework", "tool_version")
_OPTIONAL_STRINGS = ("metric_prefix",)
_BOOLEANS = ("partial", "samples_counted", "intensity_is_default", "carried", "later_call", "tokens_counted")


_NONE = type(None)
# Each checked field: the JSON types it may have and what the message says it must be. Built
# once, looked up by name: a report reads every record of a sweep through it (200k records). The
# exact type is tested first (json.loads gives exact types), a subclass apart. null is allowed for
# the numbers: it is the writer's NaN or infinity (JSON has neither); reports refuse it where they sum.
_FIELD_TYPES: dict[str, tuple[frozenset, str]] = {
    **{name: (frozenset({int, float, _NONE}), "a number") for name in _NUMBERS + _OPTIONAL_NUMBERS},
    **{name: (frozenset({int}), "an integer") for name in _INTEGERS},
    **{name: (frozenset({int, _NONE}), "an integer or null") for name in _OPTIONAL_INTEGERS},
    **{name: (frozenset({str}), "a string") for name in _STRINGS},
    **{name: (frozenset({str, _NONE}), "a string or null") for name in _OPTIONAL_STRINGS},
    **{name: (frozenset({bool}), "true or false") for name in _BOOLEANS},
}

# A component's optional keys, as the writer puts them (uncertainty_j is null where a sensor's was
# not finite, as any number of a record).
_COMPONENT_TYPES: dict[str, tuple[frozenset, str]] = {
    "kind": (frozenset({str}), "a string"), "note": (frozenset({str}), "a string"),
    "host": (frozenset({str}), "a string"), "rank": (frozenset({int}), "an integer"),
    "uncertainty_j": (frozenset({int, float, _NONE}), "a number"),
}


def _subclass_allowed(value: object, types: frozenset) -> bool:
    """A subclass of an allowed type (numpy.float64 is a float; records gathered from other ranks
    are Python objects, not JSON), but never a bool for a number."""
    return not isinstance(value, bool) and isinstance(value, tuple(types))


def _check_types(data: dict) -> None:
    """Raise ``TypeError`` naming the first field whose value has the wrong JSON type."""

    def bad(name: str, wanted: str) -> TypeError:
        return TypeError(f"field {name!r} must be {wanted}, got {data[name]!r}")

    for name, value in data.items():
        allowed = _FIELD_TYPES.get(name)
        if allowed is not None and type(value) not in allowed[0] and not _subclass_allowed(value, allowed[0]):
            raise bad(name, allowed[1])
    components = data.get("components", [])
    if not isinstance(components, list) or not all(
        isinstance(c, dict) and isinstance(c.get("energy_j", 0.0), (int, float)) and not isinstance(c.get("energy_j"), bool)
        for c in components
    ):
        raise bad("components", "a list of objects with a numeric energy_j")
    for index, component in enumerate(components):
        # A report names each component by its name and method ("gpu0:counter").
        for key in ("name", "method"):
            if not isinstance(component.get(key), str):
                raise TypeError(f"component {index} of field 'components' needs a string {key!r}, "
                                f"got {component.get(key)!r}")


# A component's numbers in joules, each summed by a report (the uncertainty in quadrature).
_COMPONENT_ENERGIES = ("energy_j", "uncertainty_j")
_COMPONENT_COUNTS = (*_COMPONENT_ENERGIES, "rank")  # none of them below 0


def _check_component_types(data: dict) -> None:
    """A component's optional keys a report sorts, joins and sums: a null kind or a list for a host
    stopped it with an internal error, a boolean uncertainty counted as 1 J. Only where files are
    read, as ``_check_finite``: a record passed between ranks in memory must not stop training."""
    for index, component in enumerate(data.get("components") or []):
        for key, (types, wanted) in _COMPONENT_TYPES.items():
            if key in component and type(component[key]) not in types and not _subclass_allowed(component[key], types):
                raise TypeError(f"component {index} of field 'components': {key} must be {wanted}, "
                                f"got {component[key]!r}")


def _check_finite(data: dict) -> None:
    """Refuse NaN and infinities that another writer put in a file (``NaN``, ``Infinity``, ``1e999``):
    ours writes them as null, and a sum over them would be NaN. Only where files are read: records
    passed between ranks in memory may carry a NaN, and training must not stop for it."""
    for name in _NUMBERS + _OPTIONAL_NUMBERS:
        value = data.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {name!r} is {value!r}, not a finite number (JSON has no NaN or infinity)")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_ENERGIES:
            value = component.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a finite number")


# Quantities no measurement makes negative (the meter never lets a window go below zero): one
# read from a file would be summed into a report's totals, "the training used -995 Wh".
_NON_NEGATIVE = ("duration_s", "it_energy_kwh", "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "uncertainty_kwh",
                 "energy_j_per_sample", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low",
                 "embodied_co2eq_g_high", "samples", "tokens", "paused_s")


def _check_non_negative(data: dict) -> None:
    """Refuse negative energies, CO2eq, durations and counts in a file (types are already checked)."""
    for name in _NON_NEGATIVE:
        value = data.get(name)
        if value is not None and value < 0:
            raise ValueError(f"field {name!r} is {value!r}, not a number >= 0")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_COUNTS:
            value = component.get(key)
            if value is not None and value < 0:
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a number >= 0")


# The PUE and intensity bounds every writer of ours holds to (``carbon.pue.MIN_PUE``/``MAX_PUE``,
# ``carbon.intensity.MAX_INTENSITY_G_PER_KWH``), not imported from there, as that loads the whole
# carbon package (~25 ms) into every reader of records. A record's PUE and intensity are means of
# its parts', which may land a rounding error past the bound.
_MIN_PUE = 1.0
_MAX_PUE = 3.0
_MAX_INTENSITY_G_PER_KWH = 2000.0
_MEAN_ROUNDING = 1 + 1e-9


# The most one record may hold: past these no phase of any run can be, and a report summing
# records near the largest float (1e308, each finite) would overflow to inf and print "nan".
# Energy: the world's electricity in a year (~30,000 TWh = 3e13 kWh). CO2eq: that energy at the
# highest intensity accepted anywhere, about the world's yearly emissions. Time: a century. Sums of
# a billion records at these bounds stay far below overflow.
_MAX_KWH = 3e13
_MAX_CO2EQ_G = _MAX_KWH * _MAX_INTENSITY_G_PER_KWH
_MAX_SECONDS = 100 * 365.25 * 86400
_BOUNDED = (
    *((name, _MAX_KWH, "kWh", "the world's electricity in a year")
      for name in ("it_energy_kwh", "energy_kwh", "uncertainty_kwh")),
    ("energy_j_per_sample", _MAX_KWH * 3.6e6, "J", "the world's electricity in a year"),
    *((name, _MAX_CO2EQ_G, "g", "the world's emissions in a year") for name in (
        "co2eq_g", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low", "embodied_co2eq_g_high")),
    *((name, _MAX_SECONDS, "seconds", "a century") for name in ("duration_s", "paused_s")),
)


def _check_possible(data: dict) -> None:
    """Refuse values no writer of ours puts in a record (types are already checked): a phase a
    report has no row for, an epoch or attempt below 0, no rank, a PUE below 1, no run id, an
    energy, CO2eq or time past any phase's (``_BOUNDED``)."""

    def refuse(name: str, valid: str) -> ValueError:
        return ValueError(f"field {name!r} is {data[name]!r}, not {valid}")

    if data["phase"] not in PHASES:
        raise refuse("phase", "one of " + ", ".join(repr(p) for p in PHASES))
    if not data["run_id"].strip():
        raise refuse("run_id", "a non-empty string")
    for name in ("seq", "attempt", "epoch"):
        if data.get(name) is not None and data[name] < 0:
            raise refuse(name, "an integer >= 0" if name != "epoch" else "null or an integer >= 0")
    for name in ("ranks", "hosts"):
        if name in data and data[name] < 1:
            raise refuse(name, "an integer >= 1")
    if data["pue"] is not None and not _MIN_PUE <= data["pue"] <= _MAX_PUE * _MEAN_ROUNDING:  # null: a NaN
        raise refuse("pue", f"a number from {_MIN_PUE:g} to {_MAX_PUE:g} (facility energy / IT energy)")
    intensity = data.get("intensity_gco2eq_per_kwh")
    if intensity is not None and intensity > _MAX_INTENSITY_G_PER_KWH * _MEAN_ROUNDING:
        raise refuse("intensity_gco2eq_per_kwh", f"a number of gCO2eq/kWh up to {_MAX_INTENSITY_G_PER_KWH:g}")
    for name, most, unit, bound in _BOUNDED:
        if data.get(name) is not None and data[name] > most:
            raise refuse(name, f"a number of {unit} up to {most:.3g} (more than {bound})")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_ENERGIES:
            value = component.get(key)
            if value is not None and value > _MAX_KWH * 3.6e6:
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a number of J "
                                 f"up to {_MAX_KWH * 3.6e6:.3g} (more than the world's electricity in a year)")


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (an array, not a Python list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "an array", str: "a string"}.get(type(value), type(value).__name__)
