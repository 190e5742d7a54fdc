"""Finding and loading the records of runs, for the after-the-run tools and the command line.

A directory given to ``report``, ``whatif`` or ``lifecycle`` may be a log root (``lightning_logs/``,
an HF ``output_dir``, a TensorBoard ``log_dir``): its ``energy-records.jsonl`` files are found at
any depth, like ``tensorboard --logdir`` finds event files. ``energy-records.rank<r>.jsonl``
beside one (what ranks > 0 wrote when a distributed run failed) belongs to the same runs, and so
does a run's heartbeat beside them (``energy-open-<run id>.<session>.json``, ``Tracker.heartbeat``): the phases
a run killed outright had open, counted up to its last heartbeat as its resume would carry them.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from greencallbacks.heartbeat import HEARTBEAT_GLOB, heartbeat_files, heartbeat_records, ranks_written
from greencallbacks.records import RECORDS_FILE, Record, by_run, file_lines, read_records, record_key
from greencallbacks.textformat import printable

RANK_FILES = "energy-records.rank*.jsonl"
# Fields every sum in a report needs; the writer turns a NaN into null, which a report cannot add.
SUMMED_FIELDS = ("duration_s", "it_energy_kwh", "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "pue",
                 "uncertainty_kwh")


def find_run_files(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The records files ``path`` names: itself (with its rank files) if a file, else every one below
    the directory; and the runs' heartbeats beside them (``_open_phases``). A directory holding a
    heartbeat alone (its run killed before its first record) is no error. A pipe named here
    (`report <(cat energy-records.jsonl)`) is read as cat reads it; one found by walking a directory
    is refused (``_walk``): nobody asked to wait for its writer."""
    path = Path(path)
    if path.is_file() or path.is_fifo():
        _refuse_other_run_files(path)
        beside = path.name == RECORDS_FILE
        # What ranks > 0 wrote when a distributed run failed is part of the same runs' energy.
        ranks = sorted(path.parent.glob(RANK_FILES)) if beside else []
        beats = sorted(p for p in path.parent.glob(HEARTBEAT_GLOB) if p.is_file()) if beside else []
        return [path, *ranks], beats
    if not path.is_dir():
        refuse_special_file(path)
        if path.is_symlink():  # `ls` lists it: "no such file" would send the user looking for it
            raise ValueError(f"{path}: a link to {os.readlink(path)}, which does not exist (moved or deleted)")
        raise FileNotFoundError(f"no such file or directory: {path}")
    found, beats = _walk(path)
    if not found and not beats:
        raise ValueError(_nothing_under(path))
    return sorted(found), sorted(beats)


def _refuse_other_run_files(path: Path) -> None:
    """A run's heartbeat or summary named instead of its records: said as such (read as records,
    its JSON gave "not a greencallbacks record: Extra data")."""
    if fnmatch.fnmatchcase(path.name, HEARTBEAT_GLOB):
        what = "a run's heartbeat"
    elif fnmatch.fnmatchcase(path.name, "energy-summary*.json"):
        what = "a run's summary"
    else:
        return
    raise ValueError(f"{path}: {what}, not its records: give the directory that holds them (or its {RECORDS_FILE}), "
                     "where the records, summaries and heartbeats are read together")


def _nothing_under(path: str | os.PathLike) -> str:
    return f"no {RECORDS_FILE} under {path} (looked in every subdirectory)"


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """The records files at any depth under ``root``, and the heartbeats, through symlinked
    directories (a run directory linked into a log root, or a root that is a link to the logs), each
    directory once: a link to a directory above it would loop. One that cannot be read is warned of,
    naming it: left out in silence, its runs would be missing from totals that look whole.
    (Path.rglob, before Python 3.13, neither follows links to directories nor says what it could not read.)"""
    unreadable: list[str] = []
    reasons: dict[str, None] = {}  # why, as the system said it ("Permission denied")

    def cannot_read(error: OSError) -> None:
        unreadable.append(error.filename)
        reasons[error.strerror or str(error)] = None

    seen: set[str] = set()
    found: list[Path] = []
    beats: list[Path] = []
    for directory, subdirectories, names in os.walk(root, followlinks=True, onerror=cannot_read):
        real = os.path.realpath(directory)
        if real in seen:
            subdirectories[:] = []  # reached again through a link: its files are already counted
            continue
        seen.add(real)
        found += [Path(directory, name) for name in names
                  if name == RECORDS_FILE or fnmatch.fnmatchcase(name, RANK_FILES)]
        beats += [Path(directory, name) for name in names if fnmatch.fnmatchcase(name, HEARTBEAT_GLOB)]
    # A link to records moved or deleted: its runs are gone, said as the directories that cannot be
    # read are ("[Errno 2] No such file or directory" named a file that `ls` lists).
    dangling = [file for file in found if file.is_symlink() and not file.exists()]
    if dangling:
        found = [file for file in found if file not in dangling]
        links = ", ".join(f"{file} -> {os.readlink(file)}" for file in dangling)
        if not found and not beats:  # the one line said: "no energy-records.jsonl under" it would deny them
            raise ValueError(f"every {RECORDS_FILE} under {root} links to nothing (moved or deleted): {links}")
        warnings.warn(f"{len(dangling)} records file(s) under {root} link to nothing (moved or deleted), so their "
                      f"records are left out: {links}", stacklevel=3)
    for file in found:
        if not file.is_file():  # a named pipe there would block the read forever
            refuse_special_file(file, "a records file")
    if unreadable and not found and not beats:
        # Warned of and then "no energy-records.jsonl under it (looked in every subdirectory)": said
        # of a log root that could not be read at all (another user's, mode 700), that denied its records.
        shown = ", ".join(map(str, unreadable[:3])) + (f" and {len(unreadable) - 3} more"
                                                       if len(unreadable) > 3 else "")
        raise ValueError(f"no {RECORDS_FILE} could be read under {root}: could not read {shown} ({'; '.join(reasons)})")
    if unreadable:
        warnings.warn(f"could not read {len(unreadable)} director{'y' if len(unreadable) == 1 else 'ies'} under "
                      f"{root}, so any records there are left out: {', '.join(unreadable)}", stacklevel=3)
    return found, [beat for beat in beats if beat.is_file()]  # (a pipe of that name is no heartbeat of ours)


def refuse_special_file(path: Path, wanted: str = "a regular file or directory", name: str | None = None) -> None:
    """Refuse ``path`` as what it is, not ``wanted``: a named pipe would block its reader forever and
    a device (/dev/zero) never ends. ``name``: how the message names it (default: the path).
    Said as what it is: "no such file" would send the user looking for a path that is there."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing (or unreadable): "no such file or directory"
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))
    kind = next((kind for test, kind in kinds if test(mode)), "a special file")
    raise ValueError(f"{path if name is None else name}: not {wanted} ({kind})")


@dataclass
class Loaded:
    records: list[Record]
    files: list[Path]
    # run id -> the files holding its records: its heartbeat too, where that adds phases (``_open_phases``)
    run_files: dict[str, list[Path]]
    # run id -> the energy-summary.json of that run beside its records (the largest, where several
    # directories hold one: a resume into another directory wrote the whole run's there).
    summaries: dict[str, dict] = field(default_factory=dict)
    # Runs whose last attempt left no write-up beside their records (``unfinished_runs``).
    unfinished: set[str] = field(default_factory=set)

    @property
    def runs(self) -> list[str]:
        return list(self.run_files)

    def where(self, record: Record) -> str:
        """``file:line`` of ``record`` (its files read again: for error messages only)."""
        for file in self.run_files.get(record.run_id, []):
            lines = _lines_of(file, record.run_id, record.seq, record.attempt)
            if lines:
                return f"{file}:{lines[0]}"
        return f"run {printable(record.run_id)}, record seq {record.seq}"


def load(paths: str | os.PathLike | Iterable[str | os.PathLike], run_id: str | None = None) -> Loaded:
    """Every record under ``paths`` (files or directories), or ``run_id``'s alone (other runs' lines
    are then not decoded); a bad line raises ``ValueError`` naming file and line."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    beats: list[Path] = []
    seen: set[Path] = set()  # resolved: a file given by itself and through its directory, or a link, is read once
    for path in paths:
        found_files, found_beats = find_run_files(path)
        for found, into in [(f, files) for f in found_files] + [(b, beats) for b in found_beats]:
            if found.resolve() not in seen:
                seen.add(found.resolve())
                into.append(found)
    records: list[Record] = []
    run_files: dict[str, list[Path]] = {}
    # Each record once: a copied run directory (a backup made with `cp -r`) or a file given with
    # its directory under another name holds the same records, which would be summed twice.
    first_seen: dict[tuple, tuple[Record, Path]] = {}
    copies: dict[Path, Path] = {}  # file holding copies -> the file whose records they copy
    dropped: set[int] = set()  # carried records that another file holds whole (``_original_and_carried``)
    resumed_apart: set[str] = set()  # the runs of those
    for file in files:
        mine = read_records(file, run_id=run_id)
        _refuse_nulls(file, mine)
        kept = []
        for record in mine:
            key = record_key(record, file)
            seen = first_seen.get(key)
            if seen is None:
                first_seen[key] = (record, file)
                kept.append(record)
                continue
            if seen[0] != record:
                if seen[1] != file and _original_and_carried(seen[0], record):
                    # A resume that could not see the crashed attempt's records (another node's
                    # disk) wrote the phase its checkpoint held open again, up to the checkpoint
                    # (carried); the directory the attempt ran in holds that phase whole.
                    resumed_apart.add(record.run_id)
                    if seen[0].carried:
                        dropped.add(id(seen[0]))
                        first_seen[key] = (record, file)
                        kept.append(record)
                    continue
                if seen[1] == file:  # "f and f both hold ...: report them apart" named no line to look at
                    first, again = (_lines_of(file, record.run_id, record.seq, record.attempt) + ["?", "?"])[:2]
                    raise ValueError(
                        f"{file}:{again}: record seq {record.seq} of run {record.run_id!r} (attempt {record.attempt}) "
                        f"again, with other contents than at line {first} (two processes wrote records under the same "
                        "'run_id' into this file, or two histories of one run were joined): a report cannot tell "
                        "which is the run's; keep one of them"
                    )
                raise ValueError(
                    f"{seen[1]} and {file} both hold record seq {record.seq} of run {record.run_id!r} "
                    f"(attempt {record.attempt}) with different contents (two runs whose records carry the same "
                    "'run_id', or two histories of one run): report them apart"
                )
            copies.setdefault(file, seen[1])
        for record in kept:
            holders = run_files.setdefault(record.run_id, [])
            if file not in holders:
                holders.append(file)
        records += kept
    records = [r for r in records if id(r) not in dropped]
    if copies:
        warnings.warn(
            "records found more than once (the same run, attempt and seq with the same contents) were "
            "counted once: " + "; ".join(f"{copy} repeats {original}" if copy != original else
                                         f"{copy} repeats records it holds already" for copy, original in copies.items()),
            stacklevel=2,
        )
    records += _open_phases(records, run_files, beats, run_id)
    if not records and not files:  # heartbeats alone, none of them readable (or of the run asked for)
        raise ValueError(_nothing_under(", ".join(map(str, paths))) + ", and no heartbeat of a run there could be "
                         f"read ({', '.join(map(str, beats))})")
    summaries = _summaries_beside(run_files)
    for run in resumed_apart.intersection(summaries):
        # Its latest summary was written by that resume, which counted the crashed attempt up to the
        # checkpoint alone: the records here hold more, and no later call is missing its write-up.
        summaries[run] = {**summaries[run], UNSEEN_BY_SUMMARY: True}
    return Loaded(records, files, run_files, summaries, unfinished_runs(records, run_files, summaries))


# Set by ``load`` in a summary whose writer could not see some of its run's records (a resume in
# another directory): records holding more energy than it says nothing of a call left unwritten.
UNSEEN_BY_SUMMARY = "records_unseen_by_writer"


def _original_and_carried(one: Record, other: Record) -> bool:
    """Whether two records of one key are a phase as its attempt wrote it and as a resume carried it."""
    return one.carried != other.carried and (one.phase, one.epoch) == (other.phase, other.epoch)


def _open_phases(records: Sequence[Record], run_files: dict[str, list[Path]], beats: Sequence[Path],
                 run_id: str | None) -> list[Record]:
    """The phases each run's heartbeat in ``beats`` holds open that no record holds, as its resume
    would carry them (``carried``; ``partial`` where still open): a run killed outright and never
    resumed (started again as a new run) wrote nothing of its last phase but its heartbeat, up to
    ``HEARTBEAT_S`` before the kill (hours of GPU, in a long epoch). Its heartbeat file is added
    to ``run_files``. A phase a resume carried is in the records already, under the same attempt and
    seq (as is one written since the heartbeat: the heartbeat of a run still training), and counts
    once. A heartbeat torn, edited or named for another run is left out: the records stand."""
    directories: dict[str, list[Path]] = {}  # run -> the directories holding its heartbeat
    for beat in beats:
        run = run_id if run_id is not None else _run_of_heartbeat(beat)
        # Its name is its run's (any session's, any rank's part): a copy renamed after another run
        # is not that run's heartbeat.
        if run is not None and beat in {path for path, _ in heartbeat_files(run, [beat.parent])}:
            if beat.parent not in directories.setdefault(run, []):
                directories[run].append(beat.parent)
    written = ranks_written(records)
    added: list[Record] = []
    for run, places in directories.items():
        mine = heartbeat_records(run, places, not_held=written)
        if not mine or not all(_summable(r) for r in mine):
            continue
        for record in sorted(mine, key=lambda r: (r.attempt, r.seq)):
            record.carried = True
            added.append(record)
        holders = run_files.setdefault(run, [])
        holders += [path for path, _ in heartbeat_files(run, places) if path not in holders]
    return added


def _run_of_heartbeat(path: Path) -> str | None:
    """The run id a heartbeat names, or None where it cannot be read (being replaced, torn, not ours)."""
    try:
        run = json.loads(path.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def _summable(record: Record) -> bool:
    """Every field a report sums is a finite number (an edited heartbeat may hold null or NaN)."""
    return all(isinstance(value := getattr(record, name), (int, float)) and math.isfinite(value)
               for name in SUMMED_FIELDS)


def unfinished_runs(records: Sequence[Record], run_files: dict[str, list[Path]], summaries: dict[str, dict]) -> set[str]:
    """Runs whose last attempt has no write-up beside their records: no energy-summary.json of
    theirs, or only an earlier attempt's. A run that ends, or fails with an exception or Ctrl-C,
    writes one, so the run's process was killed outright after its last record (SIGKILL, the
    out-of-memory killer, a preemption; a plain SIGTERM too, outside Lightning, whose handler
    turns it into an exception), or it is still training. Its records then read
    like a run that ended well: a sweep's trial killed in epoch 2 of 3 was "a complete 2-epoch
    training", pooled with the finished ones. Only records in their own file (``energy-records.jsonl``)
    are judged: a copy under another name has no summary beside it to look for."""
    last_attempt: dict[str, int] = {}
    for r in records:
        last_attempt[r.run_id] = max(r.attempt, last_attempt.get(r.run_id, 0))
    unfinished = set()
    for run, files in run_files.items():
        # (Or its heartbeat, which is there as its records file is: beside the summary it looks for.)
        if not any(f.name == RECORDS_FILE or _is_heartbeat(f) for f in files):
            continue
        summary = summaries.get(run)
        attempts = summary.get("attempts") if summary is not None else None
        if summary is None or (isinstance(attempts, int) and attempts <= last_attempt[run]):
            unfinished.add(run)
    return unfinished


def _is_heartbeat(path: Path) -> bool:
    return fnmatch.fnmatchcase(path.name, HEARTBEAT_GLOB)


def _summaries_beside(run_files: dict[str, list[Path]]) -> dict[str, dict]:
    """Each run's summary in a directory holding its records: ``energy-summary.json`` (the latest
    run's there) or the copy kept under the run's id once another run wrote there; one small file
    read per directory and run."""
    from greencallbacks.summaries import SUMMARY_FILE, kept_summary_path

    read: dict[Path, dict | None] = {}
    found: dict[str, dict] = {}
    unreadable: list[str] = []
    for run, files in run_files.items():
        for directory in dict.fromkeys(f.parent for f in files):
            for path in (directory / SUMMARY_FILE, kept_summary_path(directory / SUMMARY_FILE, run)):
                if path not in read:
                    try:
                        # utf-8-sig: a summary saved again by an editor that adds a BOM reads as records do
                        read[path] = json.loads(path.read_text(encoding="utf-8-sig"))
                        if not isinstance(read[path], dict) or not isinstance(read[path].get("run_id"), str):
                            read[path] = None
                            unreadable.append(f"{path} (JSON, but not an energy summary: no run_id)")
                    except FileNotFoundError:
                        read[path] = None
                    except (OSError, ValueError) as error:
                        # Written whole (write_json_atomic), so this is a damaged or forbidden file, not
                        # one being written: said, as the report then calls its run killed outright.
                        read[path] = None
                        why = error.strerror if isinstance(error, OSError) and error.strerror else f"not JSON: {error}"
                        unreadable.append(f"{path} ({why})")
                summary = read[path]
                if not isinstance(summary, dict) or summary.get("run_id") != run:
                    continue
                energy = summary.get("energy_kwh")
                if isinstance(energy, (int, float)) and not isinstance(energy, bool) and math.isfinite(energy):
                    if run not in found or energy > found[run]["energy_kwh"]:
                        found[run] = summary
    if unreadable:
        warnings.warn(f"could not read {', '.join(unreadable)}: the runs whose records are beside "
                      f"{'it' if len(unreadable) == 1 else 'them'} are reported without that write-up, as if "
                      "killed outright", stacklevel=3)
    return found


def _refuse_nulls(file: Path, records: Sequence[Record]) -> None:
    for record in records:
        missing = [name for name in SUMMED_FIELDS if getattr(record, name) is None]
        if missing:
            raise ValueError(f"{file}:{_line_of(file, record.run_id, record.seq)}: field {missing[0]!r} is null "
                             "(not a number); this record cannot be summed")


def _line_of(file: Path, run_id: str, seq: int) -> int | str:
    """The line of a record in its file (read again only on this error path)."""
    return next(iter(_lines_of(file, run_id, seq)), "?")


def _lines_of(file: Path, run_id: str, seq: int, attempt: int | None = None) -> list[int]:
    """The lines of ``file`` holding record ``seq`` of ``run_id`` (of ``attempt`` where given),
    read again only on error paths."""
    numbers = []
    for number, line in enumerate(file_lines(file.read_text(encoding="utf-8-sig")), start=1):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if (isinstance(data, dict) and data.get("run_id") == run_id and data.get("seq") == seq
                and (attempt is None or data.get("attempt", 0) == attempt)):
            numbers.append(number)
    return numbers


def describe_runs(loaded: Loaded) -> list[str]:
    """One line per run: its id, framework, training epochs (or the phases of one that trained
    nothing, as the report's heading says them), and where its records are."""
    from greencallbacks.report.grouping import configuration, training_text  # here: report imports this module

    lines = []
    records = by_run(loaded.records)
    for run, files in loaded.run_files.items():
        mine = records.get(run, [])
        attempts = len({r.attempt for r in mine})
        framework = next((r.framework for r in mine if r.framework), "unknown framework")
        where = ", ".join(dict.fromkeys(str(f.parent) for f in files))
        lines.append(f"{printable(run)}: {framework}, {training_text(configuration(mine) if mine else {'epochs': 0})}"
                     + (f" over {attempts} attempts" if attempts > 1 else "")
                     + (", no write-up (killed, or still training)" if run in loaded.unfinished else "") + f", in {where}")
    return lines
