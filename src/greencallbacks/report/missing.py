"""What a run's records lack: lost seqs, attempts left elsewhere, energy its summary counts beyond them."""

from __future__ import annotations

from collections import defaultdict
from typing import Collection, Mapping, Sequence

from greencallbacks.records import Record, by_run, counted_to_heartbeat
from greencallbacks.runs import UNSEEN_BY_SUMMARY
from greencallbacks.textformat import (
    ENERGY_UNITS,
    number,
    pick_unit,
    printable,
)


def _after_last_record(records: Sequence[Record], unfinished: Sequence[str]) -> str:
    """What an unfinished run's figures leave out: everything after its last record, or, where its
    heartbeat was read (``runs.load``: phases of its last attempt carried, as a resume carries them),
    what it used after its last heartbeat."""
    from greencallbacks.checkpoint_state import HEARTBEAT_S

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
