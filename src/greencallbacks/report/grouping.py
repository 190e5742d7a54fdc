"""Which runs are repeats: each run's configuration, its description, and the runs grouped by it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Collection, Iterable, Sequence

from greencallbacks.carbon.intensity import USER_ZONE
from greencallbacks.ledger import each_phase_once
from greencallbacks.records import Record, by_run
from greencallbacks.report.attempts import (
    AGAIN,
    STOPPED,
    UNKNOWN,
    _trained_every_batch,
    complete_training,
    training_failed,
)
from greencallbacks.report.epochs import _stopped, phase_totals

GROUPED_BY = ("framework, training epochs and the first one, samples and steps per epoch, sensors (name and method), ranks, "
              "and the grid (intensity zone, or the number given) and PUE; a run whose training did not finish is "
              "never pooled with another, nor is a run that trained nothing and failed (a validate, test or predict "
              "session whose last record is partial); another run that trained nothing is pooled only with runs of "
              "the same phases and samples per phase")


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
        # A run that trained nothing (a validate, test or predict session): its phases' samples, and
        # whether it failed; None and False for one that trained.
        "evaluations": _evaluations_alone(records),
        "evaluation_failed": _evaluation_failed(records),
    }


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
    deltas = [ends[e] - (began_at if e == first_epoch else ends[e - 1]) for e in ends
              if (e == first_epoch and began_at is not None) or e - 1 in ends]
    return Counter(deltas).most_common(1)[0][0] if deltas else None


def _training_start(records: Sequence[Record]) -> tuple[int | None, int | None]:
    """The epoch a run's training began at (0, or a later one: a KerasTuner Hyperband trial going on
    from another trial's weights, a fit from ``initial_epoch``), and the step it began at: that of
    the last record before its first training record that carries one (Keras keeps the optimizer's
    step over fits of one model: a second ``fit`` of it began at the first's last step), else 0 for
    a training begun at epoch 0 and None (not known) for one begun later: a Lightning or HF fit that
    went on from a checkpoint or an earlier fit of its Trainer as a run of its own writes no step
    before its first epoch, and counted from 0 its first epoch's steps were all the earlier ones."""
    ordered = sorted(records, key=lambda r: (r.attempt, r.seq))
    first = next((i for i, r in enumerate(ordered) if r.phase == "train" and r.epoch is not None), None)
    if first is None:
        return None, 0
    # The latest record before it that carries a step: Keras's first gap carries the optimizer's
    # step; a Lightning or HF resume's first gap carries none (Lightning 2.6, transformers 5.25: a
    # resume whose crashed attempt's records are in another directory writes step None there too).
    before = next((r for r in reversed(ordered[:first]) if r.step is not None), None)
    if before is not None:
        return ordered[first].epoch, before.step
    return ordered[first].epoch, 0 if ordered[first].epoch == 0 else None


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
    """The configuration in words: configurations grouped apart read apart (two validate sessions
    of other data both read "0 training epoch(s)", and a failed one as one that ended well), but
    for runs alone by rule (cut short, or failed) that are otherwise alike: their run ids tell them."""
    if config.get("evaluations") is not None:
        return (f"{config['framework']}, {training_text(config)}, "
                f"sensors {', '.join(config['sensors']) or 'none'}, {config['ranks']} rank(s){_carbon_text(config)}")
    samples = samples_text(config)
    if config["samples_per_epoch"] is None and config.get("completed_epochs", 1):
        samples = (" of uncounted samples" if not config.get("samples_counted", False)
                   else " of samples not known whole (resumed inside an epoch)")
    start = f" from epoch {config['first_epoch']}" if config.get("first_epoch") else ""
    ended = f", {_ended_text(config)} ({config['completed_epochs'] or 'none'} completed)" if cut_short(config) else ""
    return (f"{config['framework']}, {training_text(config)}{start}{samples}{ended}, "
            f"sensors {', '.join(config['sensors']) or 'none'}, {config['ranks']} rank(s){_carbon_text(config)}")


def training_text(config: dict) -> str:
    """``2 training epoch(s)``, or ``no training (validation of 16 samples)`` for a run that trained
    nothing: how much a run trained, as its heading and the CLI's list of the runs found say it."""
    if config.get("evaluations") is not None:
        return f"no training ({_evaluations_text(config)})"
    return f"{config['epochs']} training epoch(s)"


def _carbon_text(config: dict) -> str:
    return f", {'; '.join(config['carbon'])}" if config.get("carbon") else ""


_EVALUATION_WORDS = {"validation": "validation", "test": "test", "predict": "prediction"}


def _evaluations_text(config: dict) -> str:
    """``validation of 16 samples, cut short``: the phases of a run that trained nothing, as it is grouped."""
    phases = [f"{_EVALUATION_WORDS.get(phase, phase)} of {'uncounted' if n is None else n} samples"
              for phase, n in config["evaluations"].items()]
    failed = ["cut short by an exception or interrupt"] if config.get("evaluation_failed") else []
    return ", ".join(phases or ["no evaluation batch"]) + "".join(f", {word}" for word in failed)


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
        alone = cut_short(config) or config["evaluation_failed"]
        key = json.dumps([config, run if alone else None], sort_keys=True)
        groups.setdefault(key, (config, []))[1].extend(mine)
    return list(groups.values())


def _evaluations_alone(records: Sequence[Record]) -> dict[str, int] | None:
    """The samples of each phase of a run that trained nothing (a validate, test or predict session);
    None for one that trained. Such a run has no training to be grouped by: a test session and a
    predict session of other data were pooled as repeats, with a mean ± SE over them."""
    if any(r.phase == "train" for r in records):
        return None
    return {phase: totals["samples"] if totals["samples_counted"] else None
            for phase, totals in phase_totals(records).items() if phase != "other"}


def _evaluation_failed(records: Sequence[Record]) -> bool:
    """Whether a run that trained nothing ended failing: its last record is partial. Its phases'
    samples are where it stopped: two validate sessions failed in their second batch, or a fit failed
    in its sanity check beside a validate failed before its first batch (no phase but the gap), were
    pooled as repeats with a mean ± SE. A run that trained is told cut short by its configuration."""
    if any(r.phase == "train" for r in records):
        return False
    return max(records, key=lambda r: (r.attempt, r.seq)).partial
