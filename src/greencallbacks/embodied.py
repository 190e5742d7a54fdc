"""Embodied emissions (Scope 3): the hardware's manufacturing footprint, amortised over a run.

The table ``data/embodied.csv`` holds cradle-to-gate footprints from published product carbon
footprints and life-cycle studies, each row with its source, year, licence and a low-high range.
A device without a published figure is left out, never guessed: looking it up returns ``None``
and a reason, and ``embodied_for`` lists it under ``missing``.

A run of ``duration_s`` seconds is billed its share of the hardware's life::

    embodied_co2eq_g = footprint_g * duration_s / (lifetime_years * 365.25 * 86400) / utilisation

Dividing by the utilisation bills the idle share of the hardware's life to the work that ran on
it (a machine busy 85 % of its life costs each busy hour 1/0.85 of its calendar share), as in
the BLOOM footprint paper (JMLR 2023). Defaults:

- ``DEFAULT_LIFETIME_YEARS = 5``: Amazon's Form 10-K for 2024 (filed February 2025) shortened the
  useful life of a subset of its servers and networking equipment from six to five years from
  1 January 2025, "due to an increased pace of technology development, particularly in the area
  of artificial intelligence and machine learning". Microsoft and Alphabet depreciate servers over
  six years; BLOOM's host IDRIS replaced hardware after six. Five is the shortest, and so the more
  cautious, of these published schedules for AI hardware.
- ``DEFAULT_UTILISATION = 0.85``: the average usage of the Jean Zay cluster that IDRIS gave for
  the BLOOM estimate (JMLR 2023, section 4.1). One HPC centre's figure, not a law:
  pass your fleet's own.

Embodied CO2eq is kept apart from the operational ``co2eq_g`` (never summed silently).
Plain Python; the table is read with the shared loader of ``greencallbacks.carbon.tables``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, NamedTuple

from greencallbacks.carbon.tables import parsed
from greencallbacks.checks import as_float, shown

TABLE = "embodied.csv"
SECONDS_PER_YEAR = 365.25 * 86400
DEFAULT_LIFETIME_YEARS = 5.0
DEFAULT_UTILISATION = 0.85
LIFETIME_SOURCE = (
    "Amazon.com, Inc. Form 10-K for 2024 (February 2025): useful life of a subset of servers and "
    "networking equipment changed from six to five years from 1 January 2025 (pace of AI/ML)"
)
UTILISATION_SOURCE = (
    "Estimating the Carbon Footprint of BLOOM, a 176B Parameter Language Model, JMLR 24(253), 2023, "
    "section 4.1: 85 % average usage of the Jean Zay cluster (IDRIS)"
)
# The table's row for a host server (chassis, board, CPUs, memory, power supplies), if asked for.
HOST_KEY = "server"


@dataclass(frozen=True)
class Footprint:
    """One row of the table: the manufacturing footprint of one unit (a device, a GB, a TB)."""

    key: str
    kind: str  # gpu | server | dram | ssd
    unit: str  # device | GB | TB
    kgco2eq: float
    low_kgco2eq: float
    high_kgco2eq: float
    year: int
    source: str
    url: str
    licence: str
    range_basis: str

    def cite(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "unit": self.unit,
            "kgco2eq": self.kgco2eq,
            "low_kgco2eq": self.low_kgco2eq,
            "high_kgco2eq": self.high_kgco2eq,
            "year": self.year,
            "source": self.source,
            "url": self.url,
            "licence": self.licence,
            "range_basis": self.range_basis,
        }


def _row(row: dict[str, str]) -> Footprint:
    footprint = Footprint(
        key=row["key"],
        kind=row["kind"],
        unit=row["unit"],
        kgco2eq=float(row["kgco2eq"]),
        low_kgco2eq=float(row["low_kgco2eq"]),
        high_kgco2eq=float(row["high_kgco2eq"]),
        year=int(row["year"]),
        source=row["source"],
        url=row["url"],
        licence=row["licence"],
        range_basis=row["range_basis"],
    )
    if not 0 < footprint.low_kgco2eq <= footprint.kgco2eq <= footprint.high_kgco2eq:
        raise ValueError(f"{footprint.key}: range must hold 0 < low <= value <= high")
    return footprint


@lru_cache(maxsize=1)
def footprints() -> dict[str, Footprint]:
    """Every shipped row by its key (GPU rows use the model names of ``data/gpu_power.csv``)."""
    return {row.key: row for row in parsed(TABLE, _row)}


def lookup(name: str) -> tuple[Footprint | None, str]:
    """The footprint of a device named as a sensor reports it (``"NVIDIA H100 80GB HBM3"``).

    GPU names are matched like ``greencallbacks.estimate.gpu_power`` does (vendor words and
    punctuation ignored, exact model or alias; a prefix only where every model it fits has one
    power, such as ``estimate --gpu "A100 SXM"``, and then billed the larger of their footprints,
    the range spanning them all; never one that stops inside a model number, such as ``"H20"``
    of ``"H200 SXM"``, another GPU). Returns ``(footprint, "")`` or ``(None, reason)`` when the
    model is unknown or has no published footprint.
    """
    from greencallbacks.estimate import gpu_power  # shares the GPU names of data/gpu_power.csv

    if not isinstance(name, str) or not name.strip():
        return None, f"no device model given ({name!r})"
    table = footprints()
    if name in table:
        return table[name], ""
    try:
        # "A / B": the name ``gpu_power`` gives a prefix that fits several models (what an estimate
        # passes on); each part is a model of the table.
        model = " / ".join(gpu_power(part).model for part in name.split(" / "))
    except ValueError as error:
        # The matcher's message names every known model; the first part (with any "did you
        # mean") is what a record needs.
        return None, f"{name!r}: model not recognised ({str(error).split(' (known:')[0]})"
    if model in table:
        return table[model], ""
    if " / " in model:  # a prefix that fits several models of one power ("A100 SXM")
        return _variants_footprint(name, model.split(" / "), table)
    return None, (
        f"{name!r} ({model}): no published manufacturing footprint in greencallbacks/data/{TABLE}; "
        "left out rather than guessed"
    )


def _variants_footprint(name: str, variants: list[str], table: dict[str, Footprint]) -> tuple[Footprint | None, str]:
    """One footprint for a name that fits several models (the 40 GB and 80 GB A100 SXM4): the
    larger of their figures, with a range from the lowest low to the highest high, so that it
    covers whichever one it is. Left out, as any unknown, when one of them has no published figure."""
    unknown = [v for v in variants if v not in table or table[v].kind != "gpu"]
    if unknown:
        return None, (
            f"{name!r} fits {' and '.join(variants)}, and {', '.join(unknown)} has no published manufacturing "
            f"footprint in greencallbacks/data/{TABLE}; name the model to bill it"
        )
    rows = [table[v] for v in variants]
    central = max(rows, key=lambda row: row.kgco2eq)
    return Footprint(
        key=" / ".join(variants),
        kind="gpu",
        unit=central.unit,
        kgco2eq=central.kgco2eq,
        low_kgco2eq=min(row.low_kgco2eq for row in rows),
        high_kgco2eq=max(row.high_kgco2eq for row in rows),
        year=max(row.year for row in rows),
        source=f"either {' or '.join(variants)}: the larger figure, {central.key}'s; "
        + "; ".join(f"{row.key}: {row.source}" for row in rows),
        url=" ".join(dict.fromkeys(row.url for row in rows)),
        licence="; ".join(dict.fromkeys(row.licence for row in rows)),
        range_basis=f"from the lowest low to the highest high of {' and '.join(variants)}",
    ), ""


def amortised_g(
    kgco2eq: float,
    duration_s: float,
    *,
    lifetime_years: float = DEFAULT_LIFETIME_YEARS,
    utilisation: float = DEFAULT_UTILISATION,
) -> float:
    """The grams of a ``kgco2eq`` footprint billed to ``duration_s`` seconds of use."""
    return kgco2eq * 1000.0 * duration_s / (lifetime_years * SECONDS_PER_YEAR) / utilisation


# Why a part has no embodied figure, in a summary's ``embodied_left_out`` (``embodied_missing`` says
# it in words): for a device, "model unknown" (no model given) or "no footprint" (none published,
# a name the table does not know, or not a GPU row); for the host, "not asked for" (no ``host=``);
# "billed elsewhere" (the host, ``ram_gb``: by the rank that measures the host); for the run,
# "turned off" (``embodied=False``) or "records unbilled".
LEFT_OUT_WHY = ("model unknown", "no footprint", "not asked for", "billed elsewhere", "turned off", "records unbilled")


class Embodied(NamedTuple):
    """What ``embodied_for`` found: unpack as ``grams, (low_g, high_g), sources, missing``."""

    grams: float
    range_g: tuple[float, float]
    sources: tuple[dict[str, Any], ...]
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The fields a record or summary carries, apart from the operational ``co2eq_g``."""
        return {
            "embodied_co2eq_g": self.grams,
            "embodied_co2eq_g_low": self.range_g[0],
            "embodied_co2eq_g_high": self.range_g[1],
            "embodied_sources": list(self.sources),
            "embodied_missing": list(self.missing),
        }


def _field(component: Any, name: str) -> Any:
    if isinstance(component, Mapping):
        return component.get(name)
    return getattr(component, name, None)


def _positive(name: str, value: object, *, upper: float | None = None) -> float:
    number = as_float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {shown(value)}")
    if upper is not None and number > upper:
        raise ValueError(f"{name} must be at most {upper:g}, got {value!r}")
    return number


def _gpu_count(component: Any, name: str) -> int:
    """How many identical devices this component stands for: an estimate of 8 H100s is one
    component counted 8 times, not 8 components (a fleet of them would take its size in memory).
    Read from a dict only: an object's ``count`` may be something else (a tuple's method)."""
    count = component.get("count") if isinstance(component, Mapping) else None
    if count is None:
        return 1
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}: count must be an integer >= 1, got {count!r}")
    return count


def _gpu_share(component: Any, name: str) -> float:
    """The share of a GPU this component stands for: a MIG instance or a die of a shared board
    is billed the part of the device's energy its sensor declares (``share``, see
    ``sensors.share``), and its manufacturing footprint in the same part, so that the processes
    sharing one GPU bill it once between them rather than once each."""
    share = _field(component, "share")
    return 1.0 if share is None else _positive(f"{name}: share", share, upper=1.0)


def embodied_for(
    components: Iterable[Any],
    duration_s: float,
    *,
    models: Mapping[str, str] | None = None,
    host: str | None = None,
    host_share: float | None = None,
    ram_gb: float | None = None,
    lifetime_years: float = DEFAULT_LIFETIME_YEARS,
    utilisation: float = DEFAULT_UTILISATION,
    left_out: list[dict[str, Any]] | None = None,
) -> Embodied:
    """The embodied CO2eq of the hardware behind ``components`` over ``duration_s`` seconds.

    Args:
        components: a record's components (``meter.Component`` objects or their dicts), each with
            ``name`` and ``kind`` (gpu, cpu, dram, ram, other); ``model`` and ``share`` fields
            are used when present (``sensor.describe()`` gives both).
        duration_s: the window the components were measured over (seconds, >= 0).
        models: device model by component name, as the sensors report it
            (``{"gpu0": "NVIDIA H100 80GB HBM3"}``, from ``sensor.describe()["model"]``).
        host: the table key of the host machine (``"server"``) to bill its chassis, board, CPUs
            and memory; None (default) leaves the host out and says so in ``missing``, because a
            laptop is not a 2,500 kg server and the table cannot tell which it is.
        host_share: the share of the host this run occupies, in (0, 1] (e.g. 2 of its 8 GPUs: 0.25);
            only with ``host``. None (default): the whole host.
        ram_gb: the host's memory to bill per GB (DRAM row) beyond what ``host`` already covers;
            billed, as the host, only with the CPU or RAM components (once per host).
        lifetime_years, utilisation: the amortisation (see the module docstring for the defaults).
        left_out: a list that each line of ``missing`` is appended to as a dict, in its order,
            for programs: ``part`` (the component's name, ``"host"``, ``"ram_gb"``), ``kind``,
            ``model`` (None where unknown) and ``why`` (``LEFT_OUT_WHY``'s words).

    Each GPU component is billed once, in the ``share`` of the device it declares (a MIG
    instance's 3 of 7 slices: 3/7; 1.0 when absent), times its ``count`` of identical devices
    (a dict's ``count``, 1 when absent); CPU and RAM components stand for the host, which is billed
    once (two CPU packages are one host) and only with them, so that in a distributed run the
    ranks that measure only their GPUs do not bill the host again. Devices whose model is unknown
    or has no published footprint are left out and listed in ``missing``.
    """
    if not (math.isfinite(as_float(duration_s)) and duration_s >= 0):
        raise ValueError(f"duration_s must be a finite number >= 0, got {shown(duration_s)}")
    lifetime_years = _positive("lifetime_years", lifetime_years)
    utilisation = _positive("utilisation", utilisation, upper=1.0)
    table = footprints()
    servers = [k for k, row in table.items() if row.kind == "server"]
    if host is not None and (host not in table or table[host].kind != "server"):
        raise ValueError(f"host must be one of {servers} or None, got {host!r}")
    if host_share is not None and host is None:
        # The share divides the host's footprint: without a host it would divide nothing, unsaid.
        raise ValueError(f"host_share needs host (one of {servers}): it is the share of the host's footprint billed, "
                         f"got host_share={host_share!r} without host")
    host_share = 1.0 if host_share is None else _positive("host_share", host_share, upper=1.0)
    if ram_gb is not None:
        ram_gb = _positive("ram_gb", ram_gb)
    models = dict(models or {})

    def amortise(kg: float) -> float:
        return amortised_g(kg, duration_s, lifetime_years=lifetime_years, utilisation=utilisation)

    grams = low = high = 0.0
    used: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    parts: list[dict[str, Any]] = []

    def leave_out(text: str, part: str, kind: str, model: str | None, why: str) -> None:
        missing.append(text)
        parts.append({"part": part, "kind": kind, "model": model, "why": why})

    def bill(footprint: Footprint, amount: float, what: str) -> None:
        nonlocal grams, low, high
        grams += amortise(footprint.kgco2eq * amount)
        low += amortise(footprint.low_kgco2eq * amount)
        high += amortise(footprint.high_kgco2eq * amount)
        entry = used.setdefault(footprint.key, {**footprint.cite(), "billed": []})
        entry["billed"].append(what)

    host_parts: list[str] = []
    for component in components:
        name = str(_field(component, "name") or "?")
        kind = str(_field(component, "kind") or "")
        if kind == "gpu":
            model = models.get(name) or _field(component, "model")
            if not model:
                leave_out(f"{name}: GPU model not known (pass models={{{name!r}: <NVML name>}})", name, kind, None,
                          "model unknown")
                continue
            footprint, reason = lookup(model)
            if footprint is None or footprint.kind != "gpu":
                leave_out(f"{name}: {reason or f'{model!r} is not a GPU row'}", name, kind, str(model), "no footprint")
                continue
            share = _gpu_share(component, name)
            count = _gpu_count(component, name)
            share_of = _field(component, "share_of") or "its share of the device"
            bill(footprint, share * count, f"{name} ({model})" + (f", {count} devices" if count != 1 else "")
                 + (f" x {share:.4g} ({share_of})" if share != 1.0 else ""))
        elif kind in ("cpu", "dram", "ram"):
            host_parts.append(name)
        else:
            model = _field(component, "model")
            leave_out(f"{name}: no manufacturing footprint for kind {kind!r}", name, kind, str(model) if model else None,
                      "no footprint")
    if host is not None and host_parts:
        bill(table[host], host_share, f"host x {host_share:g} ({', '.join(host_parts)})")
    elif host is not None:
        # In distributed runs one rank per host measures CPU and RAM; the others' records
        # (GPUs only) must not bill the same host again.
        leave_out(f"host {host!r}: not billed with these components (no cpu or ram among them); billed where the host "
                  "is measured", "host", "host", host, "billed elsewhere")
    elif host_parts:
        leave_out(f"host machine of {', '.join(host_parts)} (chassis, board, CPUs, memory): not counted; "
                  f"pass host={HOST_KEY!r} and host_share= to bill it", "host", "host", None, "not asked for")
    if ram_gb is not None and host_parts:
        bill(table["dram"], ram_gb, f"{ram_gb:g} GB of DRAM")
    elif ram_gb is not None:
        # The host's memory, like the host: billed by the rank that measures its CPU and RAM. Billed
        # by every rank, 8 ranks on one host billed its 512 GB 8 times.
        leave_out(f"ram_gb={ram_gb:g}: not billed with these components (no cpu or ram among them); "
                  "billed where the host is measured", "ram_gb", "ram", None, "billed elsewhere")
    sources = list(used.values())
    if sources:
        sources.append({"key": "lifetime_years", "value": lifetime_years, "source": LIFETIME_SOURCE if lifetime_years == DEFAULT_LIFETIME_YEARS else "user-supplied"})
        sources.append({"key": "utilisation", "value": utilisation, "source": UTILISATION_SOURCE if utilisation == DEFAULT_UTILISATION else "user-supplied"})
    if left_out is not None:
        left_out.extend(parts)
    return Embodied(grams=grams, range_g=(low, high), sources=tuple(sources), missing=tuple(missing))


def estimate_embodied(
    *,
    hours: float,
    gpu: str | None = None,
    gpus: int = 1,
    host: str | None = None,
    host_share: float = 1.0,
    ram_gb: float | None = None,
    lifetime_years: float = DEFAULT_LIFETIME_YEARS,
    utilisation: float = DEFAULT_UTILISATION,
) -> dict[str, Any]:
    """Ex-ante embodied CO2eq of ``gpus`` x ``gpu`` (and optionally the host) for ``hours``.

    For ``greencallbacks estimate``: the same table and amortisation as ``embodied_for``, from a
    model name instead of measured components. ``gpus`` counts devices, as the power estimate does:
    a device of a two-die board (K80, MI250, MI250X) is billed half the board's footprint (a
    footprint is per board, as a product carbon footprint would give it). Returns
    ``Embodied.to_dict()`` plus the inputs.
    """
    if not (math.isfinite(as_float(hours)) and hours > 0):
        raise ValueError(f"hours must be a finite number > 0, got {shown(hours)}")
    if not math.isfinite(hours * 3600.0):  # its seconds past the largest float: no span of hardware life
        raise ValueError(f"hours must be small enough to count in seconds (at most {sys.float_info.max / 3600:.4g}), "
                         f"got {hours!r}")
    if gpu is not None:
        from greencallbacks.estimate import check_gpu_count

        check_gpu_count(gpus)
    # One component for the identical GPUs, counted: never one per GPU.
    components: list[dict[str, Any]] = [] if gpu is None else [
        {"name": "gpu0" if gpus == 1 else f"gpu0-gpu{gpus - 1}", "kind": "gpu", "model": gpu, "count": gpus}
    ]
    per_board = 1 if gpu is None else _devices_per_board(gpu)
    if per_board > 1:
        components[0].update(share=1.0 / per_board, share_of=f"a device's share of its board of {per_board}")
    if host is not None:
        components.append({"name": "host", "kind": "cpu"})
    elif ram_gb is not None:  # the memory is the host's: billed with a component of the host
        components.append({"name": "memory", "kind": "ram"})
    result = embodied_for(
        components,
        hours * 3600.0,
        host=host,
        # 1.0 is also what ``estimate`` and the CLI pass when no share was given (the CLI refuses
        # a share without a host itself); any other share needs a host.
        host_share=None if host is None and host_share == 1.0 else host_share,
        ram_gb=ram_gb,
        lifetime_years=lifetime_years,
        utilisation=utilisation,
    )
    return {**result.to_dict(), "hours": float(hours), "lifetime_years": float(lifetime_years), "utilisation": float(utilisation)}


def _devices_per_board(model: str) -> int:
    """How many devices (dies that nvidia-smi / rocm-smi list) one board of ``model`` holds; 1 for
    an unknown model, which ``lookup`` leaves out and says why."""
    from greencallbacks.estimate import gpu_power

    try:
        return gpu_power(model.split(" / ")[0]).devices_per_board
    except ValueError:
        return 1


def _mass(grams: float) -> str:
    return f"{grams / 1000:.4g} kg" if abs(grams) >= 1000 else f"{grams:.4g} g"


def format_embodied(fields: Mapping[str, Any], operational_co2eq_g: float | None = None) -> list[str]:
    """Plain-text lines for a report or the ``estimate`` output: the embodied part, what it is
    made of, what was left out, and (given the operational CO2eq) both parts and their sum."""
    grams = float(fields["embodied_co2eq_g"])
    lines = [
        f"Embodied: {_mass(grams)} CO2eq (range {_mass(fields['embodied_co2eq_g_low'])}-"
        f"{_mass(fields['embodied_co2eq_g_high'])}), manufacturing amortised over the hardware's life"
    ]
    for source in fields.get("embodied_sources", ()):
        if "kgco2eq" in source:
            lines.append(f"  {source['key']}: {source['kgco2eq']:g} kg per {source['unit']} ({source['source']}, {source['year']})")
        else:
            lines.append(f"  {source['key']} = {source['value']:g} ({source['source']})")
    for reason in fields.get("embodied_missing", ()):
        lines.append(f"  not counted: {reason}")
    if operational_co2eq_g is not None:
        lines.append(
            f"Operational {_mass(operational_co2eq_g)} + embodied {_mass(grams)} = "
            f"{_mass(operational_co2eq_g + grams)} CO2eq"
        )
    return lines
