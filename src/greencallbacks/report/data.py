"""What a report says, as data: the summary the formats render, the citable statement, equivalents, other zones."""

from __future__ import annotations

from collections import Counter
from typing import Collection, Mapping, Sequence

from greencallbacks.records import PHASES, Record, by_run
from greencallbacks.report.attempts import (
    AGAIN,
    FIRST,
    STOPPED,
    _crashed_after_training,
    complete_training,
    epochs_trained_again,
    inference_after_training,
    training_failed,
)
from greencallbacks.report.epochs import epoch_label, epoch_rows, epoch_status, is_estimated, methods_of, phase_totals
from greencallbacks.report.grouping import (
    GROUPED_BY,
    configuration,
    cut_short,
    describe_configuration,
    group_runs,
    run_ids,
    samples_text,
    whole_epoch_samples,
)
from greencallbacks.report.missing import calls_left_unwritten, incomplete_records, records_lack
from greencallbacks.report.sources import (
    _sources_sentence,
    budget_notes,
    budget_stopped,
    carbon_summary,
    gpus_without_embodied,
    hardware,
    method_sentence,
    provenance,
    source_text,
    tool_versions,
    unmeasured_gpus,
    versions_text,
)
from greencallbacks.report.totals import (
    _tokens_over_runs,
    carbon_pause,
    covers_text,
    embodied_coverage,
    embodied_total,
    epoch_summary,
    mean_and_se,
    over_runs,
    phase_summary,
    prefix_summary,
    run_totals,
)
from greencallbacks.textformat import (
    ENERGY_UNITS,
    count_text,
    energy_text,
    intensity_text,
    joule_text,
    mass_text,
    pick_unit,
)

# What other modules import from here, whatever module above owns it.
__all__ = [
    "AGAIN", "EQUIVALENTS", "FIRST", "GROUPED_BY", "STOPPED", "budget_notes", "carbon_summary", "compare_zones",
    "compare_zones_note", "complete_training", "configuration", "covers_text", "cut_short",
    "describe_configuration", "embodied_coverage", "embodied_total", "epoch_label", "epoch_rows", "epoch_status",
    "epoch_summary", "epochs_trained_again", "equivalents", "group_runs", "hardware", "inference_after_training",
    "is_estimated", "mean_and_se", "method_sentence", "methods_of", "over_runs", "phase_summary", "phase_totals",
    "phases_text", "prefix_summary", "provenance", "records_lack", "run_ids", "run_totals", "source_text",
    "statement", "summaries", "summary", "training_failed", "uncertainty_text", "whole_epoch_samples",
]


_PHASE_WORDS = {"train": "training", "validation": "validation", "test": "test", "predict": "prediction",
                "other": "the time between phases"}


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
        failed = "; cut short by an exception or interrupt" if config.get("evaluation_failed") else ""
        text = (f"The run (no training epoch; {others}{failed}) used {energy_text(all_kwh['mean'], all_kwh['se'])} "
                f"and emitted {mass_text(all_g['mean'], all_g['se'])}" + (" per run (mean ± standard error over runs)" if n > 1 else ""))
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


def uncertainty_text(kwh: float, of_kwh: float) -> str:
    """A sensor uncertainty in a readable unit; none (counters read exactly at a boundary) in the
    unit of the figure it qualifies, ``3.33 Wh (± 0 Wh)``, not ``± 0 kWh``."""
    if kwh:
        return energy_text(kwh)
    unit, _ = pick_unit([of_kwh], ENERGY_UNITS)
    return f"0 {unit}"


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
