"""A run's embodied CO2eq: the tracker's ``embodied=`` checked, the rate found for the hardware it
measures, and the summary's account of it over every rank.

The footprints and their amortisation are ``greencallbacks.embodied``'s (imported only where
asked for); here is what a tracker bills with them: a rate per second found once at start
(``find``: each record is then only a multiplication), and the summary's ``embodied_*`` fields
(``summary``), with what each rank billed and left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from greencallbacks.textformat import rank_ranges

if TYPE_CHECKING:
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker


def checked_settings(embodied: object) -> dict[str, Any] | None:
    """Check ``embodied=`` at construction: None/True (defaults), False (off) or ``embodied_for`` arguments."""
    if embodied is None or embodied is True:
        return {}
    if embodied is False:
        return None
    allowed = ("host", "host_share", "ram_gb", "lifetime_years", "utilisation")
    # Any mapping: Hydra's instantiate hands a config's dict over as a DictConfig.
    if not isinstance(embodied, Mapping) or not all(k in allowed for k in embodied):
        raise ValueError(f"embodied must be None, False or a dict with keys among {allowed}, got {embodied!r}")
    from greencallbacks.embodied import embodied_for

    embodied_for([], 0.0, **embodied)  # each value checked now, naming the argument
    return dict(embodied)


def find(tracker: "Tracker", meter: "Meter") -> None:
    """Embodied CO2eq per second of the measured hardware: linear in a record's duration, so
    it is found once here and each record is only a multiplication (no table look-up per boundary)."""
    tracker.embodied_rate = tracker._embodied_found = None
    tracker._embodied_left_out = []
    if tracker.embodied_settings is None:
        return
    from greencallbacks.embodied import embodied_for

    described = meter.describe()
    for device in described:  # a GPU other ranks measure too: this rank's share of its footprint
        if device.get("name") in tracker._gpu_split:
            device["share"] = float(device.get("share", 1.0)) * tracker._gpu_split[device["name"]][0]
    models = {d["name"]: d["model"] for d in described if d.get("model")}
    left_out: list[dict[str, Any]] = []
    try:
        found = embodied_for(described, 1.0, models=models, left_out=left_out, **tracker.embodied_settings)
    except Exception as error:  # noqa: BLE001 - embodied is extra; it must not stop a run
        from greencallbacks.meter import warn

        warn(f"greencallbacks: embodied emissions left out ({error!r}).")
        return
    tracker._embodied_found, tracker._embodied_left_out = found, left_out
    # Billed only when some device had a footprint; otherwise the record says nothing rather than 0.
    tracker.embodied_rate = found if any("kgco2eq" in s for s in found.sources) else None


def summary(tracker: "Tracker") -> dict[str, Any]:
    """The run's embodied CO2eq (apart from the operational total) and how it was found."""
    totals = tracker.ledger.embodied
    found = tracker._embodied_found
    missing = list(found.missing) if found else (["turned off (embodied=False)"] if tracker.embodied_settings is None else [])
    # The same, structured: what the report reads (it parsed the words above, which are for people).
    left_out = [dict(part) for part in tracker._embodied_left_out] if found else (
        [_left_out("run", "turned off")] if tracker.embodied_settings is None else [])
    # What the sources and the missing above describe is this attempt; an earlier one (resumed
    # on another GPU, or with embodied=False) may have billed nothing, or this one nothing of
    # the run that earlier ones billed: the total then covers part of the run, said here.
    count = sum(t.count for t in tracker.ledger.totals.values())
    unbilled = count - sum(t.embodied_count for t in tracker.ledger.totals.values())
    if totals and unbilled:
        missing.append(f"{unbilled} of the run's {count} records carry no embodied figure (an attempt or call "
                       "where none was known or it was turned off): embodied_co2eq_g covers the others only")
        left_out.append({**_left_out("records", "records unbilled"), "records": unbilled, "of": count})
    sources = list(found.sources) if found else []
    if tracker._embodied_elsewhere:
        sources, missing, left_out = _with_other_ranks(sources, missing, left_out, tracker._embodied_elsewhere)
    return {
        "embodied_co2eq_g": totals[0] if totals else None,
        "embodied_co2eq_g_low": totals[1] if totals else None,
        "embodied_co2eq_g_high": totals[2] if totals else None,
        "embodied_sources": sources,
        "embodied_missing": missing,
        "embodied_left_out": left_out,
    }


def _left_out(part: str, why: str) -> dict[str, Any]:
    """An ``embodied_left_out`` entry for what is no device (see ``embodied_for``'s ``left_out``)."""
    return {"part": part, "kind": None, "model": None, "why": why}


def _with_other_ranks(sources: list[dict[str, Any]], missing: list[str], left_out: list[dict[str, Any]],
                      elsewhere: list[tuple[int, Any]]) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """This rank's embodied ``sources``, ``missing`` and ``left_out`` with every other rank's
    added: the devices each billed (its ``billed`` entries named by rank) and what each left out,
    one line (and one entry, with its ``ranks``) per reason with the ranks that gave it. "Billed
    where the host is measured" is dropped: the rank that measures the host says what it billed there."""
    devices = [{**s, "billed": list(s.get("billed", []))} for s in sources if "kgco2eq" in s]
    settings = [s for s in sources if "kgco2eq" not in s]  # lifetime and utilisation, alike on every rank
    by_key = {s["key"]: s for s in devices}
    reasons: dict[str, list[int]] = {}
    parts: dict[str, dict[str, Any]] = {}
    for rank, (their_sources, their_missing, their_left_out) in elsewhere:
        for source in their_sources:
            if "kgco2eq" not in source:
                if not any(s.get("key") == source.get("key") for s in settings):
                    settings.append(source)
                continue
            entry = by_key.get(source["key"])
            if entry is None:
                entry = by_key[source["key"]] = {**source, "billed": []}
                devices.append(entry)
            entry["billed"] += [f"rank {rank}: {billed}" for billed in source.get("billed", [])]
        for reason, part in zip(their_missing, their_left_out):
            if not reason.endswith("billed where the host is measured"):
                reasons.setdefault(reason, []).append(rank)
                parts.setdefault(reason, dict(part))
    missing = list(missing) + [f"rank{'s' if len(ranks) > 1 else ''} {rank_ranges(ranks)}: {reason}"
                               for reason, ranks in reasons.items()]
    left_out = list(left_out) + [{**parts[reason], "ranks": ranks} for reason, ranks in reasons.items()]
    return devices + settings, missing, left_out
