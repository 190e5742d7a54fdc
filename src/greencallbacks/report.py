"""Reports from records: per-epoch table, totals by phase, provenance and a citable statement.

Formats: Markdown, LaTeX (booktabs), JSON, CSV, and a PNG plot. Several runs of the same
configuration (several ``run_id``) are summarised as mean +/- standard error over runs.

Plain Python, no framework and no pandas: a report must be producible anywhere the records are.
matplotlib is imported only when a plot is asked for.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from typing import Iterable, Sequence

from greencallbacks.records import PHASES, Record
from greencallbacks.units import J_PER_KWH


def methods_of(record: Record) -> str:
    """How each component was measured, e.g. ``gpu0:counter, cpu:estimated``."""
    return ", ".join(f"{c['name']}:{c['method']}" for c in record.components)


def is_estimated(record: Record) -> bool:
    return any(c.get("method") == "estimated" for c in record.components)


def epoch_rows(records: Iterable[Record]) -> list[dict]:
    """One row per (run, epoch): training energy and its per-sample cost, validation alongside."""
    rows: dict[tuple[str, int], dict] = {}
    for r in records:
        if r.epoch is None or r.phase not in ("train", "validation"):
            continue
        row = rows.setdefault(
            (r.run_id, r.epoch),
            {"run_id": r.run_id, "epoch": r.epoch, "seconds": 0.0, "energy_kwh": 0.0, "co2eq_g": 0.0,
             "train_samples": 0, "train_j_per_sample": None, "val_energy_kwh": 0.0, "methods": "",
             "estimated": False, "partial": False},
        )
        row["partial"] |= r.partial
        row["estimated"] |= is_estimated(r)
        if r.phase == "train":
            row["seconds"] += r.duration_s
            row["energy_kwh"] += r.energy_kwh
            row["co2eq_g"] += r.co2eq_g
            row["train_samples"] += r.samples
            row["train_j_per_sample"] = r.energy_j_per_sample
            row["methods"] = methods_of(r)
        else:
            row["val_energy_kwh"] += r.energy_kwh
    return [rows[k] for k in sorted(rows)]


def phase_totals(records: Iterable[Record]) -> dict[str, dict]:
    totals: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "energy_kwh": 0.0, "co2eq_g": 0.0, "samples": 0})
    for r in records:
        t = totals[r.phase]
        t["seconds"] += r.duration_s
        t["energy_kwh"] += r.energy_kwh
        t["co2eq_g"] += r.co2eq_g
        t["samples"] += r.samples
    return {p: dict(totals[p]) for p in PHASES if p in totals}


def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits + 1}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def format_epoch_table(records: Sequence[Record]) -> str:
    """A Markdown table: epoch, seconds, kWh, gCO2eq, J/sample, how each component was measured."""
    lines = [
        "| epoch | seconds | kWh | gCO2eq | J/sample | measured by |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in epoch_rows(records):
        mark = " (partial)" if row["partial"] else ""
        lines.append(
            f"| {row['epoch']}{mark} | {row['seconds']:.2f} | {row['energy_kwh']:.3e} | {row['co2eq_g']:.3e} "
            f"| {_fmt(row['train_j_per_sample'])} | {row['methods']} |"
        )
    return "\n".join(lines)


def format_totals(records: Sequence[Record]) -> str:
    lines = ["| phase | seconds | kWh | gCO2eq | samples |", "|---|---:|---:|---:|---:|"]
    totals = phase_totals(records)
    for phase, t in totals.items():
        lines.append(f"| {phase} | {t['seconds']:.2f} | {t['energy_kwh']:.3e} | {t['co2eq_g']:.3e} | {t['samples']} |")
    all_kwh = sum(t["energy_kwh"] for t in totals.values())
    all_g = sum(t["co2eq_g"] for t in totals.values())
    all_s = sum(t["seconds"] for t in totals.values())
    lines.append(f"| **total** | {all_s:.2f} | {all_kwh:.3e} | {all_g:.3e} | |")
    return "\n".join(lines)


def provenance(records: Sequence[Record]) -> list[str]:
    """Where the numbers come from, and a plain statement of what is estimated."""
    first = records[0]
    notes = [
        f"Carbon intensity: {first.intensity_gco2eq_per_kwh:.0f} gCO2eq/kWh, {first.intensity_source}"
        + (f" ({first.intensity_year}, {first.intensity_licence})" if first.intensity_year else "")
        + ("; no location was configured, so this is the world average" if first.intensity_is_default else "")
        + ".",
        f"PUE: {first.pue:g}" + (f" ({first.pue_source})" if first.pue_source else "") + ".",
    ]
    estimated = sorted({c["name"] for r in records for c in r.components if c.get("method") == "estimated"})
    if estimated:
        share = sum(
            c["energy_j"] for r in records for c in r.components if c.get("method") == "estimated"
        ) / max(1e-12, sum(r.it_energy_kwh for r in records) * J_PER_KWH)
        notes.append(
            f"Estimated, not measured: {', '.join(estimated)} ({share:.0%} of IT energy); "
            "estimates carry a +/-50 % uncertainty."
        )
    else:
        notes.append("Every component was measured by a hardware counter or sampled power.")
    if any(r.partial for r in records):
        notes.append("Phases marked partial were cut short by an exception or interrupt.")
    notes.append(f"Tool: greencallbacks {first.tool_version}.")
    return notes


# ------------------------------------------------------------------ several runs: mean +/- SE

# Everyday equivalents, each with its source. 8,887 g per gallon and ~400 g per mile (at ~22 mpg)
# are the figures of the EPA fact sheet cited.
EQUIVALENTS = (
    {
        "what": "miles driven by a typical passenger vehicle",
        "g_per_unit": 400.0,
        "source": "US EPA, Tailpipe Greenhouse Gas Emissions from a Typical Passenger Vehicle "
        "(EPA-420-F-23-014): about 400 g CO2 per mile",
        "year": 2023,
    },
    {
        "what": "gallons of gasoline burned",
        "g_per_unit": 8887.0,
        "source": "US EPA, Tailpipe Greenhouse Gas Emissions from a Typical Passenger Vehicle "
        "(EPA-420-F-23-014): 8,887 g CO2 per gallon of gasoline",
        "year": 2023,
    },
)

# How each (kind, method) was obtained, in words a paper can use.
_METHOD_WORDS = {
    ("gpu", "counter"): "GPU energy from NVML energy counters",
    ("gpu", "sampled"): "GPU energy from integrated NVML power samples",
    ("gpu", "estimated"): "GPU energy estimated",
    ("cpu", "counter"): "CPU energy from RAPL counters",
    ("cpu", "estimated"): "CPU energy estimated from TDP x CPU utilisation",
    ("dram", "counter"): "DRAM energy from RAPL counters",
    ("ram", "estimated"): "RAM energy estimated from resident memory x W/GB",
}


def mean_and_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); SE is None for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def run_ids(records: Iterable[Record]) -> list[str]:
    return sorted({r.run_id for r in records})


def run_totals(records: Sequence[Record]) -> dict[str, dict]:
    """Per run: all phases (the whole job) and the training phases alone.

    Sensor uncertainties add linearly over a run's phases: one sensor's error (a TDP model, a
    counter's calibration) is the same in every window, so adding in quadrature would understate it.
    """
    out: dict[str, dict] = {}
    for run in run_ids(records):
        mine = [r for r in records if r.run_id == run]
        train = [r for r in mine if r.phase == "train"]
        energy = sum(r.energy_kwh for r in mine)
        out[run] = {
            "seconds": sum(r.duration_s for r in mine),
            "energy_kwh": energy,
            "it_energy_kwh": sum(r.it_energy_kwh for r in mine),
            "co2eq_g": sum(r.co2eq_g for r in mine),
            "uncertainty_kwh": sum(r.uncertainty_kwh for r in mine),
            "train_energy_kwh": sum(r.energy_kwh for r in train),
            "train_co2eq_g": sum(r.co2eq_g for r in train),
            "epochs": len({r.epoch for r in train if r.epoch is not None}),
        }
    return out


def _stat(values: Sequence[float]) -> dict:
    mean, se = mean_and_se(values)
    return {"mean": mean, "se": se, "n": len(values)}


def epoch_summary(records: Sequence[Record]) -> list[dict]:
    """One row per epoch over runs: seconds, kWh, gCO2eq and J/sample as mean and SE.

    With one run the SE is None and ``uncertainty_kwh`` (from the sensors) is the error to quote.
    """
    rows = epoch_rows(records)
    uncertainty: dict[tuple[str, int], float] = defaultdict(float)
    for r in records:
        if r.phase == "train" and r.epoch is not None:
            uncertainty[(r.run_id, r.epoch)] += r.uncertainty_kwh
    by_epoch: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_epoch[row["epoch"]].append(row)
    out = []
    for epoch in sorted(by_epoch):
        group = by_epoch[epoch]
        per_sample = [
            row["energy_kwh"] * J_PER_KWH / row["train_samples"] for row in group if row["train_samples"] > 0
        ]
        out.append(
            {
                "epoch": epoch,
                "runs": len(group),
                "seconds": _stat([row["seconds"] for row in group]),
                "energy_kwh": _stat([row["energy_kwh"] for row in group]),
                "co2eq_g": _stat([row["co2eq_g"] for row in group]),
                "j_per_sample": _stat(per_sample) if per_sample else None,
                "uncertainty_kwh": _stat([uncertainty[(row["run_id"], epoch)] for row in group])["mean"],
                "methods": ", ".join(sorted({m for row in group for m in row["methods"].split(", ") if m})),
                "estimated": any(row["estimated"] for row in group),
                "partial": any(row["partial"] for row in group),
            }
        )
    return out


def phase_summary(records: Sequence[Record]) -> dict[str, dict]:
    """Per phase, each run's sum, then mean and SE over runs (a run without the phase counts 0)."""
    runs = run_ids(records)
    per_run = {run: phase_totals([r for r in records if r.run_id == run]) for run in runs}
    phases = [p for p in PHASES if any(p in totals for totals in per_run.values())]
    zero = {"seconds": 0.0, "energy_kwh": 0.0, "co2eq_g": 0.0, "samples": 0}
    return {
        phase: {
            key: _stat([per_run[run].get(phase, zero)[key] for run in runs])
            for key in ("seconds", "energy_kwh", "co2eq_g", "samples")
        }
        for phase in phases
    }


def hardware(records: Sequence[Record]) -> list[dict]:
    """Each component measured: name, kind, method, its share of IT energy, and the sensor's note."""
    energy: dict[tuple[str, str, str], float] = defaultdict(float)
    notes: dict[tuple[str, str, str], str] = {}
    for r in records:
        for c in r.components:
            key = (c.get("name", "?"), c.get("kind", "?"), c.get("method", "?"))
            energy[key] += c.get("energy_j", 0.0)
            if c.get("note"):
                notes[key] = c["note"]
    total = sum(energy.values())
    return [
        {"name": name, "kind": kind, "method": method, "energy_share": e / total if total > 0 else None,
         "note": notes.get((name, kind, method), "")}
        for (name, kind, method), e in sorted(energy.items())
    ]


def method_sentence(records: Sequence[Record]) -> str:
    """How the energy was obtained, e.g. "GPU energy from NVML energy counters; CPU energy estimated ..."."""
    seen = []
    for part in hardware(records):
        words = _METHOD_WORDS.get((part["kind"], part["method"]), f"{part['kind']} energy {part['method']}")
        if words not in seen:
            seen.append(words)
    return "; ".join(seen) if seen else "no component recorded"


def carbon_summary(records: Sequence[Record]) -> dict:
    """The energy-weighted intensity over all records and the sources it came from."""
    energy = sum(r.energy_kwh for r in records)
    grams = sum(r.co2eq_g for r in records)
    sources = list(dict.fromkeys(r.intensity_source for r in records))
    years = sorted({r.intensity_year for r in records if r.intensity_year})
    first = records[0]
    return {
        "g_per_kwh": grams / energy if energy > 0 else first.intensity_gco2eq_per_kwh,
        "sources": sources,
        "years": years,
        "licences": sorted({r.intensity_licence for r in records if r.intensity_licence}),
        "zones": sorted({r.intensity_zone for r in records if r.intensity_zone}),
        "is_default": any(r.intensity_is_default for r in records),
        "pue": sorted({r.pue for r in records}),
        "pue_sources": sorted({r.pue_source for r in records if r.pue_source}),
    }


def equivalents(co2eq_g: float) -> list[dict]:
    return [{**e, "amount": co2eq_g / e["g_per_unit"]} for e in EQUIVALENTS]


def compare_zones(records: Sequence[Record], zones: Sequence[str]) -> list[dict]:
    """The run's facility energy (mean per run) priced at other zones: "had this run in X"."""
    from greencallbacks.estimate import compare_places

    energy, _ = mean_and_se([t["energy_kwh"] for t in run_totals(records).values()])
    return compare_places(energy, zones)


def _pm(stat: dict | None, fmt: str = "{:.3g}", plus_minus: str = " ± ") -> str:
    if stat is None or stat["mean"] is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "n/a"
    text = fmt.format(stat["mean"])
    return text + (plus_minus + fmt.format(stat["se"]) if stat["se"] is not None else "")


def statement(records: Sequence[Record]) -> str:
    """A sentence a paper can cite: energy, its error, CO2eq, intensity and source, tool, methods."""
    totals = list(run_totals(records).values())
    energy = _stat([t["energy_kwh"] for t in totals])
    grams = _stat([t["co2eq_g"] for t in totals])
    sensor = sum(t["uncertainty_kwh"] for t in totals) / len(totals)
    carbon = carbon_summary(records)
    year = "/".join(str(y) for y in carbon["years"])
    source = "; ".join(carbon["sources"]) + (f", {year}" if year and year not in "; ".join(carbon["sources"]) else "")
    version = records[0].tool_version or "(unknown version)"
    pue = "/".join(f"{p:g}" for p in carbon["pue"])
    if len(totals) == 1:
        head = (
            f"Training used {energy['mean']:.3g} kWh (± {sensor:.2g} kWh sensor uncertainty) "
            f"and emitted {grams['mean']:.3g} gCO2eq"
        )
    else:
        head = (
            f"Each of {len(totals)} training runs used {energy['mean']:.3g} ± {energy['se']:.2g} kWh "
            f"and emitted {grams['mean']:.3g} ± {grams['se']:.2g} gCO2eq (mean ± standard error over runs; "
            f"sensor uncertainty ± {sensor:.2g} kWh per run)"
        )
    text = (
        f"{head} at {carbon['g_per_kwh']:.0f} gCO2eq/kWh ({source}) with a PUE of {pue}, "
        f"measured with greencallbacks {version}; {method_sentence(records)}."
    )
    if carbon["is_default"]:
        text += " No location was configured, so the world-average intensity was used."
    return text


def summary(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = ()) -> dict:
    """Everything a report says, as one JSON-friendly dict."""
    if not records:
        raise ValueError("no records to report")
    totals = run_totals(records)
    energy_stat = _stat([t["energy_kwh"] for t in totals.values()])
    grams_stat = _stat([t["co2eq_g"] for t in totals.values()])
    out = {
        "runs": list(totals),
        "tool_version": records[0].tool_version,
        "epochs": epoch_summary(records),
        "epoch_rows": epoch_rows(records),
        "phases": phase_summary(records),
        "run_totals": totals,
        "total": {
            "energy_kwh": energy_stat,
            "co2eq_g": grams_stat,
            "train_energy_kwh": _stat([t["train_energy_kwh"] for t in totals.values()]),
            "seconds": _stat([t["seconds"] for t in totals.values()]),
            "sensor_uncertainty_kwh": sum(t["uncertainty_kwh"] for t in totals.values()) / len(totals),
        },
        "hardware": hardware(records),
        "carbon": carbon_summary(records),
        "provenance": provenance(records),
        "statement": statement(records),
    }
    if with_equivalents:
        out["equivalents"] = equivalents(grams_stat["mean"])
    if compare:
        out["compare_zones"] = compare_zones(records, compare)
    return out


# ---------------------------------------------------------------------------------- formats


def format_epoch_summary(data: dict) -> str:
    """Markdown per-epoch table; mean ± SE columns when there are several runs."""
    several = len(data["runs"]) > 1
    suffix = " (mean ± SE)" if several else ""
    lines = [
        f"| epoch | seconds{suffix} | kWh{suffix} | gCO2eq{suffix} | J/sample{suffix} | ± kWh (sensors) | measured by |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in data["epochs"]:
        mark = " (partial)" if row["partial"] else ""
        lines.append(
            f"| {row['epoch']}{mark} | {_pm(row['seconds'], '{:.2f}')} | {_pm(row['energy_kwh'], '{:.3e}')} "
            f"| {_pm(row['co2eq_g'], '{:.3e}')} | {_pm(row['j_per_sample'], '{:.4g}')} "
            f"| {row['uncertainty_kwh']:.1e} | {row['methods']} |"
        )
    return "\n".join(lines)


def format_phase_summary(data: dict) -> str:
    several = len(data["runs"]) > 1
    suffix = " (mean ± SE)" if several else ""
    lines = [f"| phase | seconds{suffix} | kWh{suffix} | gCO2eq{suffix} | samples |", "|---|---:|---:|---:|---:|"]
    for phase, t in data["phases"].items():
        lines.append(
            f"| {phase} | {_pm(t['seconds'], '{:.2f}')} | {_pm(t['energy_kwh'], '{:.3e}')} "
            f"| {_pm(t['co2eq_g'], '{:.3e}')} | {t['samples']['mean']:.0f} |"
        )
    total = data["total"]
    lines.append(
        f"| **total** | {_pm(total['seconds'], '{:.2f}')} | {_pm(total['energy_kwh'], '{:.3e}')} "
        f"| {_pm(total['co2eq_g'], '{:.3e}')} | |"
    )
    return "\n".join(lines)


def render_markdown(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = ()) -> str:
    data = summary(records, with_equivalents=with_equivalents, compare=compare)
    runs = data["runs"]
    parts = [f"# Energy report ({len(runs)} run{'s' if len(runs) != 1 else ''}: {', '.join(runs)})", ""]
    if len(runs) > 1:
        parts += [f"Values are mean ± standard error over the {len(runs)} runs.", ""]
    parts += ["## Per epoch (training)", "", format_epoch_summary(data), ""]
    parts += ["## Totals by phase", "", format_phase_summary(data), ""]
    parts += ["## Hardware", "", "| component | kind | method | share of IT energy | note |", "|---|---|---|---:|---|"]
    for part in data["hardware"]:
        share = f"{part['energy_share']:.0%}" if part["energy_share"] is not None else "n/a"
        parts.append(f"| {part['name']} | {part['kind']} | {part['method']} | {share} | {part['note']} |")
    parts += ["", "## Provenance", ""] + [f"- {n}" for n in data["provenance"]]
    parts += [
        f"- Sensor uncertainty of the whole run: ± {data['total']['sensor_uncertainty_kwh']:.2e} kWh "
        "(one standard uncertainty, added linearly over phases)."
    ]
    parts += ["", "## Statement for a paper", "", data["statement"]]
    if "equivalents" in data:
        parts += ["", "## Everyday equivalents", ""]
        for e in data["equivalents"]:
            parts.append(f"- {e['amount']:.3g} {e['what']} ({e['source']}, {e['year']})")
    if "compare_zones" in data:
        parts += [
            "", "## Had this run been elsewhere (same energy, other grid)", "",
            "| zone | gCO2eq/kWh | gCO2eq | source |", "|---|---:|---:|---|",
        ]
        for row in data["compare_zones"]:
            parts.append(f"| {row['zone']} | {row['g_per_kwh']:.4g} | {row['co2eq_g']:.3e} | {row['source']} |")
    return "\n".join(parts) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "×": r"$\times$", "→": r"$\rightarrow$",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX document (specials escaped; ±, ×, → as math)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_pm(stat: dict | None, fmt: str) -> str:
    if stat is None:
        return "n/a"
    text = fmt.format(stat["mean"])
    return text + (r" $\pm$ " + fmt.format(stat["se"]) if stat["se"] is not None else "")


def render_latex(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = ()) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``) and the statement, ready to paste."""
    data = summary(records, with_equivalents=with_equivalents, compare=compare)
    several = len(data["runs"]) > 1
    over = f" Mean $\\pm$ standard error over {len(data['runs'])} runs." if several else ""
    lines = [
        f"% Generated by greencallbacks {latex_escape(data['tool_version'])}; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Energy and emissions per training epoch." + over + "}",
        r"\label{tab:greencallbacks-energy}",
        r"\begin{tabular}{rrrrrl}",
        r"\toprule",
        r"Epoch & Time (s) & Energy (kWh) & CO$_2$eq (g) & J/sample & Measured by \\",
        r"\midrule",
    ]
    for row in data["epochs"]:
        lines.append(
            f"{row['epoch']}{' (partial)' if row['partial'] else ''} & {_latex_pm(row['seconds'], '{:.2f}')} "
            f"& {_latex_pm(row['energy_kwh'], '{:.3e}')} & {_latex_pm(row['co2eq_g'], '{:.3e}')} "
            f"& {_latex_pm(row['j_per_sample'], '{:.4g}')} & {latex_escape(row['methods'])} \\\\"
        )
    total = data["total"]
    lines += [
        r"\midrule",
        f"Total (all phases) & {_latex_pm(total['seconds'], '{:.2f}')} & {_latex_pm(total['energy_kwh'], '{:.3e}')} "
        f"& {_latex_pm(total['co2eq_g'], '{:.3e}')} & & \\\\",
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
        "",
        latex_escape(data["statement"]),
    ]
    if "equivalents" in data:
        lines += ["", "This is about " + " or ".join(
            f"{e['amount']:.3g} {latex_escape(e['what'])} ({latex_escape(e['source'])}, {e['year']})"
            for e in data["equivalents"]
        ) + "."]
    if "compare_zones" in data:
        lines += ["", "The same energy would have emitted " + "; ".join(
            f"{row['co2eq_g']:.3g} gCO2eq in {latex_escape(row['zone'])} ({row['g_per_kwh']:.0f} gCO2eq/kWh)"
            for row in data["compare_zones"]
        ) + "."]
    return "\n".join(lines) + "\n"


def render_csv(records: Sequence[Record]) -> str:
    """One row per (run, epoch), with the carbon settings beside the numbers."""
    rows = epoch_rows(records)
    carbon = {(r.run_id, r.epoch): r for r in records if r.phase == "train"}
    sensor: dict[tuple[str, int], float] = defaultdict(float)
    for r in records:
        if r.phase == "train" and r.epoch is not None:
            sensor[(r.run_id, r.epoch)] += r.uncertainty_kwh
    for row in rows:
        first = carbon.get((row["run_id"], row["epoch"]))
        row["uncertainty_kwh"] = sensor[(row["run_id"], row["epoch"])]
        row["intensity_gco2eq_per_kwh"] = first.intensity_gco2eq_per_kwh if first else None
        row["intensity_source"] = first.intensity_source if first else ""
        row["pue"] = first.pue if first else None
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["run_id", "epoch"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


FORMATS = ("md", "latex", "json", "csv")


def render(records: Sequence[Record], fmt: str = "md", *, with_equivalents: bool = False, compare: Sequence[str] = ()) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not records:
        raise ValueError("no records to report")
    if fmt == "md":
        return render_markdown(records, with_equivalents=with_equivalents, compare=compare)
    if fmt == "latex":
        return render_latex(records, with_equivalents=with_equivalents, compare=compare)
    if fmt == "json":
        data = summary(records, with_equivalents=with_equivalents, compare=compare)
        return json.dumps(_finite_json(data), indent=2, allow_nan=False)
    return render_csv(records)


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


# ------------------------------------------------------------------------------------- plot


def plot_epochs(records: Sequence[Record], path: str | os.PathLike) -> None:
    """PNG: per-epoch training energy (bars, SE error bars over runs) and cumulative CO2eq (line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = epoch_summary(records)
    if not rows:
        raise ValueError("no training epochs to plot")
    epochs = [row["epoch"] for row in rows]
    energy_kwh = [row["energy_kwh"]["mean"] for row in rows]
    # Small runs read better in Wh than in 1e-5 kWh.
    scale, unit = (1000.0, "Wh") if max(energy_kwh) < 0.1 else (1.0, "kWh")
    errors = [(row["energy_kwh"]["se"] or 0.0) * scale for row in rows]
    cumulative, running = [], 0.0
    for row in rows:
        running += row["co2eq_g"]["mean"]
        cumulative.append(running)

    figure = Figure(figsize=(6.4, 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(epochs, [e * scale for e in energy_kwh], yerr=errors if any(errors) else None, color="#4c9a6a",
             label=f"training energy ({unit})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"energy per epoch ({unit})")
    line_axes = axes.twinx()
    line_axes.plot(epochs, cumulative, color="#333333", marker="o", label="cumulative gCO2eq")
    line_axes.set_ylabel("cumulative CO2eq (g)")
    line_axes.set_ylim(bottom=0)
    runs = len(run_ids(records))
    axes.set_title("Energy per epoch and cumulative CO2eq" + (f" (mean of {runs} runs)" if runs > 1 else ""))
    handles = axes.get_legend_handles_labels()[0] + line_axes.get_legend_handles_labels()[0]
    axes.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
