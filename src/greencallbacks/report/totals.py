"""Totals per run and mean ± SE over runs: whole run, training, epochs, phases, prefixes, embodied, pause."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from greencallbacks.ledger import each_phase_once, embodied_seconds, wall_seconds
from greencallbacks.records import PHASES, Record, by_run
from greencallbacks.report.attempts import first_whole_trainings
from greencallbacks.report.epochs import (
    EPOCH_STATES,
    _no_totals,
    _totals_by,
    epoch_label,
    epoch_rows,
    epoch_status,
    phase_totals,
    token_count,
)
from greencallbacks.report.grouping import run_ids
from greencallbacks.textformat import number
from greencallbacks.units import J_PER_KWH


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
