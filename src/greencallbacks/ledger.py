"""The ledger of one run: every phase's record counted once, and how the run goes on after a resume.

The tracker hands it each record (already summed over ranks) as its phase ends; the ledger keeps
the per-phase totals, the run's next ``seq``, which attempt is running, and what each epoch cost
(for the prediction). Nothing else changes a total.

A resume does not trust the totals saved in the checkpoint: it re-derives them from the durable
records of the run id. Those hold every phase the earlier attempts closed, including one that was
open when the checkpoint was written and everything a crashed attempt measured after it; each
is counted once because each is one line. The checkpoint's totals are only the fallback when the
records file is gone (a checkpoint copied to another machine); the phases it saved open that no
record holds (their attempt was killed) are written by the tracker as records (``resume._carry``).

What an epoch cost (for the prediction) is what the latest attempt that trained it billed to it:
an attempt that only evaluates, tests or predicts from a checkpoint redoes no epoch, though its
records carry the checkpoint's; nor does a call after the training in the process that trained
(``Record.later_call``), counted in the totals alone. The epochs left are counted from the
checkpoint resumed from, which may be older than the last epoch the records hold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from greencallbacks.records import PHASES, RECORDS_FILE, Record, combine_ranks, read_records, record_key, run_ids_in_file
from greencallbacks.units import J_PER_KWH


@dataclass
class PhaseTotals:
    energy_j: float = 0.0  # after PUE
    it_energy_j: float = 0.0
    co2eq_g: float = 0.0
    samples: int = 0
    duration_s: float = 0.0
    count: int = 0
    # Embodied CO2eq (apart from co2eq_g) of the records that carry it; ``embodied_count`` of them.
    embodied_co2eq_g: float = 0.0
    embodied_co2eq_g_low: float = 0.0
    embodied_co2eq_g_high: float = 0.0
    embodied_count: int = 0
    # The tokens of the records that counted them (HF's num_input_tokens_seen, a token_counter);
    # None while none has: a phase that counts no tokens has no count of 0.
    tokens: int | None = None
    # False where a record's tokens are a count of part of its batches (``tokens_counted: false``):
    # ``tokens`` is then too few for the phase's energy, as the records and the report say.
    tokens_counted: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The totals as the summary and a checkpoint write them: ``tokens_counted`` only when false,
        as records write it (a state read by a release without the field still loads)."""
        values = dict(vars(self))
        if values["tokens_counted"]:
            del values["tokens_counted"]
        return values

    def add(self, record: Record) -> None:
        self.energy_j += record.energy_kwh * J_PER_KWH
        self.it_energy_j += record.it_energy_kwh * J_PER_KWH
        self.co2eq_g += record.co2eq_g
        self.samples += record.samples
        self.duration_s += record.duration_s
        self.count += 1
        if record.embodied_co2eq_g is not None:
            self.embodied_co2eq_g += record.embodied_co2eq_g
            self.embodied_co2eq_g_low += record.embodied_co2eq_g_low or record.embodied_co2eq_g
            self.embodied_co2eq_g_high += record.embodied_co2eq_g_high or record.embodied_co2eq_g
            self.embodied_count += 1
        if record.tokens is not None:
            self.tokens = (self.tokens or 0) + record.tokens
        if not record.tokens_counted:
            self.tokens_counted = False

    def add_totals(self, other: "PhaseTotals") -> None:
        """Add ``other``'s totals to these (a field that one of them lacks, ``tokens`` None, is the other's)."""
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if name == "tokens_counted":  # counted whole where both were
                self.tokens_counted = mine and value
                continue
            setattr(self, name, value if mine is None else mine if value is None else mine + value)


@dataclass
class EpochCost:
    """Everything billed to one epoch by its latest attempt: training, its validation, the gap after."""

    attempt: int
    warmup: bool  # the first epoch of an attempt: compilation, caches, or only the rest of an epoch
    kwh: float = 0.0
    kwh_at_train_end: float | None = None  # billed when its training phase ended; None: never ended
    complete: bool = False  # a later epoch has finished, so this one's tail (gap, HF evaluation) is over too
    step_at_train_end: int | None = None  # the framework's global step when its training phase ended
    seconds: float = 0.0  # the wall time billed to it (its records' durations)
    seconds_at_train_end: float | None = None
    paused_kwh: float = 0.0  # carbon-aware pauses in its gap: no cost of training an epoch

    @property
    def finished(self) -> bool:
        return self.kwh_at_train_end is not None


class EpochStats:
    """Running sums over the complete epochs after warm-up (what the prediction needs), so that a
    prediction at every epoch end costs O(1) however long the run."""

    def __init__(self) -> None:
        self.n = 0
        self.cost = [0.0, 0.0]  # sum, sum of squares of whole-epoch kWh
        self.tail = [0.0, 0.0]  # the same for the part billed after the training phase ended
        self.seconds = [0.0, 0.0]  # sums of whole-epoch wall time and of its tail's

    def add(self, epoch: EpochCost, sign: int = 1) -> None:
        if epoch.warmup or not epoch.complete:
            return
        # A pause is billed to the gap before the epoch it delays: priced into every epoch left, it
        # went on after the delay allowance ran out (a budget stopped a run on that forecast).
        kwh = epoch.kwh - epoch.paused_kwh
        tail = kwh - epoch.kwh_at_train_end
        self.n += sign
        self.seconds[0] += sign * epoch.seconds
        self.seconds[1] += sign * (epoch.seconds - (epoch.seconds_at_train_end or 0.0))
        for sums, value in ((self.cost, kwh), (self.tail, tail)):
            sums[0] += sign * value
            sums[1] += sign * value * value

    def state(self) -> list[float]:
        return [self.n, *self.cost, *self.tail, *self.seconds]

    @classmethod
    def from_state(cls, saved: list[float]) -> "EpochStats":
        stats = cls()
        stats.n = int(saved[0])
        stats.cost, stats.tail, stats.seconds = [list(map(float, saved[i:i + 2])) for i in (1, 3, 5)]
        return stats


class Ledger:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.attempt = 0
        self.next_seq = 0
        self.totals: dict[str, PhaseTotals] = {p: PhaseTotals() for p in PHASES}
        # The same, for the records that carry a metric prefix (HF's eval_<data set>), by (phase, prefix).
        self.prefix_totals: dict[tuple[str, str], PhaseTotals] = {}
        self.epochs: dict[int, EpochCost] = {}
        # The epoch whose training ended last (-1: none yet): the framework runs the epochs after
        # it, whatever epoch the run began at or went back to on a resume.
        self.last_finished_epoch = -1
        self.stats = EpochStats()
        self._attempts_with_epochs: set[int] = set()
        self._finished_not_complete: set[int] = set()
        self._latest_epoch = -1  # the highest epoch with a record (the one in progress, maybe)
        # By epoch: what a later attempt billed to an epoch an earlier attempt billed, before (or
        # without) training it (see ``_cost_of``).
        self._held: dict[int, EpochCost] = {}
        self.last: dict[str, Record] = {}
        self.paused_s = 0.0  # carbon-aware pauses, every attempt's (a resume must not pause them again)
        # When the training phase of ``last["train"]`` ended (unix s; None where its start cannot be
        # read), and the (start, seconds) of the phases billed to one (attempt, epoch) since: the
        # latest such run of them only (see ``_note_training_end``), so it stays one epoch's.
        self.last_train_end_unix: float | None = None
        self._before_training_end: tuple[tuple[int, int] | None, list[tuple[float | None, float]]] = (None, [])

    def take_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    @property
    def energy_j(self) -> float:
        return sum(t.energy_j for t in self.totals.values())

    @property
    def co2eq_g(self) -> float:
        return sum(t.co2eq_g for t in self.totals.values())

    @property
    def embodied(self) -> tuple[float, float, float] | None:
        """The run's embodied CO2eq (g, low, high); None when no record carries one."""
        if not any(t.embodied_count for t in self.totals.values()):
            return None
        return tuple(sum(getattr(t, f) for t in self.totals.values())
                     for f in ("embodied_co2eq_g", "embodied_co2eq_g_low", "embodied_co2eq_g_high"))  # type: ignore[return-value]

    def prefix_total(self, prefix: str) -> PhaseTotals:
        """Every record of ``prefix``, whatever its phase.

        The rule for a logged ``<prefix>_energy_kwh_total`` (and ``co2eq_g_total``): the running
        total of every record logged under that same name. A framework's metric name carries the
        prefix alone, and one prefix can name loops of several phases (HF: ``evaluate(ds,
        metric_key_prefix="test")`` beside ``predict(ds)``, whose default is ``test``; a
        standalone ``evaluate()`` after training continues ``eval`` as a validation). Records
        without a prefix (Lightning's, Keras's: one prefix per phase) total by phase instead.
        """
        total = PhaseTotals()
        for (_, own_prefix), totals in self.prefix_totals.items():
            if own_prefix == prefix:
                total.add_totals(totals)
        return total

    def add(self, record: Record) -> None:
        """Count one phase's record (the only way totals grow)."""
        _count(record, self.totals, self.prefix_totals)
        self.last[record.phase] = record
        self.paused_s += record.paused_s or 0.0
        self._note_training_end(record)
        if record.epoch is None or record.later_call:
            # A call after the training (HF's evaluate() after train(), at the last epoch) trains no
            # epoch: billed to that epoch, its cost was priced into every epoch a resume trains.
            return
        cost = self._cost_of(record)
        if cost is None:
            return  # redone by a later attempt: in the totals, not in what an epoch costs
        cost.kwh += record.energy_kwh
        cost.seconds += record.duration_s
        if record.paused_s:  # the gap's energy is the pause's for the share of its time it paused
            cost.paused_kwh += record.energy_kwh * min(1.0, record.paused_s / record.duration_s) if record.duration_s > 0 else record.energy_kwh
        if record.phase == "train" and not record.partial and not cost.finished:
            cost.kwh_at_train_end = cost.kwh
            cost.step_at_train_end = record.step
            cost.seconds_at_train_end = cost.seconds
            self.last_finished_epoch = record.epoch
            self._complete_before(record.epoch)
            self._finished_not_complete.add(record.epoch)

    def _note_training_end(self, record: Record) -> None:
        """Where a training phase ended: its start, its own seconds and those of the phases inside it
        (an epoch's validations: Lightning's and Keras' at the epoch's end, a mid-epoch one), which
        are billed apart and written before it ends. Its start plus its duration alone fell short of
        its end by that time: the CO2eq prediction priced the energy to come at an intensity series
        from a moment that much too early."""
        if record.epoch is None or record.later_call:
            return
        key = (record.attempt, record.epoch)
        start = _unix_s(record.start_time)
        held_for, held = self._before_training_end
        if record.phase != "train":
            # The phases inside a training phase are written just before it, with its epoch: a gap
            # after it (its epoch too) is replaced by the next epoch's.
            if held_for != key:
                held = []
                self._before_training_end = (key, held)
            held.append((start, record.duration_s))
            return
        inside = held if held_for == key else []
        self._before_training_end = (None, [])
        self.last_train_end_unix = None if start is None else (
            start + record.duration_s + sum(seconds for began, seconds in inside if began is not None and began >= start))

    def _cost_of(self, record: Record) -> EpochCost | None:
        """The cost ``record`` is billed to; None where a later attempt has redone its epoch.

        A later attempt redoes an epoch an earlier one billed only once it trains it. Until its
        training record of that epoch, what it bills there (an evaluation inside the epoch, written
        before the training phase that holds it ends) is held apart: an attempt that only evaluates
        or tests that epoch's checkpoint (``evaluate()`` after a resume with no epoch left to train,
        ``validate(ckpt_path=...)`` in a later session) never trains it, and the earlier attempt's
        cost, the one that trained it, still describes the epoch.
        """
        epoch = record.epoch
        cost = self.epochs.get(epoch)
        if cost is not None and record.attempt <= cost.attempt:
            return cost if record.attempt == cost.attempt else None
        held = self._held.get(epoch)
        if held is not None and held.attempt > record.attempt:
            return None
        if cost is not None and record.phase != "train":
            if held is None or held.attempt < record.attempt:  # the attempt that held it never trained it
                held = self._held[epoch] = EpochCost(record.attempt, warmup=False)
            return held
        if cost is not None:  # a later attempt redoes this epoch: its earlier cost no longer describes it
            self._forget(epoch, cost)
        first_of_attempt = record.attempt not in self._attempts_with_epochs
        self._attempts_with_epochs.add(record.attempt)
        cost = self.epochs[epoch] = EpochCost(record.attempt, warmup=first_of_attempt)
        held = self._held.pop(epoch, None)
        if held is not None and held.attempt == record.attempt:  # billed before its training record
            cost.kwh, cost.seconds, cost.paused_kwh = held.kwh, held.seconds, held.paused_kwh
        self._latest_epoch = max(self._latest_epoch, epoch)
        return cost

    def held_kwh(self, attempt: int, after_epoch: int) -> float:
        """kWh ``attempt`` billed to epochs after ``after_epoch`` that it has not trained yet, held
        apart from those epochs' costs (see ``_cost_of``); pauses excluded."""
        return sum(c.kwh - c.paused_kwh for e, c in self._held.items() if e > after_epoch and c.attempt == attempt)

    @property
    def steps_per_epoch(self) -> int | None:
        """Global steps between the last two training ends, None until two adjacent epochs finished.

        The step is the framework's running count, so this holds after a mid-epoch resume too
        (that epoch ends at the same step as it would have).
        """
        last, before = self.epochs.get(self.last_finished_epoch), self.epochs.get(self.last_finished_epoch - 1)
        if last is None or before is None or last.step_at_train_end is None or before.step_at_train_end is None:
            return None
        steps = last.step_at_train_end - before.step_at_train_end
        return steps if steps > 0 else None

    @property
    def last_finished_step(self) -> int | None:
        last = self.epochs.get(self.last_finished_epoch)
        return None if last is None else last.step_at_train_end

    def _complete_before(self, epoch: int) -> None:
        for earlier in [e for e in self._finished_not_complete if e < epoch]:
            self._finished_not_complete.discard(earlier)
            self.epochs[earlier].complete = True
            self.stats.add(self.epochs[earlier])

    def _forget(self, epoch: int, cost: EpochCost) -> None:
        self.stats.add(cost, sign=-1)
        self._finished_not_complete.discard(epoch)

    # ------------------------------------------------------------------- checkpoint / resume
    def state_dict(self, open_records: Iterable[Record] = ()) -> dict[str, Any]:
        """What a checkpoint carries. ``open_records``: the phases open now, as measured so far;
        they go into the saved totals only, the fallback for a resume without the records file."""
        totals = {p: PhaseTotals(**vars(t)) for p, t in self.totals.items()}
        prefix_totals = {key: PhaseTotals(**vars(t)) for key, t in self.prefix_totals.items()}
        for record in open_records:
            _count(record, totals, prefix_totals)
        # Not every epoch that ran: a checkpoint at each epoch end would grow with the run (a
        # 3000-epoch Keras fit spent 69 % of its time writing them). The prediction's sums over the
        # complete epochs, and the epochs a resume can still change: the last two finished (steps
        # per epoch), and any not complete yet.
        # Looked up, not searched: a scan of every epoch at each epoch end grew with the run too.
        wanted = {self.last_finished_epoch - 1, self.last_finished_epoch, self._latest_epoch, *self._finished_not_complete}
        recent = {e: self.epochs[e] for e in sorted(wanted) if e in self.epochs}
        return {
            "run_id": self.run_id,
            "seq": self.next_seq,
            "attempt": self.attempt,
            "totals": {p: t.as_dict() for p, t in totals.items()},
            "prefix_totals": [[phase, prefix, t.as_dict()] for (phase, prefix), t in prefix_totals.items()],
            "epochs": {str(e): [c.attempt, c.warmup, c.kwh, c.kwh_at_train_end, c.complete, c.step_at_train_end, c.seconds, c.seconds_at_train_end, c.paused_kwh] for e, c in recent.items()},
            "epoch_stats": self.stats.state(),
        }

    def resume(self, state: dict[str, Any], records: list[Record]) -> None:
        """Continue the run of ``state`` as a new attempt, from its ``records`` when there are any."""
        self.__init__(str(state.get("run_id", self.run_id)))
        saved_seq, saved_attempt = int(state.get("seq", 0)), int(state.get("attempt", 0))
        if records:
            # As they were written (``records`` in file order: each attempt's in the order its phases
            # ended), not by ``seq``, which a phase takes as it begins: a validation inside a training
            # epoch ends, and is billed to the epoch, before that epoch's training phase does, as it
            # was when measured. The phases a killed attempt left open (carried) were its last.
            for record in each_phase_once(sorted(records, key=lambda r: (r.attempt, r.carried))):
                self.add(record)
            self.next_seq = max(saved_seq, max(r.seq for r in records) + 1)
            self.attempt = max(saved_attempt, max(r.attempt for r in records)) + 1
            at_checkpoint = self._last_finished_at(state)
            if at_checkpoint is not None and at_checkpoint < self.last_finished_epoch:
                # Resumed from an older checkpoint than the last epoch trained (a branch, or a
                # checkpoint every few epochs): the framework trains on from the checkpoint's epoch,
                # and the epochs left are counted from there, not from the records' last.
                self.last_finished_epoch = at_checkpoint
            return
        for phase, values in state.get("totals", {}).items():
            if phase in self.totals:
                self.totals[phase] = PhaseTotals(**values)
        for phase, prefix, values in state.get("prefix_totals", []):
            self.prefix_totals[(phase, prefix)] = PhaseTotals(**values)
        saved_stats = state.get("epoch_stats")  # None: a state that kept every epoch (before 2026-12-03)
        for epoch, saved in state.get("epochs", {}).items():
            cost = self.epochs[int(epoch)] = EpochCost(*saved)
            if saved_stats is None:
                self.stats.add(cost)
            if cost.finished and not cost.complete:
                self._finished_not_complete.add(int(epoch))
        if saved_stats is not None:
            self.stats = EpochStats.from_state(saved_stats)
        self._latest_epoch = max(self.epochs, default=-1)
        self.last_finished_epoch = max((e for e, c in self.epochs.items() if c.finished), default=-1)
        self.next_seq, self.attempt = saved_seq, saved_attempt + 1

    def _last_finished_at(self, state: dict[str, Any]) -> int | None:
        """The epoch whose training the framework had finished when ``state`` was saved; None where
        the state does not say (no epochs saved). An epoch whose training phase it saved open is
        finished where the records show that phase ending at the step the checkpoint was saved at:
        a checkpoint written as the epoch ends, before the tracker's epoch-end hook (Lightning's
        ``ModelCheckpoint`` at the validation end), which resumes after that epoch, not inside it."""
        saved = state.get("epochs")
        if not isinstance(saved, dict):
            return None
        finished = (int(e) for e, cost in saved.items() if isinstance(cost, (list, tuple)) and len(cost) > 3 and cost[3] is not None)
        last = max(finished, default=-1)
        for opened in state.get("open_records") or ():
            if isinstance(opened, dict) and opened.get("phase") == "train" and opened.get("epoch") == last + 1:
                ended = self.epochs.get(last + 1)
                if ended is not None and ended.attempt == opened.get("attempt") and ended.finished and (
                        ended.step_at_train_end is None or opened.get("step") in (None, ended.step_at_train_end)):
                    return last + 1  # (steps unknown: the records' own, no further back than one epoch)
        return last


def _count(record: Record, totals: dict[str, PhaseTotals], prefix_totals: dict[tuple[str, str], PhaseTotals]) -> None:
    """Add ``record`` to its phase's totals, and to its metric prefix's when it carries one."""
    totals[record.phase].add(record)
    if record.metric_prefix is not None:
        prefix_totals.setdefault((record.phase, record.metric_prefix), PhaseTotals()).add(record)


def read_run_records(run_id: str, directories: Iterable[Path | None]) -> list[Record]:
    """The records of ``run_id`` in these directories: the summed file and any rank's own file
    (ranks other than 0 write their unsummed records there when a run fails)."""
    return _records_in(directories, run_id)


def run_ids_in(directory: Path | None) -> set[str]:
    """The runs that have records in ``directory``: read for their ids alone at the start of a run
    given a ``run_id``."""
    if directory is None or not directory.is_dir():
        return set()
    return {run for path in directory.glob(RECORDS_FILE.replace(".jsonl", "*.jsonl")) for run in run_ids_in_file(path)}


def _records_in(directories: Iterable[Path | None], run_id: str) -> list[Record]:
    """Each record once: one read twice (a line appended again, a copied directory) was counted
    twice in the resumed totals, which then exceeded the records a report counts (once) and the
    report said records were missing."""
    seen: set[Path] = set()
    found: list[Record] = []
    kept: dict[tuple, Record] = {}
    for directory in directories:
        if directory is None or not directory.is_dir():
            continue
        for path in sorted(directory.glob(RECORDS_FILE.replace(".jsonl", "*.jsonl"))):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            bad: list[str] = []
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a torn line of a crashed attempt is expected
                    for record in read_records(path, on_bad_line=bad.append, run_id=run_id):
                        key = record_key(record, path)
                        if kept.get(key) == record:
                            continue  # a copy of one read already
                        kept.setdefault(key, record)
                        found.append(record)
            except (OSError, ValueError) as error:  # unreadable whole (not text): the report says more
                bad.append(str(error))
            if bad:
                # Said: the run's totals then stand on what could be read (or on its checkpoint's, when
                # none of its records could), which a summary would otherwise show as its records'.
                from greencallbacks.meter import warn

                more = f" (and {len(bad) - 1} more line(s))" if len(bad) > 1 else ""
                warn(f"greencallbacks: reading this run's records back, skipped {bad[0]}{more}; its totals "
                     "are from the records that could be read.")
    return found


def _unix_s(iso: str) -> float | None:
    """Unix seconds of a record's ``start_time``; None where it cannot be read."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def each_phase_once(records: Iterable[Record]) -> list[Record]:
    """``records`` with the ranks' parts of one phase (a failed multi-rank run's, one per rank's
    file: same run, attempt and seq) summed into one record, as a gather sums them (``combine_ranks``):
    the ranks ran it side by side, so it took its longest part's seconds, not their sum (a summary
    of 2 ranks said 0.098 s of training for 0.049), and it is one phase of the epoch's cost.

    The one rule for which records are parts of one phase: a resume's totals, the summary and the
    report's seconds (``wall_seconds``) count each phase once through it."""
    parts: dict[tuple[str, int, int], list[Record]] = {}
    for record in records:
        parts.setdefault((record.run_id, record.attempt, record.seq), []).append(record)
    return [group[0] if len(group) == 1 else combine_ranks([[part] for part in group])[0] for group in parts.values()]


def wall_seconds(records: Iterable[Record]) -> float:
    """The seconds ``records`` cover, each phase once (``each_phase_once``): 2 ranks' parts of one
    phase, 0.049 s each, took 0.049 s."""
    return sum(r.duration_s for r in each_phase_once(records))


def embodied_seconds(records: Iterable[Record]) -> float:
    """The seconds of the phases of ``records`` that carry an embodied figure, each phase once: one
    that rank 0 billed (the host's) and another rank did not (no device of its own with a figure) is
    covered whole, as its summed record says, not for its rank 0 part's seconds alone."""
    return sum(r.duration_s for r in each_phase_once(records) if r.embodied_co2eq_g is not None)
