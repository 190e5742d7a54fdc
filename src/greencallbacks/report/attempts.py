"""How a run's attempts stand to each other: what trained, what a crash cut short, what a resume redid."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

from greencallbacks.ledger import each_phase_once
from greencallbacks.records import Record, by_run


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
