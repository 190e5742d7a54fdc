"""The command line on records a user may hand it: edited, joined or written by another version.

Whatever a records file holds, ``greencallbacks report`` prints a report or one line of error with
exit 2, never an internal error; and what it prints can be pasted into a paper as it is.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greencallbacks import report
from greencallbacks.cli import main
from greencallbacks.records import RECORDS_FILE, read_records
from tests.test_tracker import run_epochs, setup


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[dict]:
    """The records of a small run, as the JSON objects of its file."""
    directory = tmp_path_factory.mktemp("recorded")
    tracker, clock, _ = setup(directory, run_id="run-a")
    run_epochs(tracker, clock, epochs=2)
    return [json.loads(line) for line in (directory / RECORDS_FILE).read_text(encoding="utf-8").splitlines()]


def write(directory: Path, lines: list) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (directory / RECORDS_FILE).write_text(text, encoding="utf-8")
    return directory


def with_components(records: list[dict], **changes) -> list[dict]:
    """``records`` with every component's keys set as ``changes`` say."""
    return [{**r, "components": [{**c, **changes} for c in r["components"]]} for r in records]


def report_of(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(["report", *map(str, argv)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("key, value", [
    ("kind", None), ("kind", {}), ("kind", False), ("host", [{}]), ("host", None), ("note", 5), ("note", ["n"]),
    ("rank", "0"), ("rank", None), ("rank", 0.5), ("rank", -3),
    ("uncertainty_j", True), ("uncertainty_j", "1"), ("uncertainty_j", -5.0), ("uncertainty_j", 1e308),
    ("uncertainty_j", float("nan")),
])
@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_a_component_key_no_writer_puts_there_is_one_line_naming_it(tmp_path, capsys, recorded, key, value, fmt):
    """A component's kind, host, note, rank and uncertainty were taken as they came: a null kind
    stopped the report with an internal error (sorting None with strings), a list for a host too
    (unhashable), a true uncertainty counted as 1 J, a negative one as a positive one, 1e308 as
    "± n/a kWh", and a null kind was printed as "None" in the hardware table."""
    directory = write(tmp_path, with_components(recorded, **{key: value}))
    code, out, err = report_of(capsys, directory, "--format", fmt)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert f"{RECORDS_FILE}:1: not a greencallbacks record: component 0 of field 'components': {key} " in err


def test_what_the_writer_puts_in_a_component_is_read_back(tmp_path, recorded):
    """A null uncertainty is the writer's (a sensor's that was not finite): read, not refused. In
    memory (records gathered from ranks, a checkpoint's open phases) nothing more is refused:
    training must not stop for a sensor's odd note."""
    from greencallbacks.records import Record

    records = read_records(write(tmp_path, with_components(recorded, uncertainty_j=None, note="n", host="h", rank=1)))
    assert len(records) == len(recorded)
    assert Record.from_dict(with_components(recorded, note=5, uncertainty_j=float("nan"))[0]).components[0]["note"] == 5


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
    max_leaves=4,
)
COMPONENT_KEYS = ("name", "kind", "method", "energy_j", "uncertainty_j", "note", "source", "rank", "host", "uuid")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(changes=st.lists(st.tuples(st.integers(0, 99), st.sampled_from(COMPONENT_KEYS), JSON_VALUES), min_size=1,
                        max_size=3),
       fmt=st.sampled_from(["md", "json", "csv", "latex"]))
def test_any_component_content_gives_a_report_or_one_line_of_error(tmp_path_factory, recorded, changes, fmt):
    records = json.loads(json.dumps(recorded))
    for index, key, value in changes:
        records[index % len(records)]["components"][0][key] = value
    directory = write(tmp_path_factory.mktemp("fuzz"), records)
    # capsys is per test, not per example: the streams are caught here.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["report", str(directory), "--format", fmt])
        except SystemExit as exit_:
            code = exit_.code
    assert "internal error" not in err.getvalue()
    assert code in (0, 2)
    if code == 2:
        assert out.getvalue() == "" and len(err.getvalue().splitlines()) == 1
    else:
        assert "None" not in out.getvalue() and "nan" not in out.getvalue().split()


def test_a_record_of_a_newer_format_says_to_upgrade(tmp_path, capsys, recorded):
    """A file written by a later greencallbacks said "schema is '.../2', expected '.../1'" and no more."""
    newer = [{**r, "schema": "greencallbacks.record/2"} for r in recorded]
    code, _, err = report_of(capsys, write(tmp_path / "newer", newer))
    assert code == 2 and "schema is 'greencallbacks.record/2'" in err
    assert "written by a newer greencallbacks" in err and "upgrade it" in err
    other = [{**r, "schema": "someone.else/7"} for r in recorded]
    code, _, err = report_of(capsys, write(tmp_path / "other", other))
    assert code == 2 and "schema is 'someone.else/7'" in err and "upgrade" not in err


def test_a_record_twice_in_one_file_with_other_contents_names_its_two_lines(tmp_path, capsys, recorded):
    """Two processes appending under one run id: the error said "f and f both hold record seq 2 ...:
    report them apart", one file named twice, no line to look at and advice that cannot be followed."""
    changed = {**recorded[2], "duration_s": recorded[2]["duration_s"] + 1.0}
    code, out, err = report_of(capsys, write(tmp_path, [*recorded, changed]))
    assert (code, out) == (2, "")
    assert f"{RECORDS_FILE}:{len(recorded) + 1}: record seq {recorded[2]['seq']} of run 'run-a' (attempt 0) again, " \
           "with other contents than at line 3" in err
    assert "report them apart" not in err and len(err.splitlines()) == 1


def test_a_record_twice_in_one_file_is_counted_once_said_without_naming_the_file_twice(tmp_path, capsys, recorded):
    code, out, err = report_of(capsys, write(tmp_path, [*recorded, recorded[2]]), "--format", "json")
    assert code == 0
    (config,) = json.loads(out)["configurations"]
    assert math.isclose(config["run_totals"]["run-a"]["energy_kwh"], sum(r["energy_kwh"] for r in recorded))
    assert f"{RECORDS_FILE} repeats records it holds already" in err
    assert f"{RECORDS_FILE} repeats {tmp_path}" not in err


def test_latex_escapes_what_its_default_font_encoding_prints_as_other_glyphs():
    """OT1, LaTeX's default, prints < > | as ¡ ¿ —: a cloud region's source "... -> grid of US-VA"
    read "-¿ grid" in the paper. A blank line inside \\caption{} is an error."""
    assert report.latex_escape("a -> b <c> |d|") == r"a -\textgreater{} b \textless{}c\textgreater{} \textbar{}d\textbar{}"
    assert report.latex_escape("one\n\ntwo\r\n") == "one  two  "


def test_a_cloud_regions_source_reads_as_written_in_latex(tmp_path, capsys):
    from greencallbacks.carbon import Carbon
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    tracker = Tracker(carbon=Carbon(region="aws:us-east-1"), output_dir=tmp_path, run_id="region")
    tracker.start(meter)
    run_epochs(tracker, clock, epochs=1)
    code, out, _ = report_of(capsys, tmp_path, "--format", "latex")
    assert code == 0
    assert r"aws:us-east-1 (N. Virginia) -\textgreater{} grid of US-VA" in out
    assert not any(ch in line for line in out.splitlines() if not line.startswith("%") for ch in "<>|")


def test_a_record_twice_in_its_file_is_counted_once_by_the_resume_as_by_the_report(tmp_path, capsys):
    """A line appended again (`cat` of a backup): the report counted it once, the resume twice, so
    the run's summary exceeded its records and the report said "Records missing from run"."""
    first, clock, _ = setup(tmp_path, run_id="again")
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    lines = (tmp_path / RECORDS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / RECORDS_FILE).write_text("".join([*lines, lines[2]]), encoding="utf-8")
    resumed, clock, _ = setup(tmp_path, run_id="again")
    resumed.load_state_dict(state)
    run_epochs(resumed, clock, epochs=1)
    code, out, err = report_of(capsys, tmp_path, "--format", "json")
    assert code == 0 and "repeats records it holds already" in err
    (config,) = json.loads(out)["configurations"]
    assert math.isclose(resumed.total_energy_j, config["run_totals"]["again"]["energy_kwh"] * 3.6e6)
    assert config["records_missing"] == []


def test_a_records_file_saved_with_a_byte_order_mark_is_read(tmp_path, capsys, recorded):
    """An editor that begins a file with a BOM (Windows Notepad) made the whole file "not a
    greencallbacks record: Unexpected UTF-8 BOM" at line 1."""
    write(tmp_path, recorded)
    (tmp_path / RECORDS_FILE).write_bytes(b"\xef\xbb\xbf" + (tmp_path / RECORDS_FILE).read_bytes())
    assert len(read_records(tmp_path)) == len(recorded)
    code, out, _ = report_of(capsys, tmp_path)
    assert code == 0 and "run-a" in out


def test_a_run_id_from_a_file_name_that_is_not_utf8_is_written_up_and_reported(tmp_path, monkeypatch):
    """Path.name keeps a name's bytes that are not UTF-8 as lone surrogates: a run given such an id
    stopped at its write-up (UnicodeEncodeError naming its summary file), and on a strict UTF-8
    stdout (a UTF-8 locale) its report failed with "'utf-8' codec can't encode character"."""
    run_id = "run-" + b"\xff".decode("utf-8", "surrogateescape")
    tracker, clock, _ = setup(tmp_path, run_id=run_id)
    run_epochs(tracker, clock, epochs=1)
    assert [r.run_id for r in read_records(tmp_path)][0] == run_id
    for fmt in ("md", "csv", "latex", "json"):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        monkeypatch.setattr("sys.stdout", stdout)
        assert main(["report", str(tmp_path), "--format", fmt]) == 0
        stdout.flush()
        text = stdout.buffer.getvalue().decode("utf-8")  # UTF-8 throughout, the id escaped (a LaTeX table has none)
        assert fmt == "latex" or "run-\\udcff" in text or "run-\\\\udcff" in text
        assert stdout.errors == "strict"  # put back


def test_a_zone_given_twice_to_compare_is_one_row(tmp_path, capsys, recorded):
    """Zones are read in any case: "--compare-zones FR,DE,fr" gave FR's row twice in the report."""
    code, out, _ = report_of(capsys, write(tmp_path, recorded), "--compare-zones", "FR,DE,fr, de", "--format", "json")
    assert code == 0
    (config,) = json.loads(out)["configurations"]
    assert [row["zone"] for row in config["compare_zones"]] == ["FR", "DE"]


def test_attempts_missing_from_the_records_are_said_as_spans(tmp_path, capsys, recorded):
    """Listed one by one, an attempt number edited to 10**12 filled the memory until the report was
    killed (exit -9, no line said); "attempt(s) 1, 2, 3, 4" reads as "1-4"."""
    later = [{**r, "attempt": 5, "seq": r["seq"] + 100} for r in recorded[:2]]
    code, out, _ = report_of(capsys, write(tmp_path, [*recorded, *later]))
    assert code == 0 and "Not in these records: attempt(s) 1-4 of run run-a." in out


def test_a_line_that_is_not_json_is_said_by_its_line_in_the_file_alone(tmp_path, capsys, recorded):
    """JSON's words located it at "line 1 column 1 (char 0)", beside its real line number."""
    code, _, err = report_of(capsys, write(tmp_path, [*recorded[:4], "hello world", *recorded[4:]]))
    assert code == 2
    assert err.endswith(f"{RECORDS_FILE}:5: not a greencallbacks record: Expecting value at column 1 (not JSON)\n")


def test_a_tiny_mean_and_its_error_share_the_exponent_of_the_mean_as_rounded():
    """9.96e-8 ± 1e-8 read "10.0e-8 ± 1.0e-8" (three digits of error, a mantissa of 10); a mean
    far below its error took its own exponent, and the error became a 300-digit number."""
    from greencallbacks.textformat import value_and_error

    assert value_and_error(9.96e-8, 1e-8) == ("1.00e-7", "0.10e-7")
    assert value_and_error(1e-300, 1e-9) == ("0.0e-9", "1.0e-9")
    assert value_and_error(5.07e-6, 5.02e-7) == ("5.07e-6", "0.50e-6")  # as before


def test_a_records_file_linking_to_nothing_is_named_as_such(tmp_path, capsys, recorded):
    """A log root holding a link to records since moved: "[Errno 2] No such file or directory" named
    a file that `ls` lists, and stopped the report of every other run there."""
    write(tmp_path / "root" / "kept", recorded)
    (tmp_path / "root" / "moved").mkdir()
    (tmp_path / "root" / "moved" / RECORDS_FILE).symlink_to(tmp_path / "elsewhere" / RECORDS_FILE)
    code, out, err = report_of(capsys, tmp_path / "root")
    assert code == 0 and "run-a" in out
    assert f"warning: 1 records file(s) under {tmp_path / 'root'} link to nothing (moved or deleted)" in err
    code, out, err = report_of(capsys, tmp_path / "root" / "moved")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert f"every {RECORDS_FILE} under {tmp_path / 'root' / 'moved'} links to nothing (moved or deleted)" in err
    code, out, err = report_of(capsys, tmp_path / "root" / "moved" / RECORDS_FILE)
    assert (code, out) == (2, "") and "which does not exist (moved or deleted)" in err and len(err.splitlines()) == 1


def test_the_unit_is_chosen_for_the_value_as_shown():
    """0.9996 Wh, shown to three digits, read "1000 mWh" (and 0.99996 kWh "1000 Wh")."""
    from greencallbacks.textformat import energy_text, mass_text

    assert energy_text(0.0009996) == "1.00 Wh" and energy_text(0.99996) == "1.00 kWh"
    assert energy_text(0.00099949) == "999 mWh" and mass_text(0.99996) == "1.00 gCO2eq"


def test_a_record_holding_a_unicode_line_separator_is_one_line(tmp_path, capsys, recorded):
    """JSON lets a string hold U+2028 or U+0085 unescaped (a writer of non-ASCII as it is): read with
    str.splitlines, the record broke in two, refused as "not JSON" at a line number no editor shows."""
    lines = [json.dumps({**r, "intensity_source": "grid\u2028mix\x85"}, ensure_ascii=False) for r in recorded]
    assert [r.intensity_source for r in read_records(write(tmp_path, lines))] == ["grid\u2028mix\x85"] * len(recorded)
    code, out, _ = report_of(capsys, tmp_path, "--format", "json")
    assert code == 0 and json.loads(out)


def test_a_plot_whose_titles_hold_dollar_signs_is_drawn(tmp_path, capsys, recorded):
    """matplotlib reads text between two "$" as math: a sensor named "gpu$\\frac{$0" failed the plot
    of two configurations (their titles name the sensors) with a four-line parse error."""
    pytest.importorskip("matplotlib")
    write(tmp_path / "a", [{**r, "run_id": "ra"} for r in with_components(recorded, name="gpu$\\frac{$0")])
    write(tmp_path / "b", [{**r, "run_id": "rb"} for r in recorded])
    code, _, err = report_of(capsys, tmp_path, "--plot", tmp_path / "epochs.png")
    assert code == 0, err
    assert (tmp_path / "epochs.png").stat().st_size > 0


def test_an_error_of_several_lines_is_said_in_one(tmp_path, capsys, recorded, monkeypatch):
    pytest.importorskip("matplotlib")  # --plot asks for matplotlib (the [plot] extra) before it looks at the path
    def fails(*args, **kwargs):
        raise ValueError("\n\\frac{\n     ^\nParseSyntaxException: Expected \\frac{num}{den}")

    monkeypatch.setattr(report, "plot_epochs", fails)
    code, _, err = report_of(capsys, write(tmp_path, recorded), "--plot", tmp_path / "epochs.png")
    assert code == 2
    assert err.splitlines()[-1] == ("greencallbacks report: error: \\frac{ ^ ParseSyntaxException: Expected "
                                    "\\frac{num}{den}")
    assert len(err.splitlines()) == 1


def test_a_run_id_with_a_newline_from_another_writer_is_one_quoted_name_in_headings_and_listings(
        tmp_path, capsys, recorded):
    """The tracker refuses such an id; a file written by another tool may still hold one. Its
    newline ended the report's heading mid-name, the rest read as a paragraph."""
    other = [{**r, "run_id": "run\nb"} for r in recorded]
    code, out, err = report_of(capsys, write(tmp_path, recorded + other))
    assert code == 0
    assert out.splitlines()[0] == "# Energy report (2 runs: run-a, 'run\\nb')"
    assert "  'run\\nb': " in err and "run\nb" not in out + err
