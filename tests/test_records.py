import json
import math
import os
import re
import threading
import warnings

import pytest

from greencallbacks import json_files, record_file_io, record_writer
from greencallbacks import records as records_module
from greencallbacks.records import RECORDS_FILE, SCHEMA, Record, RecordWriter, read_records
from tests.fakes import disk as tests_disk
from tests.fakes.disk import script_fsync


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


def test_write_puts_the_line_in_the_file_at_once_and_fsyncs_it_off_the_training_thread(tmp_path, monkeypatch):
    """The record is in the file when ``write`` returns (a killed process keeps it); the fsync
    runs on the writer's thread, a write soon after starts none (the thread's wake-up would take
    the GIL from training again), and ``close`` returns only once the last line is on disk."""
    release = threading.Event()
    synced = []  # (thread, file size when fsync was called)
    real_fsync = os.fsync

    def slow_fsync(fd):
        release.wait(10)
        synced.append((threading.current_thread().name, os.fstat(fd).st_size))
        real_fsync(fd)

    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, slow_fsync)
    # Another test's writer, not yet collected, may still hold an idle fsync thread: not this one's.
    others = {t for t in threading.enumerate() if t.name.startswith("greencallbacks-fsync")}
    writer = RecordWriter(path)
    assert writer.write(make_record(0))  # returns although the fsync is held back
    assert writer.write(make_record(1))
    assert [r.seq for r in read_records(path)] == [0, 1]
    assert synced == []
    release.set()
    assert writer.close()
    # One background fsync (the second write, soon after, started none); close syncs on its own thread
    # whatever it did not cover, depending on when its thread began.
    assert synced[0][0].startswith("greencallbacks-fsync")
    assert sum(name.startswith("greencallbacks-fsync") for name, _ in synced) == 1
    assert synced[-1][1] == path.stat().st_size  # the last fsync covered every line
    assert not [t for t in threading.enumerate() if t.name.startswith("greencallbacks-fsync") and t not in others]


def test_phase_ends_within_the_sync_interval_share_one_background_fsync(tmp_path, monkeypatch):
    """One background fsync per ``SYNC_INTERVAL_S`` however many phases end in it; a write after
    the interval starts the next, which covers the lines written in between."""
    now = [1000.0]
    monkeypatch.setattr(record_writer.time, "monotonic", lambda: now[0])
    synced = []  # (thread, bytes in the file when fsync returned)
    first_done = threading.Event()
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        synced.append((threading.current_thread().name, os.fstat(fd).st_size))
        first_done.set()

    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, fsync)
    writer = RecordWriter(path)
    for seq in range(5):
        writer.write(make_record(seq))
        now[0] += records_module.SYNC_INTERVAL_S / 10
    assert first_done.wait(10)  # the first write's fsync, before the interval passes
    assert len(synced) == 1
    now[0] += records_module.SYNC_INTERVAL_S
    writer.write(make_record(5))
    assert writer.close() and [r.seq for r in read_records(path)] == list(range(6))
    # Two background fsyncs; the second covered every line, so close had none left to sync.
    assert len(synced) == 2 and all(name.startswith("greencallbacks-fsync") for name, _ in synced)
    assert synced[-1][1] == path.stat().st_size


def test_a_failed_fsync_rewrites_the_lines_it_covered_once(tmp_path, monkeypatch):
    """After a failed fsync the kernel may have dropped the pages (zeros on disk): the next write
    writes the unsynced lines again where they were, so each record is in the file exactly once."""
    real_fsync = os.fsync
    failures = [OSError(5, "Input/output error")]

    def flaky_fsync(fd):
        if failures:
            size = path.stat().st_size
            path.write_bytes(b"\0" * size)  # what a failed write-back can leave: the lines' bytes gone
            raise failures.pop()
        real_fsync(fd)

    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, flaky_fsync)
    writer = RecordWriter(path)
    with pytest.warns(UserWarning, match="Input/output error") as caught:
        writer.write(make_record(0))
        writer.close()  # waits for the failed fsync, then rewrites and syncs in the foreground
    assert not [w for w in caught if "lost" in str(w.message)]  # in place: nothing was lost
    assert [r.seq for r in read_records(path)] == [0]
    writer.write(make_record(1))
    assert writer.close()
    assert [r.seq for r in read_records(path)] == [0, 1]
    assert b"\0" not in path.read_bytes()


def shared_file(path):
    """The (run, seq) of each record in ``path``, in order; any warning of the reader fails the test."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [f"{r.run_id}{r.seq}" for r in read_records(path)]


def full_disk_once(monkeypatch, after, short):
    """The next ``os.write`` of the records module (on this thread) finds the disk full after
    ``after`` bytes: it says so with a short count and ENOSPC at the next call (``short``, what the
    kernel does), or with ENOSPC at once, the part written unsaid."""
    import errno

    real, calls = os.write, []

    def write(fd, data):
        if len(calls) > 1 or threading.current_thread() is not threading.main_thread():
            return real(fd, data)
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = real(fd, bytes(data[:after]))
        if short:
            return part
        calls.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module.os, "write", write)


@pytest.mark.parametrize(("short", "locking"), [(True, True), (False, True), (True, False)],
                         ids=["short count", "error after a part", "short count, no flock"])
def test_a_failed_write_takes_back_only_its_own_part_of_a_shared_file(tmp_path, monkeypatch, short, locking):
    """Two writers append to one file (two callbacks in one fit, a sweep's processes): A's write
    failing on a full disk cut the file back to where A last wrote, and B's record after it was
    gone without a word (read back: A0 A1 B1)."""
    if not locking:
        monkeypatch.setattr(record_file_io, "fcntl", None)  # a file system without flock
    path = tmp_path / RECORDS_FILE
    a, b = RecordWriter(path), RecordWriter(path)
    a.write(make_record(0, run_id="A"))
    b.write(make_record(0, run_id="B"))
    full_disk_once(monkeypatch, after=40, short=short)
    with pytest.warns(UserWarning, match="No space left on device"):
        assert not a.write(make_record(1, run_id="A"))
    assert shared_file(path) == ["A0", "B0"]  # A's part taken back, B's record kept
    assert a.flush() and b.write(make_record(1, run_id="B"))
    assert shared_file(path) == ["A0", "B0", "A1", "B1"]
    assert a.close() and b.close()


def test_a_writer_appending_while_another_write_fails_waits_and_keeps_its_line(tmp_path, monkeypatch):
    """Between A's part going in and A taking it back, B appends: the take-back cut B's line
    with A's part. The writers of one file hold its lock around write and take-back: B waits."""
    path = tmp_path / RECORDS_FILE
    a, b = RecordWriter(path), RecordWriter(path)
    a.write(make_record(0, run_id="A"))
    b.write(make_record(0, run_id="B"))
    real = os.write
    other = threading.Thread(target=b.write, args=(make_record(1, run_id="B"),))

    def write(fd, data):
        if threading.current_thread() is not threading.main_thread():
            return real(fd, data)
        import errno

        real(fd, bytes(data[:40]))
        other.start()  # B's next record comes now
        other.join(0.2)  # it waits for A's lock (or, unlocked, went in right after A's part)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module.os, "write", write)
    with pytest.warns(UserWarning, match="No space left on device"):
        assert not a.write(make_record(1, run_id="A"))
    monkeypatch.setattr(records_module.os, "write", real)
    other.join()
    assert a.flush()
    assert shared_file(path) == ["A0", "B0", "B1", "A1"]


@pytest.mark.skipif(record_file_io.fcntl is None, reason="no flock here")
def test_a_lock_held_too_long_by_another_writer_does_not_hold_training(tmp_path, monkeypatch):
    """A stuck process (or a network file system's lock server) holding the file's lock: the write
    waits LOCK_WAIT_S once, goes in unserialised, and later writes no longer wait."""
    path = tmp_path / RECORDS_FILE
    monkeypatch.setattr(record_file_io, "LOCK_WAIT_S", 0.02)
    slept = []
    monkeypatch.setattr(record_file_io.time, "sleep", lambda s: slept.append(s))
    writer = RecordWriter(path)
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        record_file_io.fcntl.flock(holder, record_file_io.fcntl.LOCK_EX)
        assert writer.write(make_record(0, run_id="A"))
        waits = len(slept)
        assert waits > 0
        assert writer.write(make_record(1, run_id="A"))
        assert len(slept) == waits
    finally:
        os.close(holder)
    assert shared_file(path) == ["A0", "A1"]


@pytest.mark.parametrize("dropped", [False, True], ids=["pages kept", "pages dropped"])
def test_a_failed_fsync_rewrites_its_lines_in_place_and_keeps_another_writers(tmp_path, monkeypatch, dropped):
    """A failed fsync cut the file back to where the writer's last good fsync ended, and with it
    every line another writer appended since. Its own lines are written again where they are: the
    kernel may have dropped them (zeros) or kept them in its cache (written again all the same,
    or no later fsync would write them)."""
    path = tmp_path / RECORDS_FILE
    real_fsync, failures = os.fsync, [OSError(5, "Input/output error")]

    def flaky_fsync(fd):
        if failures:
            if dropped:
                a_line = len(path.read_bytes())
                with open(path, "r+b") as handle:
                    handle.write(b"\0" * a_line)
            raise failures.pop()
        real_fsync(fd)

    script_fsync(monkeypatch, records_module, path, flaky_fsync)
    a, b = RecordWriter(path), RecordWriter(path)
    with pytest.warns(UserWarning, match="Input/output error"):
        a.write(make_record(0, run_id="A"))
        a._syncer.shutdown(wait=True)  # A's fsync failed
    rewritten = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(records_module.os, "pwrite", lambda fd, data, at: rewritten.append(at) or real_pwrite(fd, data, at))
    b.write(make_record(0, run_id="B"))
    assert a.write(make_record(1, run_id="A"))
    assert shared_file(path) == ["A0", "B0", "A1"]  # B0 was cut, with A0 written again after it
    assert rewritten == [0]  # A0, where it was
    assert a.close() and b.close()
    assert shared_file(path) == ["A0", "B0", "A1"]


def tamper(path, how):
    """What a person or a script can do to a records file while the run goes on."""
    import shutil

    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")  # `: > file`
    elif how == "replaced":  # an editor's save, `sed -i`, `head -1 f > g && mv g f`: its first line only
        first = path.read_bytes().split(b"\n")[0] + b"\n"
        (path.parent / "new").write_bytes(first)
        os.replace(path.parent / "new", path)
    elif how == "directory deleted":
        shutil.rmtree(path.parent)


@pytest.mark.parametrize("how", ["deleted", "emptied", "replaced", "directory deleted"])
def test_a_records_file_lost_mid_run_gets_the_writers_records_again_said_once(tmp_path, monkeypatch, how):
    """The records file deleted, emptied or replaced while the run went on (or its directory
    deleted): the writer reopened the path at its next write and went on, and the records before
    were lost without a word (2.13e-7 kWh in the records of a run of 5.64e-7). The next write finds
    it (one read of the writer's last line), says so once naming the file, and writes them again:
    the file holds each record of the run, once."""
    from greencallbacks.meter import EnergyWarning

    path = tmp_path / "out" / RECORDS_FILE
    writer = RecordWriter(path)
    writer.write(make_record(0))
    writer.write(make_record(1))
    tamper(path, how)
    with pytest.warns(EnergyWarning) as caught:
        assert writer.write(make_record(2))
        tamper(path, how)
        assert writer.write(make_record(3))
    (said,) = [str(w.message) for w in caught]
    assert str(path) in said and f"lost {1 if how == 'replaced' else 2} energy record(s)" in said
    assert shared_file(path) == ["run10", "run11", "run12", "run13"]
    assert writer.close()


def test_a_file_emptied_and_refilled_by_another_writer_is_found(tmp_path, monkeypatch):
    """Emptied, then given lines again by another writer before this one wrote: the file is as
    long as before, the same file; only this writer's last line, not where it put it, tells."""
    path = tmp_path / RECORDS_FILE
    a, b = RecordWriter(path), RecordWriter(path)
    a.write(make_record(0, run_id="A"))
    b.write(make_record(0, run_id="B"))
    b.write(make_record(1, run_id="B"))
    path.write_bytes(b"")
    with pytest.warns(UserWarning, match="lost 2 energy record"):
        b.write(make_record(2, run_id="B"))  # B's three lines again: longer than A's end
    with pytest.warns(UserWarning, match="lost 1 energy record"):
        a.write(make_record(1, run_id="A"))
    assert sorted(shared_file(path)) == ["A0", "A1", "B0", "B1", "B2"]


def test_writers_taking_turns_in_one_file_check_no_more_than_their_last_line(tmp_path, monkeypatch):
    """Other writers' lines after this one's are no loss: a write reads back one line of its own,
    never the whole file, and writes nothing again."""
    path = tmp_path / RECORDS_FILE
    a, b = RecordWriter(path), RecordWriter(path)
    read = []
    real_pread = os.pread
    monkeypatch.setattr(records_module.os, "pread", lambda fd, n, at: read.append(n) or real_pread(fd, n, at))
    for seq in range(5):
        a.write(make_record(seq, run_id="A"))
        b.write(make_record(seq, run_id="B"))
    line = len(json.dumps(make_record(0, run_id="A").to_dict())) + 1
    # Its last line, and the file's last byte when another writer wrote after it: two small reads
    assert max(read) <= line and len(read) <= 2 * 10
    assert shared_file(path) == [f"{run}{seq}" for seq in range(5) for run in "AB"]


@pytest.mark.parametrize("reached", [True, False], ids=["lines reached the file", "lines did not"])
def test_a_write_whose_close_fails_is_checked_and_written_once(tmp_path, monkeypatch, reached):
    """A network file system reports a write that did not reach the server at close: the lines may
    or may not be in the file. The next write checks, and the file holds each record once."""
    path = tmp_path / RECORDS_FILE
    writer = RecordWriter(path)
    writer.write(make_record(0))
    writer.close()  # its fsync, on the worker thread, closes a descriptor too: not the one to fail
    real_close, failing = os.close, [True]

    def close(fd):
        if failing and tests_disk.is_descriptor_of(fd, path):
            failing.clear()
            if not reached:
                os.ftruncate(fd, len(path.read_bytes().split(b"\n")[0]) + 1)
            real_close(fd)
            raise OSError(122, "Disk quota exceeded")
        real_close(fd)

    monkeypatch.setattr(records_module.os, "close", close)
    with pytest.warns(UserWarning, match="Disk quota exceeded"):
        assert not writer.write(make_record(1))
    assert writer.write(make_record(2))
    assert writer.close()
    assert shared_file(path) == ["run10", "run11", "run12"]


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


def test_a_write_at_interpreter_exit_is_fsynced_in_place(tmp_path, monkeypatch):
    """At exit (a Keras fit that raised is closed by an atexit hook) no thread can be started:
    the fsync then happens in the calling thread instead of failing the write."""
    from concurrent.futures import ThreadPoolExecutor

    def refuse(self, *args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", refuse)
    synced = []
    real_fsync = os.fsync
    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, lambda fd: (synced.append(threading.current_thread().name), real_fsync(fd)))
    writer = RecordWriter(path)
    assert writer.write(make_record(0))
    assert synced == [threading.current_thread().name]
    assert [r.seq for r in read_records(path)] == [0]


def test_json_file_replacer_writes_off_the_callers_thread_in_order_from_a_snapshot(tmp_path, monkeypatch):
    """The Keras resume state, every epoch: made into text on the caller's thread, written by the
    worker, the file ending with the last data given; ``write_now`` comes after the queued ones."""
    writers: list[str] = []
    gate = threading.Event()
    replace = json_files._replace_file

    def slow_replace(path, text):
        gate.wait(5)  # hold the worker until everything is queued
        writers.append(threading.current_thread().name)
        return replace(path, text)

    monkeypatch.setattr(json_files, "_replace_file", slow_replace)
    path = tmp_path / "state.json"
    file = json_files.JsonFileReplacer(path)
    data = {"epoch": 0, "totals": {"train": 1.0}}
    for epoch in range(5):
        data["epoch"] = epoch
        data["totals"]["train"] = float(epoch)
        file.write_soon(data)
    data["totals"]["train"] = -1.0  # changed after the last write_soon: not what the file gets
    assert not path.exists()  # nothing written on this thread
    gate.set()
    file.close()
    assert json.loads(path.read_text()) == {"epoch": 4, "totals": {"train": 4.0}}
    assert len(writers) == 5 and all(name.startswith("greencallbacks-state") for name in writers)

    file.write_soon({"epoch": 5})
    assert file.write_now({"epoch": 6}) is True
    assert json.loads(path.read_text()) == {"epoch": 6}
    assert writers[-1] == threading.current_thread().name


def test_json_file_replacer_writes_in_place_when_no_thread_can_start(tmp_path, monkeypatch):
    """At interpreter exit (an abandoned Keras fit's last state) no new thread may start."""
    file = json_files.JsonFileReplacer(tmp_path / "state.json")

    class Exiting:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(json_files, "ThreadPoolExecutor", Exiting)
    file.write_soon({"epoch": 3})
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 3}


def test_a_backlog_of_unsynced_lines_starts_an_fsync_before_the_interval(tmp_path, monkeypatch):
    """Thousands of phase ends within the interval start an fsync as soon as ``SYNC_BACKLOG_BYTES``
    wait for one, so what a machine crash could take stays bounded."""
    monkeypatch.setattr(record_writer.time, "monotonic", lambda: 1000.0)  # the interval never passes
    monkeypatch.setattr(record_writer, "SYNC_BACKLOG_BYTES", 4096)
    synced = []
    real_fsync = os.fsync
    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, lambda fd: (real_fsync(fd), synced.append(fd)))
    writer = RecordWriter(path)
    for seq in range(40):  # ~1 kB a line
        writer.write(make_record(seq))
    writer._syncer.shutdown(wait=True)
    # However late the fsync thread ran, what waits for one stays near the limit (without it:
    # every line after the first fsync, ~39 kB).
    assert synced and writer._bytes - writer._synced_bytes < 2 * 4096
    assert writer.close() and [r.seq for r in read_records(path)] == list(range(40))


def test_a_file_of_one_malformed_line_is_no_records_file_but_a_lone_torn_record_is_torn(tmp_path):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"hello": [1, 2\n')
    with pytest.raises(ValueError, match=r"garbage.jsonl:1: not a greencallbacks record"):
        read_records(garbage)
    torn = tmp_path / "torn.jsonl"  # killed while writing its first record
    torn.write_text('{"schema": "greencallbacks.record/1", "run_id": "run1", "pha')
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_records(torn) == []


def test_a_binary_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"binary.jsonl:1: not a greencallbacks records file \(not UTF-8 text"):
        read_records(path)


def test_a_line_that_is_not_utf8_is_named_by_its_line(tmp_path):
    """A records file whose third line holds a byte that is no UTF-8 (an editor's Latin-1 save):
    the error named the byte offset alone, where every other bad line is named by its line."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"zone": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:3: not a greencallbacks records file \(not UTF-8 text: "
                                         r"invalid continuation byte at byte 31\)"):
        read_records(path)


@pytest.mark.parametrize("field, text", [("energy_kwh", "NaN"), ("co2eq_g", "Infinity"), ("duration_s", "-Infinity"),
                                         ("energy_j_per_sample", "1e999")])
def test_nan_and_infinities_in_a_file_are_refused_like_null(tmp_path, field, text):
    """JSON has neither; the writer writes them as null. Another writer's NaN would make every sum NaN."""
    line = json.dumps(make_record(0).to_dict())
    line = line.replace(f'"{field}": ', f'"{field}": {text}, "was": ', 1)
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:1: .*field '{field}' is -?(nan|inf), not a finite number"):
        read_records(path)


def test_a_record_missing_a_field_or_a_component_name_says_which(tmp_path):
    data = make_record(0).to_dict()
    del data["run_id"]
    with pytest.raises(TypeError, match=r"field 'run_id' is missing"):
        Record.from_dict(data)
    data = dict(make_record(0).to_dict(), components=[{"kind": "gpu", "method": "counter", "energy_j": 1.0}])
    with pytest.raises(TypeError, match=r"component 0 of field 'components' needs a string 'name'"):
        Record.from_dict(data)


@pytest.mark.parametrize("field, value", [
    ("energy_kwh", -1.0), ("it_energy_kwh", -0.5), ("co2eq_g", -3.0), ("duration_s", -2.0), ("samples", -5),
    ("tokens", -1), ("uncertainty_kwh", -1e-6), ("energy_j_per_sample", -1.0), ("co2eq_g_per_sample", -1.0),
    ("embodied_co2eq_g", -0.1), ("intensity_gco2eq_per_kwh", -100.0),
])
def test_a_negative_quantity_in_a_file_is_refused_naming_line_and_field(tmp_path, field, value):
    """A report would sum it: "the training (2 epochs of -5 samples) used -995 Wh"."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + json.dumps(dict(make_record(1).to_dict(), **{field: value})) + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:2: not a greencallbacks record: field '{field}' is {value!r}, not a number >= 0"):
        read_records(path)


def test_a_negative_component_energy_in_a_file_is_refused(tmp_path):
    data = make_record(0).to_dict()
    data["components"][0]["energy_j"] = -10.0
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: .*component 0 of field 'components': energy_j is -10.0, not a number >= 0"):
        read_records(path)


def test_zero_is_no_negative_quantity(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0, energy_kwh=0.0, samples=0, tokens=0, duration_s=-0.0).to_dict()) + "\n")
    assert read_records(path)[0].energy_kwh == 0.0


@pytest.mark.parametrize("line, kind", [("[1, 2, 3]", "an array"), ("null", "null"), ('"a string"', "a string"),
                                        ("42", "a number"), ("true", "true or false")])
def test_a_line_that_is_no_json_object_is_refused_naming_the_line(tmp_path, line, kind):
    """Not "'list' object has no attribute 'get'": where, and what the line is. Last or not, it is not torn."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:2: not a greencallbacks record: not a JSON object \(got {kind}\)$"):
        read_records(path)


def test_close_does_not_wait_for_a_stalled_disk_beyond_its_bound(tmp_path, monkeypatch):
    """The end of a run (and a Ctrl-C held over it) must not hang on an fsync that does not return:
    the lines are in the file when close returns, their sync goes on in the background."""
    release, started = threading.Event(), threading.Event()

    def stalled(fd):
        started.set()
        release.wait(30)

    path = tmp_path / "r.jsonl"
    script_fsync(monkeypatch, records_module, path, stalled)
    monkeypatch.setattr(record_writer, "CLOSE_SYNC_WAIT_S", 0.05, raising=False)
    writer = RecordWriter(path)
    writer.write(make_record(0))
    writer.write(make_record(1))
    try:
        with pytest.warns(UserWarning, match="has not confirmed the energy records"):
            assert writer.close() is False
        assert started.is_set() and [r.seq for r in read_records(path)] == [0, 1]  # in the file already
    finally:
        release.set()


def cut_last_line_in_half(path):
    """As a process killed while writing its last record leaves the file."""
    text = path.read_text()
    start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: start + (len(text) - start) // 2])


def test_a_write_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    """A resume (or any run) appending to a file whose writer was killed mid-line: its records
    used to join the torn bytes, and the file could not be read at all."""
    path = tmp_path / RECORDS_FILE
    RecordWriter(path).write(make_record(0), make_record(1))
    cut_last_line_in_half(path)
    torn = path.read_text()
    writer = RecordWriter(path)  # the resume: its next attempt
    writer.write(make_record(2, attempt=1))
    writer.write(make_record(3, attempt=1))
    assert writer.close()
    text = path.read_text()
    assert text.startswith(torn)  # nothing cut off: another process may append to the file too
    assert len(text.splitlines()) == 4  # one new line before the first record, none after
    with pytest.warns(UserWarning, match=r"records.jsonl:2: skipped a torn line \("):
        assert [r.seq for r in read_records(path)] == [0, 2, 3]


def test_a_writer_that_already_wrote_starts_a_line_of_its_own_after_another_writers_tear(tmp_path):
    """Two runs share one file (a sweep's processes). Run B is killed having written a whole
    record but its newline: run A, which had written before, appended its next record onto that
    line, and the joined line refused the whole file (every trial's report failed)."""
    path = tmp_path / RECORDS_FILE
    writer_a = RecordWriter(path)
    writer_a.write(make_record(0, run_id="a"))
    RecordWriter(path).write(make_record(0, run_id="b"))
    path.write_bytes(path.read_bytes()[:-1])  # B killed before its newline went in
    writer_a.write(make_record(1, run_id="a"))
    writer_a.write(make_record(2, run_id="a"))  # the file ends with A's own line: no read needed
    assert writer_a.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert [r.seq for r in read_records(path, run_id="a")] == [0, 1, 2]
    assert [(r.run_id, r.seq) for r in read_records(path)] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]


def test_a_torn_line_inside_one_attempt_is_damage_and_refused(tmp_path):
    """The writer never leaves a torn line and goes on with the same attempt: a record cut short
    between two of one attempt's is damage to the file. It was skipped with a warning only, and
    every report was silently low (0.182 mWh for 0.226 written)."""
    path = tmp_path / RECORDS_FILE
    lines = [json.dumps(make_record(seq).to_dict()) for seq in range(4)]
    lines[1] = lines[1][:120]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl:2: a torn line between two records of attempt 0 of "
                                         r"run 'run1'.*a record is lost"):
        read_records(path)
    bad = []  # a run reading its own history back is told, and goes on
    assert [r.seq for r in read_records(path, on_bad_line=bad.append)] == [0, 2, 3]
    assert len(bad) == 1 and "records.jsonl:2: a torn line between" in bad[0]
    # Written again whole after it (a writer that could not take back what a full disk cut short):
    # nothing is lost, the torn line is skipped as before.
    lines.insert(2, json.dumps(make_record(1).to_dict()))
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"records.jsonl:2: skipped a torn line"):
        assert [r.seq for r in read_records(path)] == [0, 1, 2, 3]
    # From the command line: one line naming the damage, no report of what is left.
    from greencallbacks.cli import main

    lines.pop(2)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as raised:
        main(["report", str(tmp_path)])
    assert raised.value.code == 2


def test_one_runs_records_are_read_without_judging_the_other_runs_lines(tmp_path):
    """A resume in a sweep's shared directory decoded every run's records for its own (9 s for
    100k records of other runs): with ``run_id`` only that run's lines are decoded, and a torn
    line is still judged by its neighbours, other runs' included."""
    path = tmp_path / RECORDS_FILE
    mine = [json.dumps(make_record(seq).to_dict()) for seq in range(4)]
    other = [json.dumps(make_record(seq, run_id="other").to_dict()) for seq in range(3)]
    bad_other = other[2].replace('"phase": "train"', '"phase": "bogus"')  # refused when decoded
    path.write_text("\n".join([mine[0], other[0], mine[1], other[1], bad_other, mine[2][:120], other[2], mine[3]]) + "\n")
    with pytest.raises(ValueError, match="phase"):
        read_records(path)
    # Mine at 5 sits between another run's records: a writer killed mid-line, skipped with a warning.
    with pytest.warns(UserWarning, match=r"records.jsonl:6: skipped a torn line"):
        assert [r.seq for r in read_records(path, run_id="run1")] == [0, 1, 3]
    # Torn between two of one attempt's records, with other runs' lines around them: damage.
    path.write_text("\n".join([other[0], mine[0], mine[1][:120], mine[2], other[1]]) + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl:3: a torn line between two records of attempt 0"):
        read_records(path, run_id="run1")
    # Another run's torn line between mine is that run's business.
    path.write_text("\n".join([mine[0], other[0][:120], mine[1]]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.seq for r in read_records(path, run_id="run1")] == [0, 1]


def test_a_record_after_another_runs_torn_one_on_its_line_is_read_for_its_run(tmp_path):
    """An older writer appended a resume's record to the torn line a kill left: the line's first
    run id is the torn record's, and reading the second run alone dropped its record (17 % of it)."""
    path = tmp_path / RECORDS_FILE
    mine = [json.dumps(make_record(seq).to_dict()) for seq in range(3)]
    torn = json.dumps(make_record(0, run_id="other").to_dict())[:120]
    path.write_text("\n".join([mine[0], torn + mine[1], mine[2]]) + "\n")
    with pytest.warns(UserWarning, match="skipped a torn record before the one that follows it"):
        assert [r.seq for r in read_records(path, run_id="run1")] == [0, 1, 2]


def test_a_torn_line_of_another_run_between_one_attempts_records_is_that_runs_kill(tmp_path):
    """Two processes append to one file: B's writer killed mid-line while A goes on. Read whole,
    the line was taken for damage to A's attempt and the file refused; read by run, it was not."""
    path = tmp_path / RECORDS_FILE
    mine = [json.dumps(make_record(seq).to_dict()) for seq in range(3)]
    torn = json.dumps(make_record(4, run_id="other").to_dict())[:120]
    path.write_text("\n".join([mine[0], mine[1], torn, mine[2]]) + "\n")
    with pytest.warns(UserWarning, match=r"records.jsonl:3: skipped a torn line"):
        assert [r.seq for r in read_records(path)] == [0, 1, 2]


def test_a_write_into_a_file_ending_in_a_newline_adds_no_blank_line(tmp_path):
    path = tmp_path / RECORDS_FILE
    RecordWriter(path).write(make_record(0))
    RecordWriter(path).write(make_record(1))
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [0, 1]


def test_every_cut_of_a_record_in_the_middle_of_a_file_is_a_torn_line(tmp_path):
    """Wherever the writer was killed (in a string, a \\u escape, a number, true, false or null),
    the line is torn: skipped with a warning naming it, and the records around it read."""
    line = json.dumps(make_record(1, run_id="ré-\U0001f642", energy_kwh=1.5e-7, tokens=None, partial=True,
                                  samples_counted=False).to_dict())
    path = tmp_path / "r.jsonl"
    first, last = json.dumps(make_record(0).to_dict()), json.dumps(make_record(2, attempt=1).to_dict())  # a resume
    for cut in range(1, len(line)):
        path.write_text(f"{first}\n{line[:cut]}\n{last}\n")
        with pytest.warns(UserWarning, match=r"r.jsonl:2: skipped a torn line"):
            assert [r.seq for r in read_records(path)] == [0, 2], line[:cut]


@pytest.mark.parametrize("line", [
    '{"hello": [1, 2',  # cut short, but no record
    '{"schema": "greencallbacks.record/1", "run_id": x',  # wrong before its end
    '{"schema": "greencallbacks.record/1", "seq": 1.5.',
    '{"schema": "greencallbacks.record/1", "partial": tx',
    '{"schema": "greencallbacks.record/1", "run_id": "a\\x"',
    '{"schema": "greencallbacks.record/1", "run_id": "a"}}',
])
def test_a_bad_line_that_is_no_torn_record_is_refused_wherever_it_is(tmp_path, line):
    path = tmp_path / "r.jsonl"
    for text in (f"{line}\n{json.dumps(make_record(0).to_dict())}\n", f"{json.dumps(make_record(0).to_dict())}\n{line}\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match=r"r.jsonl:\d: not a greencallbacks record"):
            read_records(path)


def test_a_record_an_older_writer_appended_to_a_torn_one_is_read(tmp_path):
    """Files written before a write began on a new line: the torn record and the next on one line.
    Every record begins with its schema, and JSON escapes a quote inside a string, so the second
    record begins where the line holds that beginning again."""
    whole = json.dumps(make_record(1).to_dict())
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + whole[:300] + whole + "\n")
    with pytest.warns(UserWarning, match=r"r.jsonl:2: skipped a torn record before the one that follows it"):
        assert read_records(path) == [make_record(0), make_record(1)]


def test_a_resume_after_a_run_killed_mid_line_reads_the_whole_run(tmp_path):
    """The tracker's resume reads the run's earlier records through ``read_records`` too, and skips
    a file it cannot read: a tear anywhere in it must cost the torn record alone."""
    from greencallbacks.carbon import Carbon
    from greencallbacks.ledger import read_run_records
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    def attempt(state=None):
        clock = FakeClock()
        meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                      wall_clock=lambda: clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=400.0, pue=1.5), output_dir=tmp_path)
        tracker.start(meter)
        if state is not None:
            tracker.load_state_dict(state)
        for epoch in range(2):
            tracker.begin("train", epoch)
            clock.advance(10.0)
            tracker.end("train")
        return tracker

    first = attempt()
    state = first.state_dict()
    first.finish()
    before = read_records(tmp_path)
    cut_last_line_in_half(tmp_path / RECORDS_FILE)  # killed while writing its last record
    second = attempt(state)
    second.finish()
    with pytest.warns(UserWarning, match=rf"records.jsonl:{len(before)}: skipped a torn line"):
        records = read_records(tmp_path)
    assert records[: len(before) - 1] == before[:-1]
    assert [(r.attempt, r.epoch) for r in records[len(before) - 1:] if r.phase == "train"] == [(1, 0), (1, 1)]
    assert read_run_records(first.run_id, [tmp_path]) == records  # what a third attempt resumes from


@pytest.mark.parametrize("field, value, valid", [
    ("phase", "bogus", "one of 'train', 'validation', 'test', 'predict', 'other'"),
    ("epoch", -1, "null or an integer >= 0"),
    ("attempt", -1, "an integer >= 0"),
    ("seq", -1, "an integer >= 0"),
    ("ranks", 0, "an integer >= 1"),
    ("hosts", 0, "an integer >= 1"),
    ("pue", 0.99, r"a number from 1 to 3 \(facility energy / IT energy\)"),
    ("pue", 5.0, r"a number from 1 to 3 \(facility energy / IT energy\)"),
    ("intensity_gco2eq_per_kwh", 1e6, "a number of gCO2eq/kWh up to 2000"),
    ("run_id", "", "a non-empty string"),
    ("run_id", "  ", "a non-empty string"),
])
def test_a_value_no_writer_puts_in_a_record_is_refused_naming_line_field_and_what_is_valid(tmp_path, field, value, valid):
    """A phase the report has no row for dropped that epoch from its table, and the phases no
    longer summed to the run; the others are as impossible."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + json.dumps(dict(make_record(1).to_dict(), **{field: value})) + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:2: not a greencallbacks record: field '{field}' is {value!r}, not {valid}$"):
        read_records(path)


def test_every_value_a_writer_puts_in_a_record_is_read(tmp_path):
    from greencallbacks.carbon.intensity import MAX_INTENSITY_G_PER_KWH
    from greencallbacks.carbon.pue import MAX_PUE, MIN_PUE

    records = [make_record(seq, phase=phase, epoch=None if phase == "predict" else 0, pue=MIN_PUE, ranks=1, hosts=1)
               for seq, phase in enumerate(records_module.PHASES)]
    seq = len(records)
    # the bounds, and a mean of parts at the bounds a rounding error past them
    records += [make_record(seq, pue=MAX_PUE, intensity_gco2eq_per_kwh=MAX_INTENSITY_G_PER_KWH),
                make_record(seq + 1, pue=math.nextafter(MAX_PUE, 4), intensity_gco2eq_per_kwh=math.nextafter(2000, 3000))]
    records.append(make_record(len(records), pue=None))  # a NaN written as null: refused where summed
    path = tmp_path / "r.jsonl"
    RecordWriter(path).write(*records)
    assert read_records(path) == records


@pytest.mark.parametrize("zeros", [1, 37, 4096])
def test_a_whole_record_followed_by_zeros_is_read_and_a_later_run_appends_after_it(tmp_path, zeros):
    """A crash can leave zeros from a whole record's newline on: the next writer begins a line of
    its own after them, and the whole file was refused ('Extra data')."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + json.dumps(make_record(1).to_dict()) + "\x00" * zeros)
    RecordWriter(path).write(make_record(2))
    with pytest.warns(UserWarning, match=r"r.jsonl:2: skipped the zeros after a whole record"):
        assert [r.seq for r in read_records(path)] == [0, 1, 2]


def test_zeros_where_a_crash_lost_the_end_of_the_file_are_a_torn_line(tmp_path):
    """After a machine crash a file can end in zeros where its last writes had not reached the disk."""
    whole = json.dumps(make_record(1).to_dict())
    path = tmp_path / "r.jsonl"
    for lost in ("\x00" * 600, whole[:300] + "\x00" * 300):
        resumed = json.dumps(make_record(2, attempt=1).to_dict())  # after the machine's restart
        path.write_text(json.dumps(make_record(0).to_dict()) + "\n" + lost + "\n" + resumed + "\n")
        with pytest.warns(UserWarning, match=r"r.jsonl:2: skipped a torn line"):
            assert [r.seq for r in read_records(path)] == [0, 2]


def test_a_long_run_keeps_a_flat_memory_of_the_lines_it_wrote(tmp_path, monkeypatch):
    """The writer kept every line it wrote (to give a lost file its records back): ~2 kB more per
    record, 49 MiB after 8,000 epochs. Synced lines past LINES_KEPT_BYTES are forgotten; a file lost
    afterwards gets the kept ones back and the warning says how many before them may be gone."""
    monkeypatch.setattr(record_writer, "LINES_KEPT_BYTES", 4096)
    path = tmp_path / RECORDS_FILE
    writer = RecordWriter(path)
    for seq in range(200):
        writer.write(make_record(seq))
        if seq % 50 == 49:
            assert writer.flush() and writer._sync(writer._generation)
    assert writer._bytes <= 4096 + 50 * max(len(line) for line in writer._lines)
    assert len(writer._lines) < 200 and writer._forgotten == 200 - len(writer._lines)
    assert [r.seq for r in read_records(tmp_path)] == list(range(200))
    kept = len(writer._lines)
    path.unlink()
    with pytest.warns(UserWarning, match=rf"lost {kept} energy record\(s\).*perhaps the {200 - kept} before them"):
        writer.write(make_record(200))
    assert [r.seq for r in read_records(tmp_path)] == list(range(200 - kept, 201))
    assert writer.close()


@pytest.mark.parametrize("field, value, valid", [
    ("energy_kwh", 1e308, r"a number of kWh up to 3e\+13 \(more than the world's electricity in a year\)"),
    ("it_energy_kwh", 3.1e13, r"a number of kWh up to 3e\+13"),
    ("uncertainty_kwh", 1e20, r"a number of kWh up to 3e\+13"),
    ("energy_j_per_sample", 1e300, r"a number of J up to 1.08e\+20"),
    ("co2eq_g", 1e308, r"a number of g up to 6e\+16 \(more than the world's emissions in a year\)"),
    ("co2eq_g_per_sample", 1e17, r"a number of g up to 6e\+16"),
    ("embodied_co2eq_g", 1e300, r"a number of g up to 6e\+16"),
    ("duration_s", 1e300, r"a number of seconds up to 3.16e\+09 \(more than a century\)"),
    ("paused_s", 4e9, r"a number of seconds up to 3.16e\+09"),
])
def test_a_quantity_past_any_phase_is_refused_naming_line_and_field(tmp_path, field, value, valid):
    """Each finite, their sums were not: a report of records at 1e308 kWh said "n/a kWh" and
    "nan gCO2eq/kWh" with exit 0, and whatif printed inf."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(0).to_dict()) + "\n"
                    + json.dumps(dict(make_record(1).to_dict(), **{field: value})) + "\n")
    said = rf"r.jsonl:2: not a greencallbacks record: field '{field}' is {re.escape(repr(value))}, not {valid}"
    with pytest.raises(ValueError, match=said):
        read_records(path)


def test_a_component_energy_past_any_phase_is_refused(tmp_path):
    data = make_record(0).to_dict()
    data["components"][0]["energy_j"] = 1e308
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: .*component 0 of field 'components': energy_j is 1e\+308, not a "
                                         r"number of J up to 1.08e\+20"):
        read_records(path)


def test_the_largest_quantities_of_a_phase_are_read(tmp_path):
    """The bounds themselves are possible, and their sums over many records stay finite."""
    import math

    most = dict(energy_kwh=3e13, it_energy_kwh=2e13, co2eq_g=6e16, duration_s=100 * 365.25 * 86400, paused_s=1.0)
    records = [make_record(seq, **most) for seq in range(3)]
    path = tmp_path / "r.jsonl"
    RecordWriter(path).write(*records)
    read = read_records(path)
    assert read == records and math.isfinite(sum(r.energy_kwh for r in read) * 1e6)
