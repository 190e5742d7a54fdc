"""A log root that cannot be read at all (another user's, mode 700) is said as unreadable, not as
holding no records: "no energy-records.jsonl under it (looked in every subdirectory)" denied them."""

from __future__ import annotations

import errno
import os

import pytest

from greencallbacks.cli import main
from greencallbacks.records import RecordWriter

from test_report import one_run


def write_run(directory):
    directory.mkdir(parents=True)
    writer = RecordWriter(directory / "energy-records.jsonl")
    for record in one_run():
        writer.write(record)


def exits(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    return raised.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["report"], ["lifecycle", "--inferences", "1"]])
def test_a_log_root_that_cannot_be_read_is_said_so(tmp_path, capsys, monkeypatch, command):
    locked = tmp_path / "logs"
    write_run(locked / "a")
    walk = os.walk

    def denied(top, *args, onerror=None, **kwargs):  # what os.walk does where the root's mode refuses this user
        if os.fspath(top) == str(locked):
            onerror(PermissionError(errno.EACCES, "Permission denied", str(locked)))
            return iter(())
        return walk(top, *args, onerror=onerror, **kwargs)

    monkeypatch.setattr("greencallbacks.runs.os.walk", denied)
    code, err = exits([command[0], str(locked), *command[1:]], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"could not read {locked} (Permission denied)" in err and "looked in every subdirectory" not in err


def test_a_log_root_of_mode_0_is_said_unreadable(tmp_path, capsys):
    locked = tmp_path / "logs"
    write_run(locked / "a")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user reads a directory whatever its mode (root)")
        code, err = exits(["report", str(locked)], capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2 and f"could not read {locked} (Permission denied)" in err


def test_an_empty_log_root_is_still_said_to_hold_no_records(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = exits(["report", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no energy-records.jsonl under" in err and "looked in every subdirectory" in err
