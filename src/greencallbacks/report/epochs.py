"""Per-epoch rows (one per run, attempt and epoch), their status and label, and totals and tokens by phase."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from greencallbacks.ledger import wall_seconds
from greencallbacks.records import PHASES, Record
from greencallbacks.report.attempts import UNKNOWN, complete_training, inference_after_training, training_attempts
from greencallbacks.report.missing import _rank_part
from greencallbacks.units import J_PER_KWH


def methods_of(record: Record) -> str:
    """How each component was measured, e.g. ``gpu0:counter, cpu:estimated``; ``gpu0:stopped``
    where a failure left it uncounted (the record's note says since when)."""
    return ", ".join(f"{c['name']}:{'stopped' if _stopped(c) else c['method']}" for c in record.components)


def _stopped(component: dict) -> bool:
    return str(component.get("note", "")).startswith("stopped counting")


def is_estimated(record: Record) -> bool:
    return any(c.get("method") == "estimated" for c in record.components)


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
