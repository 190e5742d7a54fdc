"""What a report says, as data: per-epoch rows, totals by phase and prefix, runs grouped by configuration
(mean ± SE over repeats), provenance and the citable statement. The formats render these."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from typing import Callable, Collection, Iterable, Mapping, Sequence

from greencallbacks.carbon.intensity import USER_ZONE
from greencallbacks.ledger import each_phase_once, embodied_seconds, wall_seconds
from greencallbacks.records import PHASES, Record, by_run, counted_to_heartbeat
from greencallbacks.runs import UNSEEN_BY_SUMMARY
from greencallbacks.textformat import (
    ENERGY_UNITS,
    printable,
    count_text,
    energy_text,
    intensity_text,
    joule_text,
    mass_text,
    number,
    pick_unit,
    pue_text,
    rank_ranges,
)
from greencallbacks.units import J_PER_KWH

GROUPED_BY = ("framework, training epochs and the first one, samples and steps per epoch, sensors (name and method), ranks, "
              "and the grid (intensity zone, or the number given) and PUE; a run whose training did not finish is "
              "never pooled with another")
_PHASE_WORDS = {"train": "training", "validation": "validation", "test": "test", "predict": "prediction",
                "other": "the time between phases"}


def methods_of(record: Record) -> str:
    """How each component was measured, e.g. ``gpu0:counter, cpu:estimated``; ``gpu0:stopped``
    where a failure left it uncounted (the record's note says since when)."""
    return ", ".join(f"{c['name']}:{'stopped' if _stopped(c) else c['method']}" for c in record.components)


def _stopped(component: dict) -> bool:
    return str(component.get("note", "")).startswith("stopped counting")


def is_estimated(record: Record) -> bool:
    return any(c.get("method") == "estimated" for c in record.components)


# ------------------------------------------------------------------------------- per epoch
def epoch_rows(records: Iterable[Record]) -> list[dict]:
    """One row per (run, attempt, epoch): training energy and its per-sample cost, validation alongside.

    ``val_energy_kwh`` and ``val_co2eq_g`` are None for an epoch that ran no validation
    (``check_val_every_n_epoch``, ``validation_freq``): no validation is not validation that cost 0.

    An epoch cut short in one attempt and redone by the next is two rows (``redone`` on the
    first), never one row with the energy of both divided by one epoch's samples. An attempt
    that trained nothing (a checkpoint evaluated again in a later session: Lightning's
    ``validate(ckpt_path=...)``) has no epochs of its own: its phases are in the totals only, as
    are those of a validation after the training (``inference_after_training``).
    """
    records = list(records)
    trained_in = training_attempts(records)
    after = inference_after_training(records)
    rows: dict[tuple[str, int, int], dict] = {}
    trained: dict[tuple[str, int, int], list[Record]] = defaultdict(list)  # each row's training records
    for r in records:
        if r.epoch is None or r.phase not in ("train", "validation") or (r.run_id, r.attempt) not in trained_in:
            continue
        if (r.run_id, r.attempt, r.seq) in after:
            continue
        row = rows.setdefault(
            (r.run_id, r.attempt, r.epoch),
            {"run_id": r.run_id, "attempt": r.attempt, "epoch": r.epoch, "seconds": 0.0, "energy_kwh": 0.0,
             "co2eq_g": 0.0, "uncertainty_kwh": 0.0, "train_samples": 0, "samples_counted": True,
             "j_per_sample": None, "val_energy_kwh": None, "val_co2eq_g": None, "methods": "", "estimated": False,
             "partial": False, "redone": False, "resumed": False, "has_train": False, "embodied_co2eq_g": None,
             "train_tokens": None, "j_per_token": None, "token_count": _TokenCount()},
        )
        row["estimated"] |= is_estimated(r)
        if r.phase == "train":
            row["has_train"] = True
            row["partial"] |= r.partial
            trained[(r.run_id, r.attempt, r.epoch)].append(r)
            row["energy_kwh"] += r.energy_kwh
            row["co2eq_g"] += r.co2eq_g
            if r.embodied_co2eq_g is not None:  # apart from co2eq_g; stays None (empty) where unknown
                row["embodied_co2eq_g"] = (row["embodied_co2eq_g"] or 0.0) + r.embodied_co2eq_g
            row["uncertainty_kwh"] += r.uncertainty_kwh
            row["train_samples"] += r.samples
            row["samples_counted"] &= r.samples_counted
            row["token_count"].add(r)
            row["methods"] = ", ".join(sorted(set(filter(None, (row["methods"] + ", " + methods_of(r)).split(", ")))))
        else:
            row["val_energy_kwh"] = (row["val_energy_kwh"] or 0.0) + r.energy_kwh
            row["val_co2eq_g"] = (row["val_co2eq_g"] or 0.0) + r.co2eq_g
    # The attempts that trained each (run, epoch): looked up per row, not searched for (a sweep of
    # 200 runs of 100 epochs took 79 s, nearly all of it here).
    trained_by: dict[tuple[str, int], list[int]] = {}
    for (run, attempt, epoch), row in rows.items():
        if row["has_train"]:
            trained_by.setdefault((run, epoch), []).append(attempt)
    # A later training of an epoch that is not known to be whole went on from a checkpoint inside
    # it (or may have): the cut short work up to that checkpoint was kept, not redone.
    not_whole = {(r.run_id, r.attempt, r.epoch) for r, how in complete_training(records) if how == UNKNOWN}
    for (run, attempt, epoch), row in rows.items():
        row["seconds"] = wall_seconds(trained[(run, attempt, epoch)])  # a phase's rank parts ran side by side
        later = min((a for a in trained_by.get((run, epoch), ()) if a > attempt), default=None)
        row["redone"] = row["partial"] and later is not None
        row["resumed"] = row["redone"] and (run, later, epoch) in not_whole
        if row["samples_counted"] and row["train_samples"] > 0:
            row["j_per_sample"] = row["energy_kwh"] * J_PER_KWH / row["train_samples"]
        row["train_tokens"] = row.pop("token_count").whole
        if row["train_tokens"]:
            row["j_per_token"] = row["energy_kwh"] * J_PER_KWH / row["train_tokens"]
        del row["has_train"]
    return [rows[k] for k in sorted(rows)]


class _TokenCount:
    """The tokens of some records (HF's ``num_input_tokens_seen``, a ``token_counter``), as samples
    are counted: ``whole`` is their sum where every record that ran batches counted its tokens, None
    where none did, or where one did not beside others that did, or one counted some of its batches'
    tokens alone (``tokens_counted: false``: a count of part of the batches, which a cost per token
    would divide the whole energy by). A record of no batch (a gap between phases, an epoch cut short
    before its first) is written without tokens: it lacks none; nor does a rank's own part of a failed
    run on several ranks (``_rank_part``) without tokens: HF's count, summed over the ranks, is in
    rank 0's part (a ``token_counter`` that failed still says ``tokens_counted: false``)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.counted = False  # some record counted tokens
        self.lacking = False  # some record ran batches without counting them

    def add(self, record: Record) -> None:
        if record.tokens is not None:
            self.tokens += record.tokens
            self.counted = True
        elif (record.samples > 0 or not record.samples_counted) and not _rank_part(record):
            self.lacking = True
        if not record.tokens_counted:  # some batch's count failed: its tokens are not in the record's
            self.lacking = True

    @property
    def whole(self) -> int | None:
        return self.tokens if self.counted and not self.lacking else None

    @property
    def partial(self) -> bool:
        """Counted for some of the records, not for others: said in a note."""
        return self.counted and self.lacking


def token_count(records: Iterable[Record]) -> _TokenCount:
    count = _TokenCount()
    for r in records:
        count.add(r)
    return count


def training_attempts(records: Iterable[Record]) -> set[tuple[str, int]]:
    """The (run, attempt) pairs that trained: the others only evaluated a checkpoint."""
    return {(r.run_id, r.attempt) for r in records if r.phase == "train"}


def inference_after_training(records: Iterable[Record]) -> set[tuple[str, int, int]]:
    """(run, attempt, seq) of each record of an evaluation or prediction after its attempt's
    training (a ``validate`` / ``evaluate`` / ``test`` / ``predict`` call after ``fit`` / ``train``
    in one session): the first gap of no epoch after the attempt's last train record, and all that
    follows it. Each such call begins with that gap; the gaps between epochs carry their epoch, and
    the validation inside the training loop comes before it. The frameworks stamp such a validation
    with an epoch (Lightning's ``max_epochs``, HF's last epoch) that it did not train in: it counts
    in the run's totals, not among its epochs.

    Records that say so themselves (``later_call``: the tracker knows a later call) are taken
    at their word, for their attempt: the rule above misses a call whose leading gap was of no
    duration (never written), and would take a gap of no epoch inside a fit (Keras) for the start
    of one. It stays for the attempts whose records never say so (written before they could)."""
    records = list(records)
    marked = {(r.run_id, r.attempt) for r in records if r.later_call}
    last_train: dict[tuple[str, int], int] = {}
    for r in records:
        if r.phase == "train" and (r.run_id, r.attempt) not in marked:
            key = (r.run_id, r.attempt)
            last_train[key] = max(last_train.get(key, r.seq), r.seq)
    starts: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.run_id, r.attempt)
        if r.phase == "other" and r.epoch is None and key in last_train and r.seq > last_train[key]:
            starts[key] = min(starts.get(key, r.seq), r.seq)
    return {(r.run_id, r.attempt, r.seq) for r in records
            if r.later_call or ((r.run_id, r.attempt) in starts and r.seq >= starts[(r.run_id, r.attempt)])}


EPOCH_STATES = ("complete", "partial", "cut short, redone", "cut short, resumed")


def epoch_status(row: dict) -> str:
    """``complete``, ``partial`` (cut short, not trained again), ``cut short, redone`` (a later
    attempt trained the whole epoch again) or ``cut short, resumed`` (a later attempt went on with
    it from a checkpoint inside it, or its part is not known: only the rest was trained again)."""
    if row["redone"]:
        return "cut short, resumed" if row.get("resumed") else "cut short, redone"
    return "partial" if row["partial"] else "complete"


def epoch_label(row: dict, with_attempt: bool) -> str:
    """``2``, ``2 (partial)``, or ``2 (attempt 0: cut short, redone)`` when a run was resumed (an
    ``epoch_summary`` row of whole epochs, whatever attempt trained them, has no attempt: ``2``)."""
    state = "" if epoch_status(row) == "complete" else epoch_status(row)
    if with_attempt and row["attempt"] is not None:
        return f"{row['epoch']} (attempt {row['attempt']}{': ' + state if state else ''})"
    return f"{row['epoch']}{' (' + state + ')' if state else ''}"


def phase_totals(records: Iterable[Record]) -> dict[str, dict]:
    totals = _totals_by(records, lambda r: r.phase)
    return {p: totals[p] for p in PHASES if p in totals}


def _no_totals() -> dict:
    return {"seconds": 0.0, "energy_kwh": 0.0, "co2eq_g": 0.0, "samples": 0, "samples_counted": True,
            "tokens": None, "tokens_partial": False}


def _totals_by(records: Iterable[Record], key: Callable[[Record], str]) -> dict[str, dict]:
    """Per key: sums, and ``tokens`` as ``_TokenCount.whole`` says (None: none counted, or not whole)."""
    totals: dict[str, dict] = defaultdict(_no_totals)
    tokens: dict[str, _TokenCount] = defaultdict(_TokenCount)
    mine: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        t = totals[key(r)]
        mine[key(r)].append(r)
        t["energy_kwh"] += r.energy_kwh
        t["co2eq_g"] += r.co2eq_g
        t["samples"] += r.samples
        t["samples_counted"] &= r.samples_counted
        tokens[key(r)].add(r)
    for name, count in tokens.items():
        totals[name]["tokens"], totals[name]["tokens_partial"] = count.whole, count.partial
        totals[name]["seconds"] = wall_seconds(mine[name])  # a phase's rank parts ran side by side: its longest
    return dict(totals)


# ------------------------------------------------------------------------------ provenance
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


def _after_last_record(records: Sequence[Record], unfinished: Sequence[str]) -> str:
    """What an unfinished run's figures leave out: everything after its last record, or, where its
    heartbeat was read (``runs.load``: phases of its last attempt carried, as a resume carries them),
    what it used after its last heartbeat."""
    from greencallbacks.tracker import HEARTBEAT_S

    runs = by_run(records)
    beaten = [run for run in unfinished if counted_to_heartbeat(runs[run])]
    if not beaten:
        return "What it used after its last record is in no figure here"
    others = [run for run in unfinished if run not in beaten]
    whose = "it" if not others else f"run{'s' if len(beaten) > 1 else ''} {', '.join(beaten)}"
    said = (f"The phases {whose} had open are counted up to the last heartbeat (energy-open-<run id>.*.json beside "
            f"the records, written every {HEARTBEAT_S:g} s while a run trains), as partial: what was used after "
            f"that, at most {HEARTBEAT_S:g} s, is in no figure here")
    if not others:
        return said
    return said + f"; what {', '.join(others)} used after {'their' if len(others) > 1 else 'its'} last record is in none"


def incomplete_records(records: Sequence[Record], run_summaries: Mapping[str, dict] | None = None) -> list[str]:
    """One sentence per run whose records visibly lack some of its energy: seq numbers no run
    leaves out (``missing_seqs``), or less energy than its energy-summary.json beside them counts
    (``run_summaries``: each run's, as ``runs.load`` found them)."""
    notes = []
    for run, mine in by_run(records).items():
        gaps = missing_seqs(mine)
        parts = [f"seq {_seq_span(first, last)} of attempt {attempt}{_epoch_span(before, after)}"
                 for attempt, first, last, before, after in gaps[:SPANS_SHOWN]]
        if len(gaps) > SPANS_SHOWN:  # a file with holes all through: the sentence stays one
            parts.append(f"and {len(gaps) - SPANS_SHOWN} more gap(s) of "
                         f"{sum(last - first + 1 for _, first, last, _, _ in gaps[SPANS_SHOWN:])} seq(s)")
        missing = "; ".join(parts) + (" are not in these records, though no run leaves such a gap (written in a "
                                      "directory not given here, or lost from a records file deleted, cut or edited "
                                      "while the run went on)" if parts else "")
        summary = (run_summaries or {}).get(run)
        held = sum(r.energy_kwh for r in mine)
        counted = summary["energy_kwh"] if summary else 0.0
        if counted > 0 and counted - held > SUMMARY_REL * counted:
            unit, factor = pick_unit([held, counted], ENERGY_UNITS)
            missing += (", and " if missing else "") + (
                f"its records hold {number(held * factor)} {unit} of the {number(counted * factor)} {unit} "
                f"its energy-summary.json counts ({held / counted:.0%})")
        if missing:
            notes.append(f"Records missing from run {printable(run)}: {missing}; the totals shown are only what its records hold.")
    return notes


def calls_left_unwritten(records: Sequence[Record], run_summaries: Mapping[str, dict] | None = None,
                         unfinished: Collection[str] = ()) -> list[str]:
    """One sentence per run whose records hold more energy than its energy-summary.json, though
    that summary is its last attempt's (the run is not ``unfinished``): a later call of that
    attempt (a validate, test or predict after the training, which rewrites the summary when it
    ends, an exception included) was killed outright or is still running. Its phases are in the
    records (and its open phase up to its last heartbeat), but its end is in no figure, and nothing
    else says that the run did not end well."""
    notes = []
    for run, mine in by_run(records).items():
        summary = (run_summaries or {}).get(run)
        if run in unfinished or not summary or summary.get(UNSEEN_BY_SUMMARY):
            continue
        held, counted = sum(r.energy_kwh for r in mine), summary["energy_kwh"]
        if held - counted <= SUMMARY_REL * max(held, counted):
            continue
        unit, factor = pick_unit([held, counted], ENERGY_UNITS)
        notes.append(
            f"Run {printable(run)}'s records hold {number(held * factor)} {unit}, more than the {number(counted * factor)} {unit} "
            "its energy-summary.json counts: a call after the one that wrote it (a validation, test or prediction "
            "after the training) left no write-up: killed outright (SIGKILL, the out-of-memory killer, a preemption), "
            f"or still running. {_after_last_record(mine, [run])}.")
    return notes


SUMMARY_REL = 1e-6  # a summary above its records by more than float rounding counts energy they lack
SPANS_SHOWN = 3


def missing_seqs(records: Sequence[Record]) -> list[tuple[int, int, int, int | None, int | None]]:
    """(attempt, first seq, last seq, epoch before, epoch after) of each run of seq numbers that one
    run's attempt lacks though no run leaves them out: records lost from the file.

    ``seq`` numbers a run's phases as they begin, over its attempts (``Ledger.take_seq``). Within one
    attempt, from seq 0 in the first, these are left out in a normal run:
    * the placeholder taken when a phase begins between phases (``Tracker.begin``), never written:
      one seq, after the gap's ``other`` record and before the phase's;
    * a gap of no duration (not written), then that placeholder: two seqs after a phase's record (or
      at the start), before the next phase's;
    * what a killed attempt had open (SIGKILL, preemption: no handler writes them) and its
      checkpoint did not carry: the phases begun last, so every record after them is of a phase
      inside them, never a gap between phases (``other``);
    * the tail of an attempt, and where a later attempt begins (a resume continues from its
      checkpoint's seq): never looked at.
    A rank's own unsummed records (``energy-records.rank<r>.jsonl`` of a failed distributed run)
    are its last phases alone: not looked at either.
    """
    out = []
    attempts: dict[int, dict[int, Record]] = defaultdict(dict)
    for r in records:
        if not _rank_part(r):
            attempts[r.attempt].setdefault(r.seq, r)
    for attempt in sorted(attempts):
        by_seq = attempts[attempt]
        seqs = sorted(by_seq)
        last_gap = max((s for s, r in by_seq.items() if r.phase == "other"), default=-1)
        held = [-1] + seqs if attempt == 0 else seqs
        for before, after in zip(held, held[1:]):
            first, last = before + 1, after - 1
            if first > last:
                continue
            prev, nxt = by_seq.get(before), by_seq[after]
            if nxt.phase != "other":
                if last_gap < first:  # killed with these open (or their placeholders)
                    continue
                if last == first and prev is not None and prev.phase == "other":  # a placeholder
                    continue
                if last == first + 1 and (prev is None or prev.phase != "other"):  # an empty gap, a placeholder
                    continue
            out.append((attempt, first, last, None if prev is None else prev.epoch, nxt.epoch))
    return out


def records_lack(run_records: Sequence[Record], run_summaries: Mapping[str, dict] | None = None) -> list[str]:
    """What one run's records lack, as clauses for the notes of ``lifecycle`` and ``whatif``, whose
    figures are then that part's (``report`` says it in its provenance): its earlier attempts, which a
    resume into another directory leaves where they were written, and ``incomplete_records``'s."""
    missing = _missing_attempts({r.attempt for r in run_records})
    said = [f"attempt(s) {', '.join(missing)} of the run are not in these records (a run resumed into another "
            "directory leaves its earlier attempts' records where they were written): pass every directory the "
            "run wrote in"] if missing else []
    return said + [note[0].lower() + note[1:].rstrip(".") for note in incomplete_records(run_records, run_summaries)]


def _rank_part(record: Record) -> bool:
    """A rank's own record of a failed distributed run (rank > 0, not summed over the ranks)."""
    return record.ranks == 1 and bool(record.components) and all(c.get("rank", 0) > 0 for c in record.components)


def _missing_attempts(attempts: set[int]) -> list[str]:
    """The attempts before the last of ``attempts`` that none of them is, as spans ("1-3"): listed
    one by one, an attempt number edited to 10**12 filled the memory until the report was killed."""
    spans, expected = [], 0
    for attempt in sorted(attempts):
        if attempt > expected:
            spans.append(_seq_span(expected, attempt - 1))
        expected = attempt + 1
    return spans


def _seq_span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _epoch_span(before: int | None, after: int | None) -> str:
    """Where the missing records were, by the epochs of those around them."""
    if after is None:
        return ""
    if before is None:
        return f" (up to epoch {after})"
    return f" (epoch {after})" if before == after else f" (epochs {before}-{after})"


# ------------------------------------------------------------------------ configurations
def configuration(records: Sequence[Record], unfinished: bool = False) -> dict:
    """What makes runs comparable, from what the records carry (one run's records); ``unfinished``:
    the run left no write-up (``runs.unfinished_runs``), killed outright or still training."""
    per_epoch: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in records:
        if r.phase == "train" and r.epoch is not None:
            per_epoch[(r.attempt, r.epoch)].append(r)
    epoch_samples = _epoch_samples(records)
    return {
        "framework": next((r.framework for r in records if r.framework), "unknown"),
        "epochs": len({epoch for _, epoch in per_epoch}),
        # Fewer than `epochs` when training ended cut short (a crash not resumed, an OOM retry of
        # auto_find_batch_size): such a run is no repeat of anything (see group_runs).
        # An epoch counts as completed where a training of it ended whole: one cut short and tried
        # again in the same attempt (a loop of one's own retrying after an out-of-memory error) did.
        # So did one cut short after its last batch (a crash in its validation or an epoch-end hook):
        # its record holds a whole epoch's samples, and a resume from its last step's checkpoint
        # went on to the next epoch; a run that then finished was said to be cut short.
        "completed_epochs": len({epoch for (_, epoch), group in per_epoch.items()
                                 if not all(r.partial for r in group) or _trained_every_batch(group, records)}),
        "training_failed": training_failed(records),
        "unfinished": unfinished,
        # A run whose epochs start past 0 continues an earlier training (a notebook's second fit,
        # Keras initial_epoch): not a repeat of one that starts at 0.
        "first_epoch": min((epoch for _, epoch in per_epoch), default=0),
        "samples_per_epoch": usual_samples(epoch_samples),
        # Whether every training batch was counted: a whole epoch's samples unknown (None above)
        # after a resume inside it are no uncounted ones.
        "samples_counted": all(r.samples_counted for group in per_epoch.values() for r in group),
        # Each epoch's samples, from its records that were not cut short (over the attempts: one
        # that max_steps ended inside the epoch and its resume): a run whose last epoch stopped
        # half-way at max_steps, or whose data changed, is no repeat of one of whole epochs.
        "epoch_samples": epoch_samples,
        # Two trainings of one data set at other batch sizes (a sweep's trials) count the same
        # samples in other numbers of steps: no repeats of each other.
        "steps_per_epoch": _steps_per_epoch(records),
        # (A component that stopped counting after a failure is no repeat of one that counted throughout.)
        "sensors": sorted({f"{c.get('name', '?')}:{'stopped' if _stopped(c) else c.get('method', '?')}"
                           for r in records for c in r.components}),
        "ranks": max((r.ranks for r in records), default=1),
        # Runs priced on other grids or PUEs are no repeats (two callbacks with two grids measure
        # one training twice); a number given as the intensity is its own grid.
        "carbon": sorted({f"grid {_grid(r)}, PUE {r.pue:g}" for r in records}),
    }


def _trained_every_batch(cut_short: Sequence[Record], records: Sequence[Record]) -> bool:
    """Whether a training record cut short holds a whole epoch's samples (the most that one record
    of an epoch trained whole in the run has): the failure came after its last batch. Not a resume's
    inside an epoch cut short (``UNKNOWN``): it trained the epoch's rest, the largest record of a
    one-epoch fine-tune resumed from a mid-epoch checkpoint, and a crash at 24 of 30 samples, 14 left
    to the resume, read as one after the epoch's last batch. The ranks' parts of one phase (a failed
    distributed run's) are summed first: each rank's half of a whole epoch held half its samples."""
    whole = max((r.samples for r, how in complete_training(records) if how != UNKNOWN), default=0)
    return whole > 0 and any(r.samples_counted and r.samples >= whole for r in each_phase_once(cut_short))


def training_failed(records: Sequence[Record]) -> bool:
    """Whether the last attempt that trained ended failing: its training's last record is partial.
    Said by the gap's record when the failure came between two epochs, after one epoch's record and
    before the next began (the epochs themselves are all complete)."""
    trained = [r.attempt for r in records if r.phase == "train"]
    if not trained:
        return False
    attempt = max(trained)
    by_attempt: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_attempt[r.attempt].append(r)
    # A later attempt of nothing but gaps is a resume that trained no batch: it found no epoch left
    # and ended well, or failed before its first batch (in the checkpoint write of the epoch end
    # it resumed at), which leaves the run cut short though its last training ended well.
    final = max(by_attempt)
    if final > attempt:
        phases = {r.phase for r in by_attempt[final]}
        if phases == {"other"}:
            return by_attempt[final][-1].partial
        # Lightning 2.2-2.4 resume an epoch whose checkpoint was saved at its last validation by
        # validating it again, before its end and with no batch: such a resume that failed there,
        # in that validation or after it, trained nothing, but left the run cut short. The records
        # cannot tell it from an evaluation of a checkpoint that failed in a later session, read
        # the same: the safe side, as a run taken for finished would be pooled with repeats.
        if phases <= {"other", "validation"} and by_attempt[final][-1].partial:
            return True
    mine = by_attempt[attempt]
    # What fails in an evaluation or prediction after the training is no failure of the training.
    after = inference_after_training(mine)
    training = [r for r in mine if r.phase in ("train", "validation", "other") and (r.run_id, r.attempt, r.seq) not in after]
    # The last written, not the highest seq: a phase takes its seq as it begins, so a validation
    # inside an epoch cut short after it (val_check_interval) has a higher one than the epoch.
    return training[-1].partial


def _epoch_samples(records: Sequence[Record]) -> list[list]:
    """[[epoch, samples or None (uncounted, or not known)], ...] in epoch order.

    An epoch's complete records add up over the attempts where a later one went on with it (one
    that max_steps ended inside it, and the resume that went on from that step); where a later one
    trained it again, its count replaces the one before rather than doubling it (unless that training
    stopped early: the epoch is still the one before); where neither can be told
    (``complete_training``), the epoch's count is not known."""
    counted: dict[int, int | None] = {}
    for r, how in complete_training(records):
        if how == STOPPED:  # a training again stopped early is no smaller epoch
            continue
        so_far = 0 if how == AGAIN else counted.get(r.epoch, 0)
        known = how != UNKNOWN and so_far is not None and r.samples_counted
        counted[r.epoch] = so_far + r.samples if known else None
    for r in _whole_but_cut_short(records):
        counted.setdefault(r.epoch, r.samples)
    return [[epoch, counted[epoch]] for epoch in sorted(counted)]


def _whole_but_cut_short(records: Sequence[Record]) -> list[Record]:
    """The training record cut short of each epoch that has no complete one but trained every
    batch (``_trained_every_batch``: a crash in its validation or an epoch-end hook, resumed from
    its last step's checkpoint with the next epoch). Its samples and step are the epoch's, as a
    complete record's: left out, a run that failed so and went on read as one of other epochs
    (``[[0, 32], [2, 32]]``) than its repeats that never failed, and was grouped apart from them."""
    complete = {r.epoch for r, _ in complete_training(records)}
    cut_short: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        if r.phase == "train" and r.epoch is not None and r.partial and r.epoch not in complete:
            cut_short[r.epoch].append(r)
    wholes = [max((r for r in each_phase_once(group) if r.samples_counted), key=lambda r: r.samples, default=None)
              for group in cut_short.values() if _trained_every_batch(group, records)]
    return [r for r in wholes if r is not None]


def usual_samples(epoch_samples: Sequence[Sequence]) -> int | None:
    """The samples most epochs of ``_epoch_samples`` saw (D, a whole epoch's); None when none was counted."""
    counted = [n for _, n in epoch_samples if n is not None]
    return Counter(counted).most_common(1)[0][0] if counted else None


def whole_epoch_samples(records: Sequence[Record]) -> int | None:
    """The samples of one whole epoch of a run, as its configuration says them."""
    return usual_samples(_epoch_samples(records))


def _steps_per_epoch(records: Sequence[Record]) -> int | None:
    """The optimizer steps of a whole epoch, the most common between consecutive complete epochs'
    ends (the framework's global step in each train record), the run's first epoch counted from
    the step its training began at; None where the records carry none."""
    ends = {r.epoch: r.step for r, how in complete_training(records) if r.step is not None and how != STOPPED}
    ends.update({r.epoch: r.step for r in _whole_but_cut_short(records) if r.step is not None})
    first_epoch, began_at = _training_start(records)
    deltas = [ends[e] - (began_at if e == first_epoch else ends[e - 1]) for e in ends if e == first_epoch or e - 1 in ends]
    return Counter(deltas).most_common(1)[0][0] if deltas else None


def _training_start(records: Sequence[Record]) -> tuple[int | None, int]:
    """The epoch a run's training began at (0, or a later one: a KerasTuner Hyperband trial going on
    from another trial's weights, a fit from ``initial_epoch``), and the step it began at: that of
    the last record before its first training record that carries one (Keras keeps the optimizer's
    step over fits of one model: a second ``fit`` of it began at the first's last step), else 0."""
    ordered = sorted(records, key=lambda r: (r.attempt, r.seq))
    first = next((i for i, r in enumerate(ordered) if r.phase == "train" and r.epoch is not None), None)
    if first is None:
        return None, 0
    # The latest record before it that carries a step: a resume's first gap carries none, and where
    # the records begin at the resume (the crashed attempt's in another directory) the phase it
    # carried from its checkpoint has the checkpoint's step, which the training went on from.
    before = next((r for r in reversed(ordered[:first]) if r.step is not None), None)
    return ordered[first].epoch, before.step if before is not None else 0


def epochs_trained_again(records: Sequence[Record]) -> int:
    """How many times an attempt trained anew an epoch an earlier one had completed (a resume from
    an older checkpoint, a Keras fit with ``initial_epoch`` before the last): energy spent twice."""
    return sum(1 for _, how in complete_training(records) if how in (AGAIN, STOPPED))


# How a complete training record stands to the epoch's earlier attempts (``complete_training``).
FIRST, ON, AGAIN, UNKNOWN = "first", "went on", "trained again", "not known"
STOPPED = "trained again, stopped early"


def complete_training(records: Sequence[Record]) -> list[tuple[Record, str]]:
    """Each complete training record, in attempt order, with how it stands to the epoch's earlier
    attempts: FIRST, ON (went on with it), AGAIN (trained it anew), STOPPED (trained it anew but
    stopped before a whole epoch's samples) or UNKNOWN.

    An attempt trains every epoch but its first from the epoch's start: AGAIN where an earlier
    attempt had the epoch. Its first epoch is AGAIN where an earlier attempt finished that epoch
    (it trained a later one), ended it at a step no later than this one's (a resume from an earlier
    checkpoint), or saw fewer samples than this record alone has while this one has a whole
    epoch's. It went ON from where an earlier attempt stopped inside the epoch (max_steps) where the
    two add up to a whole epoch at most. A resume inside an epoch that an earlier attempt was cut
    short in (a crash after a mid-epoch checkpoint) trained the epoch's rest, and how much of the
    cut short part the checkpoint kept is not recorded: UNKNOWN, as where the two overlap. A
    whole epoch is the most samples one record of the run has. Keras' optimizer step keeps
    rising over fits, so the step alone cannot say. A training anew with fewer counted samples than
    that is STOPPED: a budget or max_steps stop right after the resume (HF and Keras stop after a
    batch) ended it, and it is no epoch of another size nor the epoch's last whole training."""
    return [pair for mine in by_run(records).values() for pair in _complete_training_of_one_run(mine)]


def _complete_training_of_one_run(records: Sequence[Record]) -> list[tuple[Record, str]]:
    ordered = sorted((r for r in records if r.phase == "train" and r.epoch is not None), key=lambda r: (r.attempt, r.seq))
    first_epoch: dict[int, int] = {}
    last_epoch: dict[int, int] = {}
    for r in ordered:
        first_epoch.setdefault(r.attempt, r.epoch)
        last_epoch[r.attempt] = max(last_epoch.get(r.attempt, r.epoch), r.epoch)
    whole = max((r.samples for r in ordered if not r.partial), default=0)
    # A whole epoch's size as told by records that are no resume inside an epoch cut short: such a
    # resume trained the epoch's rest, which was the largest record of a one-epoch run (an HF
    # fine-tune preempted after a mid-epoch checkpoint), and made the rest pass for a whole epoch.
    first_cut: dict[int, int] = {}  # epoch -> the first attempt it was cut short in
    for r in ordered:
        if r.partial:
            first_cut.setdefault(r.epoch, r.attempt)
    whole_elsewhere = max((r.samples for r in ordered if not r.partial and not (
        r.epoch == first_epoch[r.attempt] and first_cut.get(r.epoch, r.attempt) < r.attempt)), default=0)
    out: list[tuple[Record, str]] = []
    before: dict[int, Record] = {}  # each epoch's latest complete record
    cut_short: dict[int, int] = {}  # epoch -> the last attempt it was cut short in
    for r in ordered:
        if r.partial:
            cut_short[r.epoch] = r.attempt
            continue
        earlier = before.get(r.epoch)
        resumed_inside = r.epoch == first_epoch[r.attempt] and cut_short.get(r.epoch, r.attempt) < r.attempt
        if earlier is None or r.attempt == earlier.attempt:
            # First complete record (or one attempt's parts: the ranks' own of a failed distributed run).
            how = (UNKNOWN if resumed_inside and not (whole_elsewhere and r.samples >= whole_elsewhere)
                   else FIRST if earlier is None else ON)
        elif (r.epoch != first_epoch[r.attempt] or last_epoch[earlier.attempt] > r.epoch
              or (r.step is not None and earlier.step is not None and r.step <= earlier.step)):
            # A stop: the attempt ended in this epoch (a resume from an older checkpoint inside the
            # epoch trains its rest and goes on: no stop, its epoch trained again).
            stopped = r.samples_counted and r.samples < whole and r.epoch == last_epoch[r.attempt]
            how = STOPPED if stopped else AGAIN
        elif earlier.samples + r.samples <= whole:
            how = ON
        else:
            how = AGAIN if r.samples == whole else UNKNOWN
        out.append((r, how))
        before[r.epoch] = r
    return out


def _grid(record: Record) -> str:
    if record.intensity_zone == USER_ZONE:
        return f"{record.intensity_gco2eq_per_kwh:g} gCO2eq/kWh given"
    return record.intensity_zone or record.intensity_source


def cut_short(config: dict) -> bool:
    """Whether the run's training ended failing, in an epoch or between two, never resumed, or has
    not ended as far as its records tell (no write-up: killed outright, or still training)."""
    return (config.get("completed_epochs", config["epochs"]) < config["epochs"] or config.get("training_failed", False)
            or config.get("unfinished", False))


def samples_text(config: dict) -> str:
    """`` of 32 samples in 4 steps`` (the steps where the records give them: what tells a sweep's
    batch sizes apart), with the epochs of another size (``max_steps`` ending inside the last, data
    that changed) and those whose count is not known (a resume inside an epoch): `` of 32 samples in 4
    steps (epoch 1: 16, epoch 2: not known)``; "" when uncounted. Configurations grouped apart by
    their epochs' samples are so told apart."""
    usual = config["samples_per_epoch"]
    if usual is None:
        return ""
    steps = config.get("steps_per_epoch")
    others = [f"epoch {epoch}: {'not known' if n is None else n}"
              for epoch, n in config.get("epoch_samples", ()) if n != usual]
    return (f" of {usual} samples" + (f" in {steps} steps each" if steps else "")
            + (f" ({', '.join(others)})" if others else ""))


def describe_configuration(config: dict) -> str:
    samples = samples_text(config)
    if config["samples_per_epoch"] is None and config.get("completed_epochs", 1):
        samples = (" of uncounted samples" if not config.get("samples_counted", False)
                   else " of samples not known whole (resumed inside an epoch)")
    start = f" from epoch {config['first_epoch']}" if config.get("first_epoch") else ""
    ended = f", {_ended_text(config)} ({config['completed_epochs'] or 'none'} completed)" if cut_short(config) else ""
    carbon = f", {'; '.join(config['carbon'])}" if config.get("carbon") else ""
    return (f"{config['framework']}, {config['epochs']} training epoch(s){start}{samples}{ended}, "
            f"sensors {', '.join(config['sensors']) or 'none'}, {config['ranks']} rank(s){carbon}")


def _ended_text(config: dict) -> str:
    return "unfinished (no write-up: killed outright, or still training)" if config.get("unfinished") else "cut short"


def run_ids(records: Iterable[Record]) -> list[str]:
    """Run ids in the order their first record appears."""
    return list(dict.fromkeys(r.run_id for r in records))


def group_runs(records: Sequence[Record], unfinished: Collection[str] = ()) -> list[tuple[dict, list[Record]]]:
    """Runs grouped by ``configuration``, in the order each group's first run appears."""
    groups: dict[str, tuple[dict, list[Record]]] = {}
    for run, mine in by_run(records).items():
        config = configuration(mine, run in unfinished)
        # A run cut short is alone: the tries auto_find_batch_size gave up on, or two crashes, are
        # no repeats to average into a citable "per run" figure.
        key = json.dumps([config, run if cut_short(config) else None], sort_keys=True)
        groups.setdefault(key, (config, []))[1].extend(mine)
    return list(groups.values())


# ------------------------------------------------------------------ several runs: mean ± SE

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


def whole_run_uncertainty_kwh(records: Sequence[Record], *, shared_boundaries: bool = True) -> float:
    """One run's sensor uncertainty over all its phases (one standard uncertainty).

    Per component: an estimate's or a stated share's error is a bias (a TDP model, a MIG share),
    the same in every window, so it adds linearly over the phases. A counter's or sampled power's
    error sits at a window's boundary, and the phases of one attempt share their boundaries: a
    joule put on the wrong side of one is missing from the next, so over the run only its first
    and last boundaries count, twice the largest of one window (never more than the linear sum;
    summed linearly, 10 us gaps each said +-30 J, and a run exact to 0.01 % was given +-27 %).
    Components (and attempts) err independently: they combine in quadrature. Records without
    their components' uncertainties (older files) add linearly, as they were.

    ``shared_boundaries=False``: phases that share no boundary (the training epochs alone, the
    gaps and evaluations between them left out): a counter's windows err independently, in
    quadrature, where summed linearly the training was given +-23.5 mWh against +-7.85 mWh for
    the whole run that holds it.
    """
    bias: dict[tuple[str, str], float] = defaultdict(float)
    boundary: dict[tuple, list[float]] = {}  # (attempt, component, rank, host): [largest, sum, sum of squares]
    older = 0.0
    for r in records:
        parts = [c for c in r.components if isinstance(c.get("uncertainty_j"), (int, float))]
        if not parts:
            older += r.uncertainty_kwh
            continue
        to_kwh = (r.energy_kwh / r.it_energy_kwh if r.it_energy_kwh > 0 else r.pue) / J_PER_KWH
        for c in parts:
            u = c["uncertainty_j"] * to_kwh
            if c.get("method") in ("estimated", "apportioned"):
                bias[(c["name"], c["method"])] += u
            else:
                # Each rank's device has its own boundaries (two ranks' GPUs may share a name).
                key = (r.attempt, c["name"], c.get("rank"), c.get("host"))
                largest_sum_squares = boundary.setdefault(key, [0.0, 0.0, 0.0])
                largest_sum_squares[0] = max(largest_sum_squares[0], u)
                largest_sum_squares[1] += u
                largest_sum_squares[2] += u * u
    terms = list(bias.values()) + [min(2 * largest, total) if shared_boundaries else math.sqrt(squares)
                                   for largest, total, squares in boundary.values()]
    return older + math.sqrt(sum(t * t for t in terms))


def run_totals(records: Sequence[Record]) -> dict[str, dict]:
    """Per run: all phases (the whole job) and the training phases alone.

    The whole run's sensor uncertainty: ``whole_run_uncertainty_kwh``; the training phases',
    which share no boundary with each other, the same without the shared boundaries.
    """
    out: dict[str, dict] = {}
    for run, mine in by_run(records).items():
        train = [r for r in mine if r.phase == "train"]
        embodied = [r for r in mine if r.embodied_co2eq_g is not None]
        out[run] = {
            "seconds": wall_seconds(mine),
            "energy_kwh": sum(r.energy_kwh for r in mine),
            "it_energy_kwh": sum(r.it_energy_kwh for r in mine),
            "co2eq_g": sum(r.co2eq_g for r in mine),
            "uncertainty_kwh": whole_run_uncertainty_kwh(mine),
            "train_seconds": wall_seconds(train),
            "train_energy_kwh": sum(r.energy_kwh for r in train),
            "train_co2eq_g": sum(r.co2eq_g for r in train),
            "train_uncertainty_kwh": whole_run_uncertainty_kwh(train, shared_boundaries=False),
            "train_tokens": token_count(train).whole,  # None: no token counted, or not for every batch
            "epochs": len({r.epoch for r in train if r.epoch is not None}),
            "attempts": len({r.attempt for r in mine}),
            "phases": [p for p in PHASES if any(r.phase == p for r in mine)],
            # Manufacturing footprint, apart from co2eq_g; None where no record knows it.
            "embodied_co2eq_g": sum(r.embodied_co2eq_g for r in embodied) if embodied else None,
            "embodied_co2eq_g_low": sum(r.embodied_co2eq_g_low or 0.0 for r in embodied) if embodied else None,
            "embodied_co2eq_g_high": sum(r.embodied_co2eq_g_high or 0.0 for r in embodied) if embodied else None,
            # The time those records cover: less than ``seconds`` where part of the run had no figure.
            "embodied_seconds": embodied_seconds(mine) if embodied else None,
        }
    return out


def embodied_total(totals: dict[str, dict]) -> dict | None:
    """Embodied CO2eq per run (mean ± SE, mean low and high) and operational + embodied; None
    unless every run knows its embodied part (a sum over some runs would mix two quantities)."""
    runs = list(totals.values())
    if not runs or any(t["embodied_co2eq_g"] is None for t in runs):
        return None
    n = len(runs)
    return {
        "embodied_co2eq_g": over_runs([t["embodied_co2eq_g"] for t in runs]),
        "embodied_co2eq_g_low": sum(t["embodied_co2eq_g_low"] for t in runs) / n,
        "embodied_co2eq_g_high": sum(t["embodied_co2eq_g_high"] for t in runs) / n,
        "operational_plus_embodied_co2eq_g": over_runs([t["co2eq_g"] + t["embodied_co2eq_g"] for t in runs]),
        # Per run, as the figures above: billed_seconds < seconds where part of a run (an attempt
        # resumed on a GPU without a figure, or with embodied=False) billed nothing.
        "billed_seconds": sum(t["embodied_seconds"] for t in runs) / n,
        "seconds": sum(t["seconds"] for t in runs) / n,
    }


def embodied_coverage(embodied: dict) -> str:
    """Empty where the embodied figure covers its runs' whole time, else which part ("13.0 s of the run's 26.0 s")."""
    billed, seconds = embodied["billed_seconds"], embodied["seconds"]
    if billed >= seconds * (1 - 1e-9):
        return ""
    return f"{number(billed)} s of the run's {number(seconds)} s"


def over_runs(values: Sequence[float]) -> dict:
    mean, se = mean_and_se(values)
    return {"mean": mean, "se": se, "n": len(values)}


def epoch_summary(records: Sequence[Record]) -> list[dict]:
    """One row per epoch and status over the runs given: seconds, kWh, gCO2eq and J/sample as mean
    and SE over the runs the row covers.

    A run's first whole training of an epoch is one row with the other runs', whatever attempt
    trained it (a resume at an epoch's end trains the next ones whole): its ``attempt`` is None and
    ``attempts`` lists the runs' attempts. Any other training of it (cut short, a part that a later
    attempt went on with, trained again) is a row per attempt. An epoch cut short in one run is
    never averaged with another run's complete epoch: each status (``EPOCH_STATES``) is a row of
    its own. ``runs`` and ``run_ids`` say which runs a row covers,
    ``in_every_run`` whether that is all of them (``of_runs``); a row covering fewer is no mean
    over the repeats, and the formats show it apart. With one run the SE is None and
    ``uncertainty_kwh`` (from the sensors) is the error to quote.
    """
    all_runs = run_ids(records)
    whole = first_whole_trainings(records)
    per_run = epoch_rows(records)
    by_epoch: dict[tuple[int, int, int | None], list[dict]] = defaultdict(list)
    for row in per_run:
        status = EPOCH_STATES.index(epoch_status(row))
        pooled = status == 0 and (row["run_id"], row["attempt"], row["epoch"]) in whole
        by_epoch[(row["epoch"], status, None if pooled else row["attempt"])].append(row)
    with_attempt = len({row["attempt"] for row in per_run}) > 1

    def in_order(key: tuple) -> tuple:  # as trained: by the first attempt that trained the row
        epoch, status, attempt = key
        return min(row["attempt"] for row in by_epoch[key]), epoch, status, attempt is not None, attempt or 0

    out = []
    for key in sorted(by_epoch, key=in_order):
        group = by_epoch[key]
        per_sample = [row["j_per_sample"] for row in group if row["j_per_sample"] is not None]
        per_token = [row["j_per_token"] for row in group if row["j_per_token"] is not None]
        merged = {"epoch": key[0], "attempt": key[2], "partial": group[0]["partial"], "redone": group[0]["redone"],
                  "resumed": group[0]["resumed"]}
        out.append(
            {
                **merged,
                "attempts": sorted({row["attempt"] for row in group}),
                "status": epoch_status(merged),
                "label": epoch_label(merged, with_attempt),
                "runs": len(group),
                "run_ids": [row["run_id"] for row in group],
                "of_runs": len(all_runs),
                "in_every_run": len(group) == len(all_runs),
                "seconds": over_runs([row["seconds"] for row in group]),
                "energy_kwh": over_runs([row["energy_kwh"] for row in group]),
                "co2eq_g": over_runs([row["co2eq_g"] for row in group]),
                "val_energy_kwh": _validation_over_runs(group, "val_energy_kwh"),
                "val_co2eq_g": _validation_over_runs(group, "val_co2eq_g"),
                # n/a when any run could not count its samples: a mean over the others would hide it
                "j_per_sample": over_runs(per_sample) if per_sample and len(per_sample) == len(group) else None,
                # As J/sample: n/a unless every run counted the epoch's tokens
                "train_tokens": (over_runs([row["train_tokens"] for row in group])
                                 if all(row["train_tokens"] is not None for row in group) else None),
                "j_per_token": over_runs(per_token) if per_token and len(per_token) == len(group) else None,
                "uncertainty_kwh": over_runs([row["uncertainty_kwh"] for row in group])["mean"],
                "methods": ", ".join(sorted({m for row in group for m in row["methods"].split(", ") if m})),
                "estimated": any(row["estimated"] for row in group),
            }
        )
    return out


def first_whole_trainings(records: Iterable[Record]) -> set[tuple[str, int, int]]:
    """(run, attempt, epoch) of each run's first whole training of an epoch: FIRST in
    ``complete_training``, and no later attempt went on with it (max_steps ended it inside)."""
    first: dict[tuple[str, int], int] = {}
    went_on: set[tuple[str, int]] = set()
    for r, how in complete_training(list(records)):
        if how == FIRST:
            first[(r.run_id, r.epoch)] = r.attempt
        elif how in (ON, UNKNOWN) and first.get((r.run_id, r.epoch)) != r.attempt:
            went_on.add((r.run_id, r.epoch))
    return {(run, attempt, epoch) for (run, epoch), attempt in first.items() if (run, epoch) not in went_on}


def _validation_over_runs(group: list[dict], key: str) -> dict | None:
    """None where no run validated in this epoch (n/a in the tables); else a mean per run, 0 for a
    run that did not validate, as the runs' totals count it."""
    if all(row[key] is None for row in group):
        return None
    return over_runs([row[key] or 0.0 for row in group])


def covers_text(row: dict) -> str:
    """Which runs an ``epoch_summary`` row covers, for one that is not in every run:
    ``run b`` or ``runs a, b (2 of 3)``; empty when it is in every run."""
    if row["in_every_run"]:
        return ""
    if row["runs"] == 1:
        return f"run {row['run_ids'][0]}"
    return f"runs {', '.join(row['run_ids'])} ({row['runs']} of {row['of_runs']})"


def _summarise(per_run: dict[str, dict[str, dict]], runs: Sequence[str], names: Sequence[str]) -> dict[str, dict]:
    """Mean and SE over runs of each name's totals (a run without it counts 0)."""
    zero = _no_totals()
    out = {}
    for name in names:
        out[name] = {
            key: over_runs([per_run[run].get(name, zero)[key] for run in runs])
            for key in ("seconds", "energy_kwh", "co2eq_g", "samples")
        }
        out[name]["samples_counted"] = all(per_run[run].get(name, zero)["samples_counted"] for run in runs)
        out[name].update(_tokens_over_runs([per_run[run].get(name) for run in runs]))
    return out


def _tokens_over_runs(totals: Sequence[dict | None]) -> dict:
    """``tokens`` and ``j_per_token`` (mean ± SE over the runs, each run's own ratio, as per-sample
    costs are pooled) of some runs' totals of one phase (None: a run without it); each None (n/a)
    unless every run counted its tokens whole: a mean over the others would hide the run that did
    not. ``tokens_partial``: some run counted its tokens for part of the phase only."""
    counts = [t["tokens"] for t in totals if t is not None]
    every = bool(counts) and len(counts) == len(totals) and all(n is not None for n in counts)
    return {
        "tokens": over_runs(counts) if every else None,
        "j_per_token": (over_runs([t["energy_kwh"] * J_PER_KWH / t["tokens"] for t in totals])
                        if every and all(counts) else None),
        "tokens_partial": any(t is not None and t["tokens_partial"] for t in totals),
    }


def phase_summary(records: Sequence[Record]) -> dict[str, dict]:
    """Per phase, each run's sum, then mean and SE over runs (a run without the phase counts 0)."""
    per_run = {run: phase_totals(mine) for run, mine in by_run(records).items()}
    return _summarise(per_run, list(per_run), [p for p in PHASES if any(p in totals for totals in per_run.values())])


def prefix_summary(records: Sequence[Record]) -> dict[str, dict[str, dict]]:
    """Per phase logged under several metric prefixes (HF's ``eval_a`` and ``eval_b`` of two
    evaluation sets, a ``holdout`` evaluate), each prefix's totals, as ``phase_summary``'s."""
    runs = run_ids(records)
    out = {}
    for phase in PHASES:
        mine = [r for r in records if r.phase == phase]
        prefixes = list(dict.fromkeys(r.metric_prefix or "" for r in mine))
        if len(prefixes) < 2:
            continue
        grouped = by_run(mine)
        per_run = {run: _totals_by(grouped.get(run, []), lambda r: r.metric_prefix or "") for run in runs}
        out[phase] = _summarise(per_run, runs, prefixes)
    return out


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


def equivalents(co2eq_g: float) -> list[dict]:
    return [{**e, "amount": co2eq_g / e["g_per_unit"]} for e in EQUIVALENTS]


def compare_zones(records: Sequence[Record], zones: Sequence[str]) -> list[dict]:
    """The run's facility energy (mean per run, all phases) priced at other zones: "had this run in X"."""
    from greencallbacks.estimate import compare_places

    energy, _ = mean_and_se([t["energy_kwh"] for t in run_totals(records).values()])
    return compare_places(energy, zones)


def compare_zones_note(records: Sequence[Record], rows: Sequence[dict]) -> str | None:
    """What ``estimate`` says beside the same comparison: the run's grid and the zones compared mix
    life-cycle and direct figures (France's life-cycle 56 g beside a cloud region's direct 122 g),
    so part of a difference is the basis, not the grid. None where they do not."""
    from greencallbacks.carbon.intensity import BASIS_LABELS
    from greencallbacks.estimate import kept_pue_note, mixed_bases_note

    recorded = [basis for basis, label in BASIS_LABELS.items() if any(label in r.intensity_source for r in records)]
    notes = (mixed_bases_note(recorded + [row.get("basis") for row in rows]),
             kept_pue_note([r.pue for r in records], [row.get("provider_pue") for row in rows]))
    return "; ".join(note for note in notes if note) or None


def phases_text(phases: Sequence[str]) -> str:
    """``training, validation and the time between phases``: the phases given, in words."""
    words = [_PHASE_WORDS[p] for p in phases]
    return ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1] if words else ""


def _other_phases(phases: Sequence[str]) -> str:
    return phases_text([p for p in phases if p != "train"])


def statement(records: Sequence[Record], unfinished: Collection[str] = (),
              run_summaries: Mapping[str, dict] | None = None) -> str:
    """A sentence a paper can cite, naming what each figure covers: training alone, then the whole run.

    Records of several configurations give one sentence per configuration. ``run_summaries``: each
    run's energy-summary.json, which names the GPUs that could not be measured (see ``unmeasured_gpus``).
    """
    groups = group_runs(records, unfinished)
    if len(groups) > 1:
        return " ".join(statement(group, unfinished, run_summaries) for _, group in groups)
    config = groups[0][0]
    totals = list(run_totals(records).values())
    n = len(totals)
    train_kwh = over_runs([t["train_energy_kwh"] for t in totals])
    train_g = over_runs([t["train_co2eq_g"] for t in totals])
    all_kwh = over_runs([t["energy_kwh"] for t in totals])
    all_g = over_runs([t["co2eq_g"] for t in totals])
    train_sensor = sum(t["train_uncertainty_kwh"] for t in totals) / n
    all_sensor = sum(t["uncertainty_kwh"] for t in totals) / n
    others = _other_phases(sorted({p for t in totals for p in t["phases"]}, key=PHASES.index))
    # Nested parentheses read badly in a sentence: the epochs of another size follow a comma.
    samples = samples_text(config).replace(" (", ", ").rstrip(")") if config["samples_per_epoch"] else ""
    training = f"training ({config['epochs']} epoch{'s' if config['epochs'] != 1 else ''}{samples})"
    if not config["epochs"]:  # a loop of one's own that trains in steps: "training (0 epochs)" read as none
        training = "training (outside any epoch)"
    tokens = _tokens_over_runs([phase_totals(mine).get("train") for mine in by_run(records).values()])
    if tokens["tokens"] is not None:  # the training's tokens, where every run counted them whole
        count = tokens["tokens"]
        training = training[:-1] + f", {count_text(count['mean'], count['se'])} tokens in all{' per run' if n > 1 else ''})"
    per_token = tokens["j_per_token"]
    per_token = f", {joule_text(per_token['mean'], per_token['se'])} per token," if per_token else ""
    for clause in _tried_again(records):  # the energy of both tries was spent: why training cost more than its epochs
        training = training[:-1] + f"; {clause})"
    again = epochs_trained_again(records)
    if again:
        training = (training[:-1] + f"; {again} epoch{'s' if again != 1 else ''} trained again from an earlier "
                    f"checkpoint or epoch{' over the runs' if n > 1 else ''}, both counted)")
    if config.get("unfinished"):
        training = (training[:-1] + "; unfinished, its process killed outright or still training, "
                    f"{config['completed_epochs'] or 'none'} completed)")
    elif cut_short(config):
        training = (training[:-1] + f"; cut short by an exception or interrupt, "
                    f"{config['completed_epochs'] or 'none'} completed)")
    stopped = budget_stopped(records, run_summaries)
    if stopped:  # fewer epochs than it was set to: a table cited as "2 epochs" read as the plan
        training = training[:-1] + ("; stopped by its energy or CO2eq budget)" if n == 1 else
                                    f"; {len(stopped)} of the {n} runs stopped by their energy or CO2eq budget)")
    if not any("train" in t["phases"] for t in totals):  # evaluation or prediction alone, or a tuner's trials
        text = (f"The run (no training epoch; {others}) used {energy_text(all_kwh['mean'], all_kwh['se'])} and emitted "
                f"{mass_text(all_g['mean'], all_g['se'])}" + (" per run (mean ± standard error over runs)" if n > 1 else ""))
    elif n == 1:
        text = (f"The {training} used {energy_text(train_kwh['mean'])} (sensor uncertainty ± "
                f"{uncertainty_text(train_sensor, train_kwh['mean'])}){per_token} "
                f"and emitted {mass_text(train_g['mean'])}")
        if others:
            text += (f"; the whole run, including {others}, used {energy_text(all_kwh['mean'])} "
                     f"(± {uncertainty_text(all_sensor, all_kwh['mean'])}) and emitted {mass_text(all_g['mean'])}")
    else:
        text = (f"Over {n} runs of one configuration, {training} used {energy_text(train_kwh['mean'], train_kwh['se'])}"
                f"{per_token} and emitted {mass_text(train_g['mean'], train_g['se'])} per run")
        if others:
            text += (f"; the whole run, including {others}, used {energy_text(all_kwh['mean'], all_kwh['se'])} "
                     f"and emitted {mass_text(all_g['mean'], all_g['se'])}")
        text += (f" (mean ± standard error over runs; sensor uncertainty ± {uncertainty_text(all_sensor, all_kwh['mean'])} "
                 "per whole run)")
    carbon = carbon_summary(records)
    version = versions_text(records)
    text += (f", at {intensity_text(carbon['g_per_kwh'])} gCO2eq/kWh ({_sources_sentence(carbon['sources'])}) "
             "with a PUE of "
             f"{'/'.join(f'{p:g}' for p in carbon['pue'])}, measured with greencallbacks {version}; "
             f"{method_sentence(records)}.")
    if carbon["is_default"]:
        text += " No location was configured, so the world-average intensity was used."
    unmeasured = list(unmeasured_gpus(records, run_summaries))
    if unmeasured:
        text += (f" The GPU energy excludes {', '.join(unmeasured[:-1]) + ' and ' if len(unmeasured) > 1 else ''}"
                 f"{unmeasured[-1]}, which could not be measured.")
    embodied = embodied_total(run_totals(records))
    if embodied is not None:
        e = embodied["embodied_co2eq_g"]
        # Over part of the run where an attempt or call billed nothing (no figure known, or turned off).
        part = embodied_coverage(embodied)
        over = f"{part} (the rest: no figure known)" if part else "the run"
        text += (f" Apart from these operational emissions, the hardware's manufacturing footprint amortised over "
                 f"{over} adds {mass_text(e['mean'], e['se'])} (range {mass_text(embodied['embodied_co2eq_g_low'])} to "
                 f"{mass_text(embodied['embodied_co2eq_g_high'])}; greencallbacks embodied table).")
        left_out = gpus_without_embodied(records, run_summaries)
        if left_out:  # a GPU with no published figure billed nothing: the sentence stood for all of them
            text += (f" It leaves out {', '.join(left_out[:-1]) + ' and ' if len(left_out) > 1 else ''}{left_out[-1]}, "
                     "for which no published manufacturing footprint is known.")
    unwritten = [run for run, mine in by_run(records).items() if calls_left_unwritten(mine, run_summaries, unfinished)]
    if unwritten:  # the whole run's figure above lacks the end of that call: said where it is cited
        text += (f" A call after the training of run{'s' if len(unwritten) > 1 else ''} {', '.join(unwritten)} left no "
                 "write-up (killed outright, or still running): the whole run's figures hold it only up to its last "
                 "record or heartbeat.")
    return text[0].upper() + text[1:]


def _tried_again(records: Sequence[Record]) -> list[str]:
    """What the statement says of the epochs a crash cut short and a later attempt trained again
    (``redone``) or went on with from a checkpoint inside them (``resumed``): both tries counted.
    An epoch whose crash came after its last batch (``_crashed_after_training``) had trained whole,
    and is said so: "cut short by a crash and redone" read as a training cut short, of a run that
    trained every batch of it, then failed in its validation, and finished after a resume."""
    after = _crashed_after_training(records)
    counts: Counter[tuple[bool, str | None]] = Counter()
    for row in epoch_rows(records):
        if row["redone"]:
            counts[(row["resumed"], after.get((row["run_id"], row["attempt"], row["epoch"])))] += 1
    clauses = []
    for (resumed, where), n in sorted(counts.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        epochs, its = (f"{n} epoch", "its") if n == 1 else (f"{n} epochs", "their")
        crash = {"validation": f"a crash in {its} validation", "end": f"a crash at {its} end"}.get(where or "")
        if crash is None:  # cut short inside its training
            clauses.append(f"{epochs} cut short by a crash and resumed by a later attempt, both attempts counted"
                           if resumed else f"{epochs} cut short by a crash and redone, both counted")
        else:  # (a resume inside it: Lightning 2.2-2.4 train the checkpoint's last batch again)
            clauses.append(f"{epochs} resumed by a later attempt after {crash}, both attempts counted" if resumed
                           else f"{epochs} trained again after {crash}, both trainings counted")
    return clauses


def _crashed_after_training(records: Sequence[Record]) -> dict[tuple[str, int, int], str]:
    """(run, attempt, epoch) of each training cut short after its last batch (``_trained_every_batch``):
    ``validation`` where that attempt's validation of the epoch was cut short too, else ``end`` (an
    epoch-end hook, a checkpoint's write)."""
    out = {}
    for run, mine in by_run(records).items():
        cut: dict[tuple[int, int], list[Record]] = defaultdict(list)
        validation_cut: set[tuple[int, int]] = set()
        for r in mine:
            if r.partial and r.epoch is not None and r.phase == "train":
                cut[(r.attempt, r.epoch)].append(r)
            elif r.partial and r.epoch is not None and r.phase == "validation":
                validation_cut.add((r.attempt, r.epoch))
        for (attempt, epoch), group in cut.items():
            if _trained_every_batch(group, mine):
                out[(run, attempt, epoch)] = "validation" if (attempt, epoch) in validation_cut else "end"
    return out


def uncertainty_text(kwh: float, of_kwh: float) -> str:
    """A sensor uncertainty in a readable unit; none (counters read exactly at a boundary) in the
    unit of the figure it qualifies, ``3.33 Wh (± 0 Wh)``, not ``± 0 kWh``."""
    if kwh:
        return energy_text(kwh)
    unit, _ = pick_unit([of_kwh], ENERGY_UNITS)
    return f"0 {unit}"


def carbon_pause(records: Sequence[Record]) -> dict | None:
    """Carbon-aware pause per run, mean ± SE over the runs: ``seconds`` paused, and the ``energy_kwh``
    and ``co2eq_g`` of that time (each gap record's share of its time paused, as the ledger counts
    it: the pause's energy is in the ``other`` phase, unseen there). None when no record paused."""
    runs = by_run(records)
    if not any(r.paused_s for mine in runs.values() for r in mine):
        return None
    per_run = [_paused_costs(mine) for mine in runs.values()]
    return {key: over_runs([costs[key] for costs in per_run]) for key in ("seconds", "energy_kwh", "co2eq_g")}


def _paused_costs(records: Sequence[Record]) -> dict[str, float]:
    """Each phase once (``each_phase_once``): every rank pauses the same seconds, and a failed
    distributed run's gap written by each rank apart said 2 ranks' 3 s pause was 6 s."""
    costs = {"seconds": 0.0, "energy_kwh": 0.0, "co2eq_g": 0.0}
    for r in each_phase_once(records):
        if r.paused_s:
            share = min(1.0, r.paused_s / r.duration_s) if r.duration_s > 0 else 1.0
            costs["seconds"] += r.paused_s
            costs["energy_kwh"] += r.energy_kwh * share
            costs["co2eq_g"] += r.co2eq_g * share
    return costs


def summary(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = (),
            run_summaries: Mapping[str, dict] | None = None, unfinished: Collection[str] = ()) -> dict:
    """Everything a report says about the runs given, as one JSON-friendly dict (they are taken as repeats)."""
    if not records:
        raise ValueError("no records to report")
    totals = run_totals(records)
    energy_stat = over_runs([t["energy_kwh"] for t in totals.values()])
    grams_stat = over_runs([t["co2eq_g"] for t in totals.values()])
    out = {
        "runs": list(totals),
        "configuration": (configuration(records, next(iter(totals)) in unfinished) if len(totals) == 1
                          else group_runs(records, unfinished)[0][0]),
        "tool_version": versions_text(records),
        "tool_versions": tool_versions(records),
        "epochs": epoch_summary(records),
        "epoch_rows": epoch_rows(records),
        "phases": phase_summary(records),
        "phase_prefixes": prefix_summary(records),
        "run_totals": totals,
        "total": {
            "energy_kwh": energy_stat,
            "co2eq_g": grams_stat,
            "train_energy_kwh": over_runs([t["train_energy_kwh"] for t in totals.values()]),
            "train_co2eq_g": over_runs([t["train_co2eq_g"] for t in totals.values()]),
            "seconds": over_runs([t["seconds"] for t in totals.values()]),
            "sensor_uncertainty_kwh": sum(t["uncertainty_kwh"] for t in totals.values()) / len(totals),
        },
        "embodied": embodied_total(totals),
        "carbon_pause": carbon_pause(records),
        "hardware": hardware(records),
        "carbon": carbon_summary(records),
        "provenance": provenance(records, run_summaries, unfinished),
        # Also among the provenance notes; apart, for the formats that show no notes (LaTeX).
        "records_missing": incomplete_records(records, run_summaries),
        "statement": statement(records, unfinished, run_summaries),
    }
    if with_equivalents:
        out["equivalents"] = equivalents(grams_stat["mean"])
    if compare:
        out["compare_zones"] = compare_zones(records, compare)
        note = compare_zones_note(records, out["compare_zones"])
        if note:
            out["compare_zones_note"] = note
    return out


def summaries(records: Sequence[Record], *, with_equivalents: bool = False, compare: Sequence[str] = (),
              run_summaries: Mapping[str, dict] | None = None, unfinished: Collection[str] = ()) -> dict:
    """One ``summary`` per configuration, and how runs were grouped."""
    if not records:
        raise ValueError("no records to report")
    return {
        "grouped_by": GROUPED_BY,
        "configurations": [
            {**summary(group, with_equivalents=with_equivalents, compare=compare, run_summaries=run_summaries,
                       unfinished=unfinished),
             "description": describe_configuration(config)}
            for config, group in group_runs(records, unfinished)
        ],
    }
