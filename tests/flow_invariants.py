"""The ledger's invariants (shared/DESIGN.md section 2a), checked on what a real run left on disk.

Shared by the randomized flow tests of the three adapters: they drive the real framework through
random sequences (fit, crash anywhere, resume from any checkpoint, repeat, evaluate, predict)
and call these after every step.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from greencallbacks import watch
from greencallbacks.ledger import read_run_records
from greencallbacks.records import Record
from greencallbacks.tracker import SUMMARY_FILE

REL = 1e-9


def meter_threads() -> list[str]:
    watch.settle()  # a call that raised is written up by the watch thread within ~0.2 s
    return [t.name for t in threading.enumerate() if t.name == "greencallbacks-meter" and t.is_alive()]


def run_records(run_id: str, directories) -> list[Record]:
    return read_run_records(run_id, {Path(d) for d in directories})


def check_run(run_id: str, directories, *, power_w: float | None = None, context: str = "") -> list[Record]:
    """Invariants 1-3 and 5 for one run; returns its records (in file order)."""
    records = run_records(run_id, directories)
    where = f" [{context}]"
    assert records, "no records for run " + run_id + where
    seqs = [(r.seq, r.attempt) for r in records]
    homes = {Path(d) for d in directories if (Path(d) / "energy-records.jsonl").exists()
             and any(r.run_id == run_id for r in run_records(run_id, [d]))}
    assert len(homes) == 1, f"run {run_id} has records in {sorted(map(str, homes))}: one run, one ledger" + where
    assert len({s for s, _ in seqs}) == len(seqs), "a seq billed twice" + where
    (home,) = homes
    summary_path = home / SUMMARY_FILE
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary["run_id"] == run_id:
            total_j = sum(r.energy_j for r in records)
            assert summary["energy_kwh"] * 3.6e6 == pytest.approx(total_j, rel=REL), "summary != records" + where
            for phase, totals in summary["phases"].items():
                mine = [r for r in records if r.phase == phase]
                assert totals["energy_j"] == pytest.approx(sum(r.energy_j for r in mine), rel=REL), phase + where
                assert totals["count"] == len(mine), phase + where
                counted = [r.tokens for r in mine if r.tokens is not None]  # None: no record counted any
                assert totals.get("tokens") == (sum(counted) if counted else None), phase + " tokens" + where
    attempts = sorted({r.attempt for r in records})
    assert attempts == list(range(len(attempts))), f"attempts {attempts}" + where
    if power_w is not None:  # a scripted constant-power sensor: energy follows time, nothing doubled
        # The meter stamps its clock just before it reads the sensor's; on a loaded machine the
        # thread can be paused between the two for tens of ms. Consecutive windows share their
        # boundaries, so that jitter cancels over a run: the run is checked tightly, each record
        # loosely (a window billed twice or lost, not clock jitter). The exact proof that every
        # joule is billed once is the core state machine's (test_ledger_machine.py, fake clock).
        for r in records:
            assert r.it_energy_kwh * 3.6e6 == pytest.approx(power_w * r.duration_s, rel=0.05, abs=power_w * 0.1), repr(r) + where
        total_j = sum(r.it_energy_kwh for r in records) * 3.6e6
        meter_sessions = len({r.attempt for r in records}) + 3  # each attempt, and inference calls after it
        assert total_j == pytest.approx(power_w * sum(r.duration_s for r in records), abs=power_w * 0.1 * meter_sessions), where
    for r in records:
        if not r.samples_counted or r.samples == 0:
            assert r.energy_j_per_sample is None, repr(r) + where
        # A batch counted into a gap means a phase the adapter failed to begin (Lightning 2.5+
        # resuming an epoch without on_train_epoch_start did that).
        assert r.phase != "other" or r.samples == 0, "samples billed to `other`: " + repr(r) + where
    return records


def report_total_matches(directory, run_id: str, kwh: float) -> None:
    """``greencallbacks report --format json`` of ``directory`` gives the run ``kwh`` in all."""
    import contextlib
    import io

    from greencallbacks.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(directory), "--format", "json"]) == 0
    run_totals = {run: totals for config in json.loads(out.getvalue())["configurations"]
                  for run, totals in config["run_totals"].items()}
    assert run_totals[run_id]["energy_kwh"] == pytest.approx(kwh, rel=1e-9)


def logged_total_matches(records: list[Record], logged_kwh: float, rel: float, context: str = "") -> None:
    """The last logged ``energy_kwh_total`` is what the run's records added up to at its last training end."""
    last_train = max(i for i, r in enumerate(records) if r.phase == "train" and not r.partial)
    expected = sum(r.energy_kwh for r in records[: last_train + 1])
    assert logged_kwh == pytest.approx(expected, rel=rel), f"logged total [{context}]"
