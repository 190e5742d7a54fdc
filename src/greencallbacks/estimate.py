"""Ex-ante estimates: what a training job will cost before it runs, from hardware and hours.

The model of the ML Emissions Calculator and Green Algorithms:

    energy = hours x (gpus x gpu_tdp x usage + cpu_w x cpu_usage + memory_gb x 0.37 W/GB) x PUE
    CO2eq  = energy x carbon intensity

GPUs are counted as devices, as nvidia-smi, rocm-smi and torch list them: a two-die board (K80,
MI250, MI250X) is two devices, each half the board's power. GPU power comes from
``data/gpu_power.csv`` (vendor datasheets), CPU power from cores x W/core or
a TDP, memory from W/GB. Everything here is estimated, never measured, and every result says so.
Plain Python; only the carbon tables are read.
"""

from __future__ import annotations

import difflib
import itertools
import math
import numbers
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from greencallbacks.carbon import Carbon, Intensity
from greencallbacks.carbon.intensity import BASIS_LABELS, MAX_INTENSITY_G_PER_KWH, place_intensity, region_row
from greencallbacks.carbon.pue import provider_pue
from greencallbacks.sensors.estimate import DEFAULT_RAM_W_PER_GB, DEFAULT_W_PER_CORE
from greencallbacks.textformat import pue_text
from greencallbacks.units import J_PER_KWH

GPU_TABLE = "gpu_power.csv"
# The largest AI clusters announced by 2025 hold a few hundred thousand GPUs: a million is above
# any one job, and a count past it is a typo (a few digits too many), not a plan to estimate.
MAX_GPUS = 1_000_000
# Words that vendors and nvidia-smi put in front of model names and that carry no information.
_NOISE_WORDS = ("nvidia", "tesla", "geforce", "amd", "instinct", "radeon")


@dataclass(frozen=True)
class GpuPower:
    model: str
    tdp_w: float  # per device: the board's power shared among its devices_per_board
    vendor: str
    year: int | None
    source: str
    devices_per_board: int = 1


def _words(name: str) -> list[str]:
    text = name.lower()
    for word in _NOISE_WORDS:
        text = re.sub(rf"\b{word}\b", " ", text)
    return re.findall(r"[a-z0-9]+", text)


def _normalise(name: str) -> str:
    return "".join(_words(name))


@lru_cache(maxsize=1)
def _word_ends() -> dict[str, frozenset[int]]:
    """For each normalised name of the table, where a word of its written form ends in it
    ("A100 SXM4 40GB": after a100, sxm4 and 40gb)."""
    from greencallbacks.carbon.tables import read_rows

    ends = {}
    for row in read_rows(GPU_TABLE):
        for written in [row["model"], *(alias for alias in row["aliases"].split("|") if alias)]:
            words = _words(written)
            ends["".join(words)] = frozenset(itertools.accumulate(len(w) for w in words))
    return ends


def _begins(name: str, wanted: str) -> bool:
    """``wanted`` is a prefix of the table's ``name`` that may mean it: never one cut inside a model
    number, "H20" of "H200 SXM" or "MI25" of "MI250X", which name other GPUs."""
    if not name.startswith(wanted):
        return False
    cut = len(wanted)
    return cut in _word_ends().get(name, ()) or not (wanted[-1].isdigit() and name[cut].isdigit())


@lru_cache(maxsize=1)
def gpu_table() -> tuple[tuple[GpuPower, tuple[str, ...]], ...]:
    """Every shipped GPU with the normalised names (model and aliases) that select it."""
    from greencallbacks.carbon.tables import read_rows

    table = []
    for row in read_rows(GPU_TABLE):
        board_w, devices = float(row["tdp_w"]), int(row["devices"])
        source = row["source"]
        if devices > 1:  # each die is a device of its own to nvidia-smi / rocm-smi, and is counted so
            source += f"; {devices} devices per board, {board_w / devices:g} W per device"
        gpu = GpuPower(
            model=row["model"],
            tdp_w=board_w / devices,
            vendor=row["vendor"],
            year=int(row["year"]) if row["year"].strip() else None,
            source=source,
            devices_per_board=devices,
        )
        names = [row["model"], *(alias for alias in row["aliases"].split("|") if alias)]
        table.append((gpu, tuple(_normalise(n) for n in names)))
    return tuple(table)


def list_gpus() -> list[str]:
    return [gpu.model for gpu, _ in gpu_table()]


def gpu_power(model: str) -> GpuPower:
    """The datasheet power of one device of ``model`` (any case; ``NVIDIA``/``Tesla`` prefixes and
    punctuation ignored): the board's, or its share of a board of two devices (``MI250X``: 280 W).

    An exact model or alias is accepted, and so is a prefix whose every match has the same power
    ("A100 SXM": 40 GB and 80 GB, both 400 W). A prefix whose matches differ ("H100": SXM 700 W or
    PCIe 350 W) would be a guess off by up to a factor of two and raises ``ValueError`` naming them,
    as do unknown names (with the close matches).
    """
    if not isinstance(model, str) or not _normalise(model):
        raise ValueError(f"gpu must be a GPU model name, got {model!r} (known: {', '.join(list_gpus())})")
    wanted = _normalise(model)
    for gpu, names in gpu_table():
        if wanted in names:
            return gpu
    fitting = [gpu for gpu, names in gpu_table() if any(_begins(n, wanted) for n in names)]
    if len(fitting) > 1 and len({(g.tdp_w, g.devices_per_board) for g in fitting}) == 1:
        # Variants that differ only in what does not change the power (memory size): no guess is made.
        years = {g.year for g in fitting}
        return GpuPower(
            model=" / ".join(g.model for g in fitting),
            tdp_w=fitting[0].tdp_w,
            vendor=fitting[0].vendor,
            year=years.pop() if len(years) == 1 else None,
            source="; ".join(dict.fromkeys(g.source for g in fitting)),
            devices_per_board=fitting[0].devices_per_board,
        )
    if len(fitting) > 1:
        options = ", ".join(f"{g.model!r} ({g.tdp_w:g} W)" for g in fitting)
        raise ValueError(f"gpu {model!r} is ambiguous: {options}; name the form factor")
    # Compare with each name cut to the length given too, so a typo in "H1OO" still finds "H100 SXM".
    scored = []
    for gpu, names in gpu_table():
        score = max(
            max(difflib.SequenceMatcher(None, wanted, n).ratio(), difflib.SequenceMatcher(None, wanted, n[: len(wanted)]).ratio())
            for n in names
        )
        if score >= 0.6:
            scored.append((score, gpu.model))
    suggestions = [model for _, model in sorted(scored, key=lambda item: -item[0])[:6]]
    hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise ValueError(
        f"unknown gpu {model!r}{hint} (known: {', '.join(list_gpus())}; or give gpu_tdp_w= / --gpu-tdp)"
    )


def intensity_for(place: str) -> Intensity:
    """The intensity of a zone (``FR``, ``DEU``, ``US-CA``, ``world``) or a cloud region, named in
    any form ``--region`` accepts (``gcp:europe-west1``, ``us-east-1``, ``West Europe``)."""
    if not isinstance(place, str) or not place.strip():
        raise ValueError(f"zone must be a non-empty string, got {place!r}")
    return place_intensity(place)


def compare_places(energy_kwh: float, places: Iterable[str]) -> list[dict]:
    """The same facility energy priced at other grids (same hardware, same PUE, other place)."""
    rows = []
    for place in places:
        intensity = intensity_for(place)
        rows.append(
            {
                "zone": place,
                "g_per_kwh": intensity.g_per_kwh,
                "source": intensity.source,
                "year": intensity.year,
                "basis": intensity.basis,
                "co2eq_g": energy_kwh * intensity.g_per_kwh,
                "provider_pue": provider_pue_of(intensity),
            }
        )
    return rows


def provider_pue_of(intensity: Intensity) -> dict | None:
    """The fleet PUE a run given this cloud region counts with (as ``Carbon(region=...)`` picks it),
    None for a grid zone."""
    if ":" not in intensity.zone:  # a region's key (gcp:europe-west1); a grid zone has none
        return None
    provider = region_row(intensity.zone).provider
    pue = provider_pue(provider)
    return {"provider": provider, "pue": pue.value, "source": pue.source}


def kept_pue_note(pues: Iterable[float], provider_pues: Iterable[dict | None]) -> str | None:
    """Where a compared cloud region's provider publishes a PUE other than the one the energy was
    counted with: the rows keep the energy's own PUE (only the grid changes), which is said. A
    workstation's run (PUE 1) priced in gcp:europe-west1 would there draw 1.1x as much."""
    kept = sorted({float(pue) for pue in pues})
    others = {found["provider"]: found for found in provider_pues
              if found and all(abs(found["pue"] - pue) > 1e-9 for pue in kept)}
    if not kept or not others:
        return None
    fleet = ", ".join(f"{provider} {found['pue']:g}" for provider, found in sorted(others.items()))
    counted = " and ".join(f"{pue:g}" for pue in kept)
    return (f"each region's row keeps this energy's PUE ({counted}) and changes only the grid; in its provider's data "
            f"centres (fleet PUE {fleet}, what a run given that region counts with) its energy and CO2eq would be "
            f"scaled by that PUE over {counted}")


def mixed_bases_note(bases: Iterable[str | None]) -> str | None:
    """A warning when figures of different bases (life-cycle, direct) stand side by side, else None."""
    known = sorted({basis for basis in bases if basis})
    if len(known) < 2:
        return None
    return (f"these figures mix bases ({' and '.join(BASIS_LABELS[b] for b in known)}): a grid's direct figure "
            "is lower than its life-cycle one, so part of a difference between them is the basis, not the grid")


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _share(name: str, value: object) -> float:
    share = _positive(name, value)
    if share > 1:
        raise ValueError(f"{name} must be in (0, 1] (share of the TDP drawn on average), got {value!r}")
    return share


def check_gpu_count(gpus: object) -> int:
    """``gpus`` when it is a whole number of GPUs from 1 to ``MAX_GPUS``, else ``ValueError``."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise ValueError(f"gpus must be an integer from 1 to {MAX_GPUS:,}, got {gpus!r}")
    return gpus


def _gpu_part(gpu: str | None, gpus: int, gpu_tdp_w: float | None, usage: float) -> tuple[dict | None, float]:
    """The GPUs' description and mean power (W); none when neither a model nor a TDP is given."""
    if gpu is None and gpu_tdp_w is None:
        # Said, not ignored: a count or a usage of no GPU would describe nothing.
        given = [name for name, value, default in (("gpus", gpus, 1), ("usage", usage, 1.0)) if value != default]
        if given:
            raise ValueError(f"{' and '.join(given)} describe the GPUs: give gpu or gpu_tdp_w with them")
        return None, 0.0
    check_gpu_count(gpus)
    if gpu_tdp_w is not None:
        tdp = _positive("gpu_tdp_w", gpu_tdp_w)
        info = {"model": gpu or "user-supplied", "tdp_w": tdp, "source": "user-supplied gpu_tdp_w", "year": None}
    else:
        found = gpu_power(gpu)  # type: ignore[arg-type]
        info = {"model": found.model, "tdp_w": found.tdp_w, "source": found.source, "year": found.year}
    info["count"] = gpus
    return info, gpus * info["tdp_w"] * usage


def _cpu_part(cpu_cores: int | None, cpu_w_per_core: float | None, cpu_tdp_w: float | None,
              cpu_usage: float) -> tuple[dict | None, float]:
    """The CPU's description and mean power (W), from its TDP or its cores; none when neither is given."""
    if cpu_tdp_w is not None and (cpu_cores is not None or cpu_w_per_core is not None):
        raise ValueError("give either cpu_tdp_w or cpu_cores (with cpu_w_per_core), not both")
    if cpu_w_per_core is not None and cpu_cores is None:
        raise ValueError("cpu_w_per_core needs cpu_cores")
    if cpu_tdp_w is not None:
        tdp = _positive("cpu_tdp_w", cpu_tdp_w)
        return {"tdp_w": tdp, "source": "user-supplied cpu_tdp_w"}, tdp * cpu_usage
    if cpu_cores is None:
        return None, 0.0
    if isinstance(cpu_cores, bool) or not isinstance(cpu_cores, int) or cpu_cores < 1:
        raise ValueError(f"cpu_cores must be an integer >= 1, got {cpu_cores!r}")
    per_core = DEFAULT_W_PER_CORE if cpu_w_per_core is None else _positive("cpu_w_per_core", cpu_w_per_core)
    source = "user-supplied cpu_w_per_core" if cpu_w_per_core is not None else f"default {per_core:g} W/core"
    try:
        watts = float(cpu_cores) * per_core * cpu_usage
    except OverflowError:  # a count of more digits than a float holds
        raise EstimateOverflowError(("cpu_cores",)) from None
    return {"cores": cpu_cores, "w_per_core": per_core, "source": source}, watts


def estimate(
    *,
    hours: float,
    gpu: str | None = None,
    gpus: int = 1,
    gpu_tdp_w: float | None = None,
    usage: float = 1.0,
    cpu_cores: int | None = None,
    cpu_w_per_core: float | None = None,
    cpu_tdp_w: float | None = None,
    cpu_usage: float = 1.0,
    memory_gb: float = 0.0,
    memory_w_per_gb: float = DEFAULT_RAM_W_PER_GB,
    country: str | None = None,
    zone: str | None = None,
    region: str | None = None,
    intensity: float | None = None,
    pue: float | None = None,
    compare: Iterable[str] = (),
    embodied_host: str | None = None,
    host_share: float = 1.0,
) -> dict:
    """Energy (kWh) and CO2eq (g) of a job before it runs; see the module docstring for the model.

    Args:
        hours: wall-clock hours of the job.
        gpu: a model from ``list_gpus()`` (its datasheet TDP is used), or give ``gpu_tdp_w``.
        gpus: how many GPU devices, as nvidia-smi / rocm-smi list them (>= 1 when a GPU is given):
            a two-die board (MI250X, K80) is two.
        usage: mean share of the GPU TDP drawn (1.0: at TDP, the usual upper bound).
        cpu_cores + cpu_w_per_core (default 10 W/core), or cpu_tdp_w (all sockets): the CPU;
        cpu_usage: share of it drawn.
        memory_gb: RAM of the job, at ``memory_w_per_gb``.
        country / zone / region / intensity, pue: as in ``greencallbacks.carbon.Carbon``.
        compare: other zones or regions at which to price the same energy.
        embodied_host, host_share: bill the host server's manufacturing footprint too (table key
            ``"server"``, and the share of it the job occupies); the GPUs' is billed whenever their
            model has a published footprint. The result's ``embodied`` is kept apart from ``co2eq_g``.
    """
    hours = _positive("hours", hours)
    if embodied_host is None and not (isinstance(host_share, (int, float)) and host_share == 1.0):
        # It divides the host's footprint: an estimate without a GPU ignored it, unsaid (with one, it was refused).
        raise ValueError(f"host_share needs embodied_host (the host server whose footprint it divides), "
                         f"got host_share={host_share!r} without embodied_host")
    usage = _share("usage", usage)
    cpu_usage = _share("cpu_usage", cpu_usage)
    memory_gb = _positive("memory_gb", memory_gb, allow_zero=True)
    memory_w_per_gb = _positive("memory_w_per_gb", memory_w_per_gb, allow_zero=True)
    carbon = Carbon(country=country, zone=zone, region=region, intensity=intensity, pue=pue)
    compare = list(compare)

    gpu_info, gpu_w = _gpu_part(gpu, gpus, gpu_tdp_w, usage)
    cpu_info, cpu_w = _cpu_part(cpu_cores, cpu_w_per_core, cpu_tdp_w, cpu_usage)
    memory_w = memory_gb * memory_w_per_gb
    if gpu_w + cpu_w + memory_w <= 0:
        raise ValueError("nothing to estimate: give gpu (or gpu_tdp_w), cpu_cores or cpu_tdp_w, or memory_gb")
    it_energy_j = hours * 3600.0 * (gpu_w + cpu_w + memory_w)
    energy_kwh = it_energy_j * carbon.pue / J_PER_KWH
    where = carbon.static_intensity
    assert where is not None  # no series is accepted here
    g_per_kwh = where.g_per_kwh + 0.0  # an intensity of -0 given is 0: "-0 kg" is no estimate
    # The inputs given that multiply into the result, for a message when it overflows.
    factors = {"hours": hours, "gpus": gpus if gpu_info and gpus != 1 else None, "gpu_tdp_w": gpu_tdp_w,
               "cpu_cores": cpu_cores, "cpu_w_per_core": cpu_w_per_core, "cpu_tdp_w": cpu_tdp_w,
               "memory_gb": memory_gb or None}
    # At the highest intensity accepted anywhere, so that the compared zones' CO2eq is finite too.
    _check_finite(energy_kwh * MAX_INTENSITY_G_PER_KWH, factors)

    embodied = None
    if gpu is not None or embodied_host is not None:
        from greencallbacks.embodied import estimate_embodied

        embodied = estimate_embodied(
            hours=hours, gpu=gpu_info["model"] if gpu is not None and gpu_info else None, gpus=gpus,
            host=embodied_host, host_share=host_share,
        )
        if not embodied["embodied_sources"]:
            # Nothing billed: not known, which 0 g would deny (as a record's null does).
            embodied.update(embodied_co2eq_g=None, embodied_co2eq_g_low=None, embodied_co2eq_g_high=None)
        else:
            _check_finite(embodied["embodied_co2eq_g_high"], factors)
    return {
        "method": "estimated (ex ante, from TDP and hours; not measured)",
        "hours": hours,
        "usage": usage,
        "cpu_usage": cpu_usage,
        "gpu": gpu_info,
        "cpu": cpu_info,
        "memory": {"gb": memory_gb, "w_per_gb": memory_w_per_gb},
        "power_w": {"gpu": gpu_w, "cpu": cpu_w, "memory": memory_w, "total": gpu_w + cpu_w + memory_w},
        "it_energy_kwh": it_energy_j / J_PER_KWH,
        "energy_kwh": energy_kwh,
        "pue": carbon.pue,
        "pue_source": carbon.pue_source,
        "intensity": {
            "zone": where.zone,
            "g_per_kwh": g_per_kwh,
            "source": where.source,
            "year": where.year,
            "licence": where.licence,
            "is_default": where.is_default,
            "basis": where.basis,
        },
        "co2eq_g": energy_kwh * g_per_kwh,
        "compare": compare_places(energy_kwh, compare),
        "embodied": embodied,
    }


class EstimateOverflowError(ValueError):
    """The inputs multiply past the largest float: an ``inf`` kWh (and ``Infinity`` in JSON, which
    is no JSON) would be printed as if it were an estimate. ``arguments``: the inputs given."""

    def __init__(self, arguments: tuple[str, ...]) -> None:
        self.arguments = arguments
        super().__init__(self.saying(arguments))

    @staticmethod
    def saying(names: Sequence[str]) -> str:
        """The message, with the inputs called ``names`` (the command line's flags, say)."""
        listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        too_large = f"{listed} {'are too large together' if len(names) > 1 else 'is too large'}"
        return f"the estimate overflows (its energy or CO2eq is past the largest number): {too_large}"


def _check_finite(amount: float, factors: dict[str, object]) -> None:
    """Refuse a result that overflowed, naming the inputs given that multiply into it."""
    if not math.isfinite(amount):
        raise EstimateOverflowError(tuple(name for name, value in factors.items() if value is not None))


def format_estimate(result: dict) -> str:
    """A short plain-text account of an ``estimate`` result."""
    gpu = result["gpu"]
    cpu = result["cpu"]
    lines = ["Ex-ante estimate (from TDP and hours; not measured)"]
    if gpu:
        lines.append(
            f"  GPU:    {gpu['count']} x {gpu['model']} at {gpu['tdp_w']:g} W x usage {result['usage']:g} "
            f"= {result['power_w']['gpu']:g} W ({gpu['source']}{', ' + str(gpu['year']) if gpu['year'] else ''})"
        )
    if cpu:
        what = f"{cpu['tdp_w']:g} W TDP" if "tdp_w" in cpu else f"{cpu['cores']} cores x {cpu['w_per_core']:g} W"
        lines.append(f"  CPU:    {what} x usage {result['cpu_usage']:g} = {result['power_w']['cpu']:g} W ({cpu['source']})")
    if result["memory"]["gb"]:
        lines.append(
            f"  memory: {result['memory']['gb']:g} GB x {result['memory']['w_per_gb']:g} W/GB = {result['power_w']['memory']:g} W"
        )
    intensity = result["intensity"]
    lines += [
        f"  hours:  {result['hours']:g}",
        f"  PUE:    {pue_text(result['pue'], result['pue_source'])}",
        f"Energy:   {result['energy_kwh']:.4g} kWh (IT {result['it_energy_kwh']:.4g} kWh)",
        f"CO2eq:    {result['co2eq_g'] / 1000:.4g} kg at {intensity['g_per_kwh']:.4g} gCO2eq/kWh ({intensity['source']})",
    ]
    embodied = result.get("embodied")
    if embodied and embodied["embodied_sources"]:
        from greencallbacks.embodied import format_embodied

        lines += format_embodied(embodied, result["co2eq_g"])
    elif embodied:  # no device with a published footprint: say so, never 0
        lines.append("Embodied: not known")
        lines += [f"  not counted: {reason}" for reason in embodied["embodied_missing"]]
    if result["compare"]:
        lines.append("Same energy elsewhere:")
        for row in result["compare"]:
            lines.append(f"  {row['zone']:<18} {row['g_per_kwh']:>8.4g} g/kWh  {row['co2eq_g'] / 1000:>10.4g} kg  ({row['source']})")
        notes = (mixed_bases_note([intensity.get("basis")] + [row.get("basis") for row in result["compare"]]),
                 kept_pue_note([result["pue"]], [row.get("provider_pue") for row in result["compare"]]))
        lines += [f"  note: {note}" for note in notes if note]
    return "\n".join(lines)
