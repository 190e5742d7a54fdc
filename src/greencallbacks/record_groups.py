"""What is worked out over several records: one phase's identity whatever file holds it
(``record_key``), each run's records (``by_run``), a run counted to its heartbeat
(``counted_to_heartbeat``), and one phase summed over ranks (``combine_ranks``) with its per-sample
values (``with_per_sample``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from greencallbacks.units import J_PER_KWH

if TYPE_CHECKING:
    from greencallbacks.records import Record


def record_key(record: Record, file: str | os.PathLike) -> tuple:
    """What one phase's record is, whatever file holds it: two records of one key with the same
    contents are one record read twice (a copied directory, a line appended again), counted once.

    Rank r's own records of a failed distributed run (``energy-records.rank<r>.jsonl``) share their
    seq with rank 0's in the summed file: they are parts of one phase, not copies.
    """
    rank = re.fullmatch(r"energy-records\.rank(\d+)\.jsonl", Path(file).name)
    return record.run_id, record.attempt, record.seq, int(rank.group(1)) if rank else None


def by_run(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Each run's records, runs in the order their first record appears: one pass, where a scan
    of all records per run made a report of a 1,000-run sweep quadratic (minutes)."""
    runs: dict[str, list[Record]] = {}
    for record in records:
        mine = runs.get(record.run_id)
        if mine is None:
            runs[record.run_id] = mine = []
        mine.append(record)
    return runs


def with_per_sample(record: Record) -> Record:
    """``record`` with its per-sample values, from its energy and samples (none where uncounted)."""
    if record.samples > 0 and record.samples_counted:
        record.energy_j_per_sample = record.energy_kwh * J_PER_KWH / record.samples
        record.co2eq_g_per_sample = record.co2eq_g / record.samples
    else:
        record.energy_j_per_sample = record.co2eq_g_per_sample = None
    return record


def counted_to_heartbeat(run_records: Sequence[Record]) -> bool:
    """Whether one run's last attempt has phases carried from its heartbeat (``runs.load`` reads
    them beside the records of a run killed outright): then it is counted up to that heartbeat."""
    last = max(r.attempt for r in run_records)
    return any(r.carried and r.attempt == last for r in run_records)


def combine_ranks(per_rank: list[list[Record]]) -> list[Record]:
    """Sum the same phase (same ``seq``) over ranks."""
    by_seq: dict[int, list[Record]] = {}
    for records in per_rank:
        for record in records:
            by_seq.setdefault(record.seq, []).append(record)
    combined = []
    for seq in sorted(by_seq):
        parts = by_seq[seq]
        first = parts[0]
        energy_kwh = sum(r.energy_kwh for r in parts)
        co2eq_g = sum(r.co2eq_g for r in parts)
        components = [c for r in parts for c in r.components]
        # Each rank bills its own devices (the host only where it is measured): a sum, like energy.
        embodied = [r for r in parts if r.embodied_co2eq_g is not None]
        record = replace(
            first,
            **{
                "start_time": min(r.start_time for r in parts),
                "duration_s": max(r.duration_s for r in parts),
                "samples": sum(r.samples for r in parts),
                "samples_counted": all(r.samples_counted for r in parts),
                "tokens": sum(r.tokens or 0 for r in parts) or None,
                # A rank whose count failed (HF's own count is rank 0's alone: another's None is no failure).
                "tokens_counted": all(r.tokens_counted for r in parts),
                "it_energy_kwh": sum(r.it_energy_kwh for r in parts),
                "energy_kwh": energy_kwh,
                "co2eq_g": co2eq_g,
                "intensity_gco2eq_per_kwh": co2eq_g / energy_kwh if energy_kwh > 0 else first.intensity_gco2eq_per_kwh,
                # Each rank prices its part with its own source: one whose live request failed (a
                # rate limit refusing the second of two requests made at once) priced its part at the
                # static fallback. Rank 0's label alone hid that part's source in the sum.
                "intensity_source": "; ".join(dict.fromkeys(r.intensity_source for r in parts)),
                "intensity_licence": "; ".join(dict.fromkeys(
                    term for r in parts for term in (r.intensity_licence or "").split("; ") if term)),
                "uncertainty_kwh": math.hypot(*(r.uncertainty_kwh for r in parts)),
                "components": components,
                "ranks": len(per_rank),
                "hosts": len({c.get("host") for c in components}) or 1,
                "partial": any(r.partial for r in parts),
                "embodied_co2eq_g": sum(r.embodied_co2eq_g for r in embodied) if embodied else None,
                "embodied_co2eq_g_low": sum(r.embodied_co2eq_g_low or 0.0 for r in embodied) if embodied else None,
                "embodied_co2eq_g_high": sum(r.embodied_co2eq_g_high or 0.0 for r in embodied) if embodied else None,
                "step": max((r.step for r in parts if r.step is not None), default=None),
                "paused_s": max((r.paused_s for r in parts if r.paused_s is not None), default=None),
            }
        )
        combined.append(with_per_sample(record))
    return combined
