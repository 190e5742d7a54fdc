"""Where the numbers come from: intensity, PUE, how each part was measured, budgets, GPUs, provenance notes."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Collection, Iterable, Mapping, Sequence

from greencallbacks.records import Record, by_run
from greencallbacks.report.attempts import inference_after_training, training_attempts
from greencallbacks.report.epochs import _stopped, phase_totals
from greencallbacks.report.missing import (
    _after_last_record,
    _missing_attempts,
    calls_left_unwritten,
    incomplete_records,
)
from greencallbacks.textformat import (
    intensity_text,
    printable,
    pue_text,
    rank_ranges,
)
from greencallbacks.units import J_PER_KWH


def source_text(source: str, zone: str, year: int | None, licence: str) -> str:
    """The source once, with zone, year and licence added only where it does not already say them."""
    extras = []
    if zone and zone not in source and zone != "user":
        extras.append(f"zone {zone}")
    if year and str(year) not in source:
        extras.append(str(year))
    if licence and licence not in source and licence != "user":
        extras.append(f"licence {licence}")
    return source + (f"; {', '.join(extras)}" if extras else "")


def carbon_summary(records: Sequence[Record]) -> dict:
    """The energy-weighted intensity over all records and the sources it came from."""
    energy = sum(r.energy_kwh for r in records)
    grams = sum(r.co2eq_g for r in records)
    first = records[0]
    sources = list(dict.fromkeys(
        source_text(r.intensity_source, r.intensity_zone, r.intensity_year, r.intensity_licence) for r in records
    ))
    return {
        "g_per_kwh": grams / energy if energy > 0 else first.intensity_gco2eq_per_kwh,
        "sources": sources,
        "years": sorted({r.intensity_year for r in records if r.intensity_year}),
        "licences": sorted({r.intensity_licence for r in records if r.intensity_licence}),
        "zones": sorted({r.intensity_zone for r in records if r.intensity_zone}),
        "is_default": any(r.intensity_is_default for r in records),
        "pue": sorted({r.pue for r in records}),
        "pue_sources": sorted({r.pue_source for r in records if r.pue_source}),
        "pue_text": "; ".join(dict.fromkeys(pue_text(r.pue, r.pue_source) for r in records)),
    }


def _sources_sentence(sources: Sequence[str], most: int = 3) -> str:
    shown = "; ".join(sources[:most])
    return shown + (f"; and {len(sources) - most} more" if len(sources) > most else "")


def provenance(records: Sequence[Record], run_summaries: Mapping[str, dict] | None = None,
               unfinished: Collection[str] = ()) -> list[str]:
    """Where the numbers come from, and a plain statement of what is estimated."""
    carbon = carbon_summary(records)
    notes = [
        f"Carbon intensity: {intensity_text(carbon['g_per_kwh'])} gCO2eq/kWh (energy-weighted), from "
        + _sources_sentence(carbon["sources"])
        + ("; no location was configured, so this is the world average" if carbon["is_default"] else "")
        + ".",
        f"PUE: {carbon['pue_text']}.",
    ]
    estimated = sorted({c["name"] for r in records for c in r.components if c.get("method") == "estimated"})
    if estimated:
        share = sum(
            c["energy_j"] for r in records for c in r.components if c.get("method") == "estimated"
        ) / max(1e-12, sum(r.it_energy_kwh for r in records) * J_PER_KWH)
        notes.append(
            f"Estimated, not measured: {', '.join(estimated)} ({share:.0%} of IT energy); "
            "estimates carry a ±50 % uncertainty."
        )
    apportioned = sorted({c["name"] for r in records for c in r.components if c.get("method") == "apportioned"})
    if apportioned:
        notes.append(
            f"Apportioned, not measured alone: {', '.join(apportioned)} (a stated share of a device that other work "
            "also used, such as a MIG instance or one die of a two-die board; each record's note gives the rule, "
            "and the uncertainty bounds the share)."
        )
    stopped = stopped_components(records)
    if stopped:
        notes.append(
            f"Not counted after a sensor failed: {', '.join(stopped)} (each record's note says when); the energy "
            "it used after that is in no total, so the totals are a lower bound."
        )
    unmeasured = unmeasured_gpus(records, run_summaries)
    if unmeasured:
        notes.append(
            "Not measured, so in no figure here: " + "; ".join(f"{gpu} ({reason})" if reason else gpu
                                                             for gpu, reason in unmeasured.items())
            + ". The GPU energy excludes them: a GPU has no estimate to fall back on, so the totals are a lower bound."
        )
    shared = gpus_used_by_others(records, run_summaries)
    if shared:
        notes.append(
            "Other processes ran on " + "; ".join(shared) + " during the run: a GPU's energy is the whole device's, "
            "so its figures include their use of it (an over-count NVML cannot split by process)."
        )
    if not any(r.components for r in records):
        # "Every component was measured by a hardware counter" of none: a meter given no sensor
        # (sensors=[]) records 0 J, and a writer of other records may name none.
        notes.append("No record names a component it measured (a meter given no sensor, or records written "
                     "without them): these figures say nothing of how, or whether, the energy was measured.")
    elif not estimated and not apportioned and not stopped and not unmeasured:
        notes.append("Every component was measured by a hardware counter or sampled power.")
    missing = {run: _missing_attempts({r.attempt for r in mine}) for run, mine in by_run(records).items()}
    missing = {run: attempts for run, attempts in missing.items() if attempts}
    if missing:
        notes.append(
            "Not in these records: " + "; ".join(f"attempt(s) {', '.join(a)} of run {printable(run)}" for run, a in missing.items())
            + ". A run resumed into another directory leaves its earlier attempts' records where they were written "
            "(its energy-summary.json names them, as earlier_records), and an attempt killed before its first "
            "record has none; the figures here leave them out. Pass every directory the run wrote in for the whole run."
        )
    notes += budget_notes(records, run_summaries)
    notes += incomplete_records(records, run_summaries)
    notes += calls_left_unwritten(records, run_summaries, unfinished)
    without = [run for run in by_run(records) if run in unfinished]
    if without:
        notes.append(
            f"No write-up (energy-summary.json) beside the records of run{'s' if len(without) > 1 else ''} "
            f"{', '.join(map(printable, without))} for {'their' if len(without) > 1 else 'its'} last attempt, which a run writes "
            "when it ends, an exception or Ctrl-C included: killed outright (SIGKILL, the out-of-memory killer, a "
            f"preemption, a SIGTERM outside Lightning), or still training. {_after_last_record(records, without)}, "
            "and it is reported as cut short, apart from runs that finished.")
    if any(r.partial for r in records):
        killed = any(r.partial and r.carried for r in records)  # a kill's open phase, carried by a resume or a heartbeat
        notes.append("Phases marked partial were cut short by an exception or interrupt"
                     + (", or by a kill (measured up to the checkpoint or heartbeat they were carried from)" if killed else "")
                     + "; their energy is in the totals.")
    if any(not r.samples_counted for r in records):
        # As the tables print them (they said "a lower bound" beside a table of n/a).
        notes.append("Some batches could not be counted (records marked samples_counted: false): samples and "
                     "J/sample are n/a wherever a count is not whole.")
    if any(t["tokens_partial"] for mine in by_run(records).values() for t in phase_totals(mine).values()):
        # A cost per token of part of the batches' tokens would divide the whole energy by too few.
        notes.append("Some records counted no tokens beside others of their phase that did (records with tokens: "
                     "null that ran batches, or tokens_counted: false where some batch's count failed): tokens and "
                     "J/token are n/a wherever a count is not whole.")
    trained_in = training_attempts(records)
    if len(trained_in) > len({run for run, _ in trained_in}):
        notes.append("A run was resumed from a checkpoint: an epoch trained whole is one row whatever attempt "
                     "trained it, and each attempt's other trainings of an epoch (cut short, or trained again) a row "
                     "of their own; an epoch cut short and redone counts in the total once per attempt, since its "
                     "energy was spent twice.")
    evaluated = sorted({r.phase for r in records if (r.run_id, r.attempt) not in trained_in and r.phase != "other"})
    if evaluated and trained_in:
        # (A Keras predict after fit is an attempt of its own: "a later session" said what was not so.)
        notes.append(f"The run also has calls that trained nothing ({', '.join(evaluated)}: an evaluation or "
                     "prediction after its training, or a checkpoint of it evaluated in a later session): that "
                     "energy is in the totals by phase and the whole run, not in the per-epoch table.")
    after = inference_after_training(records)
    if any(r.phase == "validation" and (r.run_id, r.attempt, r.seq) in after for r in records):
        notes.append("Validation run after the training (a validate or evaluate call after fit or train) is in the "
                     "totals by phase and the whole run, not in the per-epoch table: it trained no epoch.")
    notes.append(f"Tool: greencallbacks {versions_text(records)}.")
    return notes


def tool_versions(records: list[Record]) -> list[str]:
    """The greencallbacks versions that wrote ``records``, in the order they first appear: a run
    resumed after an upgrade, or repeats run with two versions, has several."""
    return list(dict.fromkeys(r.tool_version for r in records if r.tool_version))


def versions_text(records: list[Record]) -> str:
    versions = tool_versions(records)
    if not versions:
        return "(unknown version)"
    return versions[0] if len(versions) == 1 else ", ".join(versions[:-1]) + " and " + versions[-1]


_BUDGET_UNITS = {"kwh": "kWh", "co2eq_g": "gCO2eq"}


def _budget_of(run: str, run_summaries: Mapping[str, dict] | None) -> dict | None:
    """The ``budget`` field of the run's summary, None without one."""
    summary = (run_summaries or {}).get(run)
    budget = summary.get("budget") if isinstance(summary, dict) else None
    return budget if isinstance(budget, dict) else None


def budget_stopped(records: Sequence[Record], run_summaries: Mapping[str, dict] | None) -> list[str]:
    """The runs of ``records`` whose budget stopped their training (their summaries say so)."""
    return [run for run in by_run(records) if (_budget_of(run, run_summaries) or {}).get("stopped") is True]


def budget_notes(records: Sequence[Record], run_summaries: Mapping[str, dict] | None) -> list[str]:
    """What each run's budget did, from its summary's ``budget``: a training it stopped has fewer
    epochs than it was set to, and the records alone cannot tell that stop from the planned end."""
    notes = []
    for run in by_run(records):
        budget = _budget_of(run, run_summaries)
        if budget is None:
            continue
        limits = budget.get("limits") if isinstance(budget.get("limits"), dict) else {}
        limit = " and ".join(f"{value:g} {_BUDGET_UNITS.get(key, key)}" for key, value in limits.items()
                             if isinstance(value, (int, float)))
        said = [w for w in budget.get("warnings") or () if isinstance(w, str)]
        if budget.get("stopped"):
            reason = budget.get("reason") if isinstance(budget.get("reason"), str) else ""
            notes.append(f"Run {printable(run)}'s budget ({limit}) stopped its training" + (f": {reason}" if reason else "")
                         + "; its figures are those of the training it stopped.")
        elif said:
            notes.append(f"Run {printable(run)}'s budget ({limit}) warned: {'; '.join(said)}; its training went on.")
    return notes


def unmeasured_gpus(records: Sequence[Record], run_summaries: Mapping[str, dict] | None) -> dict[str, str]:
    """The GPUs the runs' summaries list as not measured from the start (``gpus_unmeasured``: NVML
    lists them, but reads neither their energy nor their power), named with their UUID and rank
    where known, each with its reason. No record holds them, so only the summary can say."""
    found: dict[str, str] = {}
    for run in by_run(records):
        summary = (run_summaries or {}).get(run)
        listed = summary.get("gpus_unmeasured") if isinstance(summary, dict) else None
        for gpu in listed if isinstance(listed, list) else ():
            if not isinstance(gpu, dict) or not isinstance(gpu.get("name"), str):
                continue
            where = [str(gpu["uuid"])] if isinstance(gpu.get("uuid"), str) else []
            if isinstance(gpu.get("rank"), int):
                where.append(f"rank {gpu['rank']}")
            label = gpu["name"] + (f" ({', '.join(where)})" if where else "")
            found.setdefault(label, gpu["reason"] if isinstance(gpu.get("reason"), str) else "")
    return found


# A GPU the ``embodied_missing`` of a summary written before ``embodied_left_out`` (2026-12-06)
# lists ("gpu1: 'NVIDIA H200' (H200 SXM): no published ...", "rank 1: gpu1: ..." in a distributed
# run): the device before the reason.
_GPU_LEFT_OUT = re.compile(r"^(?:(?P<ranks>ranks? [\d, -]+): )?(?P<gpu>gpu[\w-]*): (?P<model>'[^']*')?")


def gpus_without_embodied(records: Sequence[Record], run_summaries: Mapping[str, dict] | None) -> list[str]:
    """The GPUs the runs' summaries list as left out of the embodied figure (no published
    footprint, or no model known), as ``gpu1 ('NVIDIA H200', rank 1)``. Their records carry the
    other devices' figure, so only the summary can say: its ``embodied_left_out``, or for a summary
    written before it, the words of its ``embodied_missing``."""
    found: list[str] = []
    for run in by_run(records):
        summary = (run_summaries or {}).get(run)
        if not isinstance(summary, dict):
            continue
        parts = summary.get("embodied_left_out")
        if isinstance(parts, list):
            labels = _gpus_left_out(parts)
        else:  # written before it
            labels = _gpus_left_out_in_words(summary.get("embodied_missing"))
        found += [label for label in labels if label not in found]
    return found


def _gpus_left_out(parts: list) -> list[str]:
    labels = []
    for part in parts:
        if not (isinstance(part, dict) and part.get("kind") == "gpu" and isinstance(part.get("part"), str)):
            continue
        ranks = part.get("ranks")
        ranks = sorted(r for r in ranks if isinstance(r, int)) if isinstance(ranks, list) else []
        where = [repr(part["model"])] if isinstance(part.get("model"), str) else []
        if ranks:
            where.append(f"rank{'s' if len(ranks) > 1 else ''} {rank_ranges(ranks)}")
        labels.append(part["part"] + (f" ({', '.join(where)})" if where else ""))
    return labels


def _gpus_left_out_in_words(listed: object) -> list[str]:
    labels = []
    for reason in listed if isinstance(listed, list) else ():
        match = _GPU_LEFT_OUT.match(reason) if isinstance(reason, str) else None
        if match:
            where = [part for part in (match["model"], match["ranks"]) if part]
            labels.append(match["gpu"] + (f" ({', '.join(where)})" if where else ""))
    return labels


def gpus_used_by_others(records: Sequence[Record], run_summaries: Mapping[str, dict] | None) -> list[str]:
    """The GPUs that the runs' summaries say other processes used during the run
    (``gpu_other_processes``, looked at its start and end), each as ``gpu0 (GPU-…)``."""
    found: dict[str, None] = {}
    for run in by_run(records):
        summary = (run_summaries or {}).get(run)
        listed = summary.get("gpu_other_processes") if isinstance(summary, dict) else None
        for gpu in listed if isinstance(listed, list) else ():
            if isinstance(gpu, dict) and isinstance(gpu.get("gpu"), str):
                found[gpu["gpu"] + (f" ({gpu['uuid']})" if isinstance(gpu.get("uuid"), str) else "")] = None
    return list(found)


# How a component was obtained, in words a paper can use: the sensor's own source where the record
# names it (Sensor.source: "NVML energy counters", "amdsmi energy accumulators", "TDP x CPU time");
# for records without one (written before it, or by a user's sensor), only what the method says.
_KIND_WORDS = {"gpu": "GPU", "cpu": "CPU", "dram": "DRAM", "ram": "RAM"}
_METHOD_VERBS = {"estimated": "estimated from", "apportioned": "apportioned from a shared device's"}
_METHOD_ALONE = {"counter": "from energy counters", "sampled": "from integrated power samples",
                 "estimated": "estimated", "apportioned": "apportioned from a shared device's measurement"}


# Records written before the CPU estimate named its per-core default in its source say "TDP x CPU
# time" for every CPU, though their note says no TDP was found and a default per core was used.
_OLDER_CPU_SOURCE = "TDP x CPU time"
_PER_CORE_NOTE = re.compile(r"CPU (.+?) not in the TDP table: assumed ([0-9.]+) W per physical core")


def _source_of(part: dict) -> str:
    """What a ``hardware`` part's energy is estimated from: its records' source; for an older CPU
    record whose note says it used the per-core default, that default, not a TDP it never had."""
    used = _PER_CORE_NOTE.search(part["note"]) if part["source"] == _OLDER_CPU_SOURCE else None
    if used is None:
        return part["source"]
    from greencallbacks.sensors.estimate import DEFAULT_W_PER_CORE, DEFAULT_W_PER_CORE_SOURCE

    watts = float(used.group(2))
    # Where the default comes from, as newer records say it (an Arm core's default is another's).
    cited = f"; the default is {DEFAULT_W_PER_CORE_SOURCE}" if watts == DEFAULT_W_PER_CORE else ""
    return f"a default of {watts:g} W per physical core x CPU time (no TDP found for CPU {used.group(1)}{cited})"


def _method_words(kind: str, method: str, source: str) -> str:
    what = f"{_KIND_WORDS.get(kind, kind)} energy"
    if source:
        return f"{what} {_METHOD_VERBS.get(method, 'from')} {source}"
    return f"{what} {_METHOD_ALONE.get(method, method)}"


def stopped_components(records: Iterable[Record]) -> list[str]:
    """Components that a sensor failure left uncounted for the rest of an attempt (the meter's
    ``stopped counting at ...`` note), though their method still says how they were read before."""
    return sorted({c.get("name", "?") for r in records for c in r.components if _stopped(c)})


def hardware(records: Sequence[Record]) -> list[dict]:
    """Each component measured: name, kind, method, its share of IT energy, and the sensor's notes
    (every distinct one, in order: a failure in each of two attempts is two notes)."""
    energy: dict[tuple[str, str, str], float] = defaultdict(float)
    notes: dict[tuple[str, str, str], dict[str, None]] = defaultdict(dict)
    sources: dict[tuple[str, str, str], str] = {}
    for r in records:
        for c in r.components:
            key = (c.get("name", "?"), c.get("kind", "?"), c.get("method", "?"))
            energy[key] += c.get("energy_j", 0.0)
            if c.get("note"):
                notes[key][c["note"]] = None
            if isinstance(c.get("source"), str) and c["source"]:
                sources[key] = c["source"]
    total = sum(energy.values())
    return [
        {"name": name, "kind": kind, "method": method, "energy_share": e / total if total > 0 else None,
         "note": "; ".join(notes.get((name, kind, method), ())), "source": sources.get((name, kind, method), "")}
        for (name, kind, method), e in sorted(energy.items())
    ]


def method_sentence(records: Sequence[Record]) -> str:
    """How the energy was obtained, e.g. "GPU energy from NVML energy counters; CPU energy estimated ..."."""
    seen = []
    for part in hardware(records):
        words = _method_words(part["kind"], part["method"], _source_of(part))
        if words not in seen:
            seen.append(words)
    stopped = stopped_components(records)
    if stopped:
        seen.append(f"{', '.join(stopped)} not counted after its sensor failed")
    return "; ".join(seen) if seen else "no component recorded"
