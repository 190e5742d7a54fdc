"""A resume: the tracker continues a checkpoint's run as its next attempt.

Owns what a resume decides: where the run's history is (its records file, the directories of
earlier attempts, a copy of the run's directory), which claim on the run this process may hold,
and the phases a killed attempt left open that no record holds (the checkpoint's, the
heartbeats', each rank's part), carried into the records once each. ``resume`` is called by the
tracker under its phase lock (``Tracker.load_state_dict``, or ``Tracker.start`` for a state loaded
before it); the totals it continues from are the ledger's (``Ledger.resume``).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greencallbacks import run_ids
from greencallbacks.heartbeat import heartbeat_files, heartbeat_parts, ranks_written
from greencallbacks.ledger import PhaseTotals, read_run_records, run_ids_in
from greencallbacks.records import RECORDS_FILE, Record, combine_ranks

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker


def resume(tracker: "Tracker") -> None:
    """Continue the run of the state ``load_state_dict`` kept (``_resume_state``)."""
    # (A call that just failed may have been writing up on the watch thread: settled before, see start.)
    state, tracker._resume_state = tracker._resume_state, None
    tracker._renamed_from = None  # the given run id continues after all
    tracker._logged_totals = (0.0, 0.0)  # the totals go on from the checkpoint's run (maybe another one)
    ledger, output_dir = copy.copy(tracker.ledger), tracker.output_dir  # `resume` rebinds, never mutates
    try:
        home = Path(state["records_path"]).parent if state.get("records_path") else None
        run_id = state.get("run_id", tracker.run_id)
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id {run_id!r}")
        copied = _copy_of(tracker.output_dir, home, run_id, state)
        if copied is not None:  # a copy of the run's directory, resumed from the copy: its own history
            tracker.output_dir = home = copied
        elif home is not None and (home.is_dir() or home.parent.is_dir()) and not tracker._output_dir_chosen:
            # The run goes on in its own records file (one run, one ledger), even when the framework
            # made a new log directory for this attempt (Lightning's version_N), unless the user chose
            # a directory, or the run's is not on this machine (its parent is missing too).
            tracker.output_dir = home
        if tracker.reducer.world_size == 1 and not tracker._hold_lock(
                home if home is not None and home.is_dir() else tracker.output_dir, run_id):
            tracker.output_dir = output_dir
            if run_id == tracker.run_id:  # the id given: a run of its own needs an id of its own
                run_ids.take_a_free_run_id(tracker, "")
                tracker._renamed_from = None  # said here
            from greencallbacks.meter import warn

            warn(f"greencallbacks: run {run_id} is being measured by another process now (an evaluation job "
                 "while it trains? two fits resumed from one checkpoint?); this one is measured as a run of its own "
                 f"({tracker.run_id}), not as its next attempt, so that neither writes over the other's records.")
            return
        # The run's history is where this attempt writes, when the run has records there: a
        # copy of its directory resumed from the copy continues the copy's history, not the
        # original's (which may have gone on since: its later attempts are no part of this
        # one's). Else where the checkpoint says it was written (a directory chosen anew).
        records = read_run_records(run_id, [tracker.output_dir])
        # Attempts written in other directories (a resume into an output_dir chosen anew, and
        # the resumes after it): the history is theirs and this one's, or the third attempt
        # lost the first's energy.
        earlier = [Path(p).parent for p in state.get("earlier_records") or () if isinstance(p, str)]
        moved = home is not None and tracker.output_dir is not None and not _same_directory(home, tracker.output_dir)
        if moved and read_run_records(run_id, [home]):
            earlier.append(home)  # (also where this directory holds some of the run: A, then B, then A)
        elif not records and home is not None:
            records = read_run_records(run_id, [home])
        earlier = _distinct(earlier, tracker.output_dir)
        gone = [d for d in earlier if not (d / RECORDS_FILE).is_file()]
        if gone:
            # The run's history is not all here to read: the checkpoint's totals are (the
            # records found would leave the missing directories' energy out of the run).
            records = []
            from greencallbacks.meter import warn

            warn(f"greencallbacks: the records of run {run_id} in {', '.join(map(str, gone))} are gone; its totals go "
                 "on from the checkpoint's, and a report of the directories left covers only their attempts.")
        elif earlier:
            records = read_run_records(run_id, [*earlier, tracker.output_dir])
        if earlier:
            tracker._records_elsewhere = [str(d / RECORDS_FILE) for d in earlier]
            if moved:
                _say_records_elsewhere(tracker, run_id, earlier)
        if gone:
            tracker.ledger.resume(state, records)
        else:
            _resume_carrying(tracker, state, records, [home, tracker.output_dir])
    except (TypeError, ValueError, KeyError, AttributeError, OSError) as error:
        # A checkpoint's entry edited, damaged or from an unknown version: the framework's
        # restore must not fail for it. This training is measured, as a run of its own.
        tracker.ledger, tracker.output_dir = ledger, output_dir
        from greencallbacks.meter import warn

        warn(f"greencallbacks: the energy state saved in the checkpoint is unreadable ({error!r}); "
             f"this training is measured as a new run ({tracker.run_id}), without the checkpoint's totals.")
        return
    for opened in tracker._stack:  # numbered before the run was known
        opened.seq = tracker.ledger.take_seq()
    if tracker.running:
        tracker._open_writer()


def _resume_carrying(tracker: "Tracker", state: dict[str, Any], records: list[Record],
                     directories: list[Path | None]) -> None:
    """Continue the run from ``records`` (or the checkpoint's totals where there are none), with
    the phases its killed attempt left open (``_carry``), each counted once."""
    tracker.ledger.resume(state, records)  # names the run
    found = _distinct([d for d in directories if d is not None], None)
    tracker._heartbeats_carried = [path for path, _ in heartbeat_files(tracker.run_id, found)]
    parts = heartbeat_parts(tracker.run_id, found, not_of=tracker._session_id)
    saved = _carry(tracker.run_id, state, records)
    beaten = _carry_heartbeat(state, records, saved, parts.pop(0, []))
    # Rank 0's part of each phase left open: the checkpoint's measure, or its heartbeat's later one;
    # then summed with the other ranks' parts.
    carried = {(r.seq, r.attempt): r for r in saved}
    carried.update({(r.seq, r.attempt): r for r in beaten})
    carried = _carry_ranks(tracker, state, records, carried, parts)
    as_saved = {(r.seq, r.attempt): r for r in saved}
    changed = [r for key, r in carried.items() if as_saved.get(key) is not r]
    uncounted = list(carried.values())
    if not records:
        # The ledger goes on from the checkpoint's totals, which count the phases it saved open
        # as they were then: a later or summed measure of such a phase replaces that one.
        tracker.ledger.resume(_uncounted(state, [r for key, r in as_saved.items() if carried[key] is not r]), records)
        uncounted = changed
    tracker._carried = sorted(carried.values(), key=_in_order)
    for record in sorted([*uncounted, *(r for _, r in tracker._carried_apart)], key=_in_order):
        tracker.ledger.add(record)
    if changed:
        # An attempt that wrote no record of its own (killed before its first) is numbered
        # from the records: the one after it must not take its attempt number or its seqs.
        tracker.ledger.attempt = max(tracker.ledger.attempt, max(r.attempt for r in changed) + 1)
        tracker.ledger.next_seq = max(tracker.ledger.next_seq, max(r.seq for r in changed) + 1)


def _carry_ranks(tracker: "Tracker", state: dict[str, Any], records: list[Record],
                 carried: dict[tuple[int, int], Record], others: dict[int, list[Record]]) -> dict[tuple[int, int], Record]:
    """Each phase left open, summed over the ranks that measured it. A checkpoint holds rank 0's
    part alone; each other rank wrote its own in its heartbeat (``others``, by rank; at the
    checkpoint too, see ``Tracker.state_dict``): 8 GPUs preempted an hour into an epoch carried one
    GPU's hour, not eight."""
    written = ranks_written(records)  # a rank killed alone wrote no part of the phases it had open
    tracker._carried_apart = []
    after = (int(state.get("attempt", 0)), int(state.get("seq", 0)))
    parts: dict[tuple[int, int], list[Record]] = {}
    for rank, part in others.items():
        for record in part:
            key = (record.seq, record.attempt)
            held = written.get((record.run_id, record.attempt, record.seq), ())
            if held is None or rank in held:
                continue  # this rank's part is in the records
            if held:
                # Other ranks wrote their parts of it as they failed: this one's goes beside
                # theirs, in its own rank's file, as it would have written it (one record of
                # that seq in the run's file, and the report sums the parts).
                tracker._carried_apart.append((rank, dataclasses.replace(record, carried=True)))
            # A phase closed before the checkpoint is in its records or its totals already.
            elif key in carried or (record.attempt, record.seq) >= after:
                parts.setdefault(key, []).append(record)
    summed = dict(carried)
    for key, others_parts in parts.items():
        record = combine_ranks(([[carried[key]]] if key in carried else []) + [[part] for part in others_parts])[0]
        record.carried = True
        summed[key] = record
    return summed


def _carry_heartbeat(state: dict[str, Any], records: list[Record], saved: list[Record],
                     heartbeat: list[Record]) -> list[Record]:
    """The open phases of the run's last heartbeat (``heartbeat``: rank 0's part) that no record holds and that
    the checkpoint does not hold as long: a phase open at the checkpoint, measured further (the
    killed attempt's heartbeat is later than its checkpoint), or begun after the checkpoint.
    A phase closed before the checkpoint is in its records (or its totals) already."""
    written = _held_with_rank_0(records)
    at_checkpoint = {(r.seq, r.attempt): r.duration_s for r in saved}
    after = (int(state.get("attempt", 0)), int(state.get("seq", 0)))
    carried = []
    for record in heartbeat:
        key = (record.seq, record.attempt)
        if key in written:
            continue
        if key in at_checkpoint:
            later = record.duration_s > at_checkpoint[key]
        else:
            later = (record.attempt, record.seq) >= after
        if later:
            record.carried = True
            carried.append(record)
    return carried


def _carry(run_id: str, state: dict[str, Any], records: list[Record]) -> list[Record]:
    """The phases the checkpoint saved open (as measured so far) that no record holds: their
    attempt was killed before writing them (preempted, SIGKILL: no handler runs). The totals
    count them; without these lines the records did not (a single-epoch fine-tune preempted
    inside its epoch: summary 2.15e-6 kWh, records 1.59e-6), or, where the run had written a
    record before, the totals lost them too."""
    written = _held_with_rank_0(records)
    carried = [Record.from_dict(saved) for saved in state.get("open_records") or ()]
    carried = [r for r in carried if r.run_id == run_id and (r.seq, r.attempt) not in written]
    for record in carried:
        record.carried = True
    return carried


def _say_records_elsewhere(tracker: "Tracker", run_id: str, earlier: list[Path]) -> None:
    """A resume into an ``output_dir`` chosen anew: this attempt's records go there, the
    earlier ones stay where they were written, and the summary (of the whole run) is more
    than the records beside it. Said, and named in the summary, so that neither place is
    read as the whole run."""
    if tracker.reducer.rank == 0:
        from greencallbacks.meter import warn

        places = " ".join(map(str, earlier))
        warn(f"greencallbacks: run {run_id} continues in {tracker.output_dir} (the output_dir given), and its "
             f"earlier attempts' records stay in {', '.join(map(str, earlier))}: its energy-summary.json here covers "
             f"the whole run. For the whole run: greencallbacks report {places} {tracker.output_dir}")


def _copy_of(output_dir: Path | None, home: Path | None, run_id: str, state: dict[str, Any]) -> Path | None:
    """Where this attempt's directory (``output_dir``), or the one of the same name beside it
    (Lightning's ``version_0`` beside the ``version_1`` it opened), holds the run's history up to
    the checkpoint though the checkpoint names another directory (``home``): a copy of the run's
    directory (``cp -r``; or the run's directory moved), resumed from the copy. Its history
    is the copy's, not the original's, which may have gone on since; this attempt writes
    there, never into the original. The same records, not the same id: a run_id given is
    unique only within a directory, and another directory may hold another run under it."""
    if home is None or output_dir is None:
        return None
    for here in dict.fromkeys((output_dir, output_dir.parent / home.name)):
        if here.is_dir() and not _same_directory(here, home) and run_id in run_ids_in(here):
            history = _history_before(read_run_records(run_id, [here]), state)
            if history and (not home.is_dir() or history == _history_before(read_run_records(run_id, [home]), state)):
                return here
    return None


def _history_before(records: list[Record], state: dict[str, Any]) -> list[Record]:
    """The records a checkpoint's state comes after: of its attempt's earlier seq, and of the
    attempts before it."""
    attempt, seq = int(state.get("attempt", 0)), int(state.get("seq", 0))
    return sorted((r for r in records if (r.attempt, r.seq) < (attempt, seq)), key=lambda r: (r.attempt, r.seq))


def _distinct(directories: list[Path], excluding: Path | None) -> list[Path]:
    """``directories`` in order, each once however it is spelled (a symlink, a relative path), without ``excluding``."""
    kept: list[Path] = []
    for directory in directories:
        if not any(_same_directory(directory, other) for other in [*kept, *([excluding] if excluding else [])]):
            kept.append(directory)
    return kept


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them is not there
        return False


def _uncounted(state: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """``state`` with ``records`` (phases it saved open) taken out of its totals again."""
    if not records:
        return state
    totals = {phase: dict(values) for phase, values in (state.get("totals") or {}).items()}
    prefix_totals = [[phase, prefix, dict(values)] for phase, prefix, values in state.get("prefix_totals") or []]
    for record in records:
        counted = PhaseTotals()
        counted.add(record)
        slots = [totals.get(record.phase)] + [values for phase, prefix, values in prefix_totals
                                              if (phase, prefix) == (record.phase, record.metric_prefix)]
        for slot in filter(None, slots):
            for name, value in vars(counted).items():
                if name == "tokens_counted":  # which record made it false is not known: kept
                    continue
                if name == "tokens":  # None: counted none; what the open phases alone counted is none again
                    if value is not None and slot.get(name) is not None:
                        slot[name] = max(0, slot[name] - value) or None
                    continue
                slot[name] = max(0, slot.get(name, 0) - value)  # never below 0 by rounding
    return {**state, "totals": totals, "prefix_totals": prefix_totals}


def _held_with_rank_0(records: list[Record]) -> set[tuple[int, int]]:
    """The phases (seq, attempt) whose records hold rank 0's part. A phase whose records hold other
    ranks' parts alone (each wrote its own as it failed, while rank 0 was killed outright) still
    lacks rank 0's, which its checkpoint or heartbeat holds: 2 ranks, rank 0 killed inside an epoch
    and rank 1 failing after it, lost rank 0's part of that epoch on resume. Parts of unknown ranks
    (no components, or records without ranks) count as rank 0's, as before."""
    return {(seq, attempt) for (_, attempt, seq), held in ranks_written(records).items()
            if held is None or not held or None in held or 0 in held}


def _in_order(record: Record) -> tuple[int, int]:
    return record.attempt, record.seq
