import json

import pytest

from greencallbacks.records import RECORDS_FILE, SCHEMA, Record, RecordWriter, read_records


def make_record(seq=0, phase="train", energy_kwh=0.001, **overrides):
    values = dict(
        run_id="run1", phase=phase, epoch=0, seq=seq, start_time="2026-11-23T10:00:00.000+00:00",
        duration_s=2.0, samples=100, it_energy_kwh=energy_kwh / 1.5, energy_kwh=energy_kwh,
        co2eq_g=energy_kwh * 400, intensity_gco2eq_per_kwh=400.0, intensity_source="user", pue=1.5,
        energy_j_per_sample=energy_kwh * 3.6e6 / 100, co2eq_g_per_sample=energy_kwh * 4,
        components=[{"name": "gpu0", "kind": "gpu", "method": "counter", "energy_j": energy_kwh * 2.4e6}],
    )
    values.update(overrides)
    return Record(**values)


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / RECORDS_FILE
    writer = RecordWriter(path)
    records = [make_record(0), make_record(1, phase="validation", energy_kwh=0.0002)]
    for record in records:
        assert writer.write(record)
    assert read_records(tmp_path) == records  # a directory resolves to its records file
    first_line = json.loads(path.read_text().splitlines()[0])
    assert next(iter(first_line)) == "schema" and first_line["schema"] == SCHEMA
    for required in ("run_id", "phase", "epoch", "start_time", "duration_s", "samples", "it_energy_kwh",
                     "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "intensity_source", "pue",
                     "energy_j_per_sample", "components"):
        assert required in first_line


def test_each_write_is_fsynced(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    writer = RecordWriter(tmp_path / "r.jsonl")
    writer.write(make_record(0))
    writer.write(make_record(1))
    assert len(synced) == 2


def test_torn_last_line_is_skipped_with_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    RecordWriter(path).write(make_record(0))
    with open(path, "a") as handle:
        handle.write('{"schema": "greencallbacks.record/1", "run_id": "run1", "pha')  # killed mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        records = read_records(path)
    assert [r.seq for r in records] == [0]


def test_a_bad_line_in_the_middle_is_an_error_with_its_line_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("not json\n" + json.dumps(make_record(0).to_dict()) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1"):
        read_records(path)


def test_unwritable_directory_keeps_records_pending_and_warns_once(tmp_path):
    from greencallbacks.meter import EnergyWarning

    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the output directory should be")
    writer = RecordWriter(blocker / "r.jsonl")
    with pytest.warns(EnergyWarning) as caught:
        assert not writer.write(make_record(0))
        assert not writer.write(make_record(1))
    assert len(caught) == 1
    assert [r.seq for r in writer.pending] == [0, 1]
    blocker.unlink()  # the directory becomes writable again: nothing was lost
    assert writer.write(make_record(2))
    assert [r.seq for r in read_records(blocker / "r.jsonl")] == [0, 1, 2]


def test_non_finite_values_are_written_as_null_not_invalid_json(tmp_path):
    writer = RecordWriter(tmp_path / "r.jsonl")
    assert writer.write(make_record(0, co2eq_g=float("nan"), energy_j_per_sample=float("inf")))
    line = (tmp_path / "r.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record.co2eq_g is None and record.energy_j_per_sample is None
