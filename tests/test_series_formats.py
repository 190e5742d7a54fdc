"""Intensity series files as people have them: the project's own names and the providers' exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.carbon.series import IntensitySeries

T0 = 1672531200  # 2023-01-01T00:00:00Z
LB = 0.45359237  # g/kWh per lb/MWh


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_projects_own_column_names(tmp_path):
    series = IntensitySeries.from_file(write(tmp_path / "own.csv", "timestamp,gco2eq_per_kwh\n0,100\n3600,300\n"))
    assert series.values_g_per_kwh == (100.0, 300.0) and series.format == "CSV"
    records_like = write(tmp_path / "rec.csv", "start_time,intensity_gco2eq_per_kwh\n2023-01-01T00:00:00Z,80\n")
    assert IntensitySeries.from_file(records_like).times_unix == (T0,)


@pytest.mark.parametrize(
    "direct, life_cycle",
    [("Carbon Intensity gCO₂eq/kWh (direct)", "Carbon Intensity gCO₂eq/kWh (LCA)"),
     ("Carbon intensity gCO₂eq/kWh (direct)", "Carbon intensity gCO₂eq/kWh (Life cycle)")],
)
def test_electricity_maps_csv_export_reads_the_life_cycle_column(tmp_path, direct, life_cycle):
    header = f"Datetime (UTC),Country,Zone Name,Zone Id,{direct},{life_cycle},Low Carbon Percentage,Renewable Percentage,Data Source,Data Estimated,Data Estimation Method"
    rows = ["2023-01-01 00:00:00,France,France,FR,20.1,45.5,93.2,30.1,rte.fr,false,",
            "2023-01-01 01:00:00,France,France,FR,22.3,,93.0,29.8,rte.fr,true,TIME_SLICER_AVERAGE",  # gap: skipped
            "2023-01-01 02:00:00,France,France,FR,25.0,51.0,92.1,28.0,rte.fr,false,"]
    path = write(tmp_path / "FR_2023_hourly.csv", header + "\n" + "\n".join(rows) + "\n")
    series = IntensitySeries.from_file(path)
    assert series.times_unix == (T0, T0 + 7200) and series.values_g_per_kwh == (45.5, 51.0)
    assert series.format.startswith("Electricity Maps CSV export (life-cycle intensity")
    source = Carbon(series=path).intensity_between(T0, T0 + 3600).source
    assert "FR_2023_hourly.csv (Electricity Maps CSV export (life-cycle" in source


def test_electricity_maps_csv_with_only_the_direct_column_says_so(tmp_path):
    path = write(tmp_path / "em.csv", "Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (direct)\n2023-01-01 00:00:00,FR,20\n")
    series = IntensitySeries.from_file(path)
    assert series.values_g_per_kwh == (20.0,) and "direct intensity" in series.format


def test_uk_carbon_intensity_api_json(tmp_path):
    document = {"data": [
        {"from": "2023-01-01T00:00Z", "to": "2023-01-01T00:30Z", "intensity": {"forecast": 180, "actual": 175, "index": "moderate"}},
        {"from": "2023-01-01T00:30Z", "to": "2023-01-01T01:00Z", "intensity": {"forecast": 190, "actual": None, "index": "moderate"}},
    ]}
    series = IntensitySeries.from_file(write(tmp_path / "uk.json", json.dumps(document)))
    assert series.times_unix == (T0, T0 + 1800) and series.values_g_per_kwh == (175.0, 190.0)  # forecast where no actual
    assert series.format == "UK Carbon Intensity API JSON (actual, forecast where no actual)"


def test_watttime_csv_in_lbs_per_mwh_is_converted(tmp_path):
    v3 = write(tmp_path / "wt.csv", "point_time,value,region,signal_type\n2023-01-01T00:00:00+00:00,1000,CAISO_NORTH,co2_moer\n"
                                    "2023-01-01T00:05:00+00:00,800,CAISO_NORTH,co2_moer\n")
    series = IntensitySeries.from_file(v3)
    assert series.values_g_per_kwh == pytest.approx((1000 * LB, 800 * LB))
    assert series.times_unix == (T0, T0 + 300) and series.format.startswith("WattTime CSV")
    v2 = write(tmp_path / "wt2.csv", "timestamp,MOER,frequency,market,ba,datatype,version\n"
                                     "2023-01-01T00:00:00Z,900,300,RTM,CAISO_NORTH,MOER,3.0\n")
    assert IntensitySeries.from_file(v2).values_g_per_kwh == pytest.approx((900 * LB,))
    units = write(tmp_path / "wt3.csv", "point_time,value,units\n2023-01-01T00:00:00Z,400,kg_co2_per_mwh\n")
    assert IntensitySeries.from_file(units).values_g_per_kwh == (400.0,)
    bad = write(tmp_path / "wt4.csv", "point_time,value,units\n2023-01-01T00:00:00Z,400,furlongs\n")
    with pytest.raises(ValueError, match=r"wt4.csv.*line 2.*unknown units 'furlongs'"):
        IntensitySeries.from_file(bad)


def test_watttime_and_electricity_maps_api_json_saved_to_a_file(tmp_path):
    wt = {"data": [{"point_time": "2023-01-01T00:00:00+00:00", "value": 1000.0}], "meta": {"units": "lbs_co2_per_mwh"}}
    series = IntensitySeries.from_file(write(tmp_path / "wt.json", json.dumps(wt)))
    assert series.values_g_per_kwh == pytest.approx((1000 * LB,)) and series.format.startswith("WattTime API JSON")
    em = {"zone": "DE", "history": [{"datetime": "2023-01-01T00:00:00.000Z", "carbonIntensity": 420}]}
    series = IntensitySeries.from_file(write(tmp_path / "em.json", json.dumps(em)))
    assert series.values_g_per_kwh == (420.0,) and series.format == "Electricity Maps API JSON"


def test_an_unknown_header_names_the_accepted_columns_and_exports(tmp_path):
    with pytest.raises(ValueError, match=r"gco2eq_per_kwh.*Electricity Maps or WattTime export"):
        IntensitySeries.from_file(write(tmp_path / "x.csv", "when,how_much\n0,1\n"))


@pytest.mark.parametrize("factor, unit", [(10**3, "milliseconds"), (10**6, "microseconds"), (10**9, "nanoseconds")])
def test_unix_timestamps_in_a_smaller_unit_are_refused_naming_file_line_and_unit(tmp_path, factor, unit):
    """A pandas or JavaScript export in ms or ns read as seconds lies centuries ahead: priced at one
    extrapolated value (or overflowing the calendar), never an error naming the file."""
    path = write(tmp_path / "ms.csv", f"timestamp,g_per_kwh\n{T0 * factor},100\n{(T0 + 3600) * factor},200\n")
    with pytest.raises(ValueError, match=rf"ms.csv'?, line 2: .*looks like {unit} since 1970"):
        IntensitySeries.from_file(path)
    with pytest.raises(ValueError, match=rf"line 2: .*{unit}"):
        Carbon(series=path)


@pytest.mark.parametrize("stamp", ["1e20", "-3600", "2500-01-01T00:00:00Z"])
def test_timestamps_outside_1970_to_2200_are_refused(tmp_path, stamp):
    path = write(tmp_path / "far.csv", f"timestamp,g_per_kwh\n{stamp},100\n")
    with pytest.raises(ValueError, match=r"far.csv'?, line 2: timestamp .* is outside 1970-2200"):
        IntensitySeries.from_file(path)


@pytest.mark.parametrize("document, place", [
    ('[{"timestamp": 0, "g_per_kwh": 1}, {"timestamp": 0, "g_per_kwh": 2}]', "item 1"),
    ('[[0, 1], [10]]', "item 1"),
    (json.dumps({"data": [{"from": "1960-01-01T00:00Z", "to": "1960-01-01T00:30Z", "intensity": {"actual": 4}}]}), "point 0"),
])
def test_json_errors_name_the_item_without_calling_it_a_line(tmp_path, document, place):
    with pytest.raises(ValueError) as error:
        IntensitySeries.from_file(write(tmp_path / "bad.json", document))
    assert f"bad.json', {place}: " in str(error.value) and "line item" not in str(error.value)


def test_a_quoted_newline_inside_a_field_is_one_record(tmp_path):
    text = ('timestamp,g_per_kwh,note\n'
            '0,100,"maintenance\nwindow, see log"\n'
            '3600,300,"a note\n# not a comment\nover three lines"\n'
            '# a comment between records\n'
            '7200,200,plain\n')
    series = IntensitySeries.from_file(write(tmp_path / "notes.csv", text))
    assert series.times_unix == (0.0, 3600.0, 7200.0) and series.values_g_per_kwh == (100.0, 300.0, 200.0)


def test_a_row_after_a_multi_line_record_is_named_by_its_own_line(tmp_path):
    text = 'timestamp,g_per_kwh,note\n0,100,"two\nlines"\n3600,lots,x\n'
    with pytest.raises(ValueError, match=r"notes.csv'?, line 4: value 'lots' is not a number"):
        IntensitySeries.from_file(write(tmp_path / "notes.csv", text))


def _feed_when_opened(fifo: Path, text: str):
    """A writer of ``text`` into ``fifo`` once a reader opens it (what a reader that reads it whole
    gets); ``done()`` wakes the writer if no reader came, and waits for it."""
    import os
    import threading

    def feed():
        try:
            with open(fifo, "w") as file:  # blocks until a reader opens the pipe
                file.write(text)
        except OSError:  # the reader went away first (BrokenPipeError): what a refusal does
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()

    def done():
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # wakes a writer still waiting for one
        writer.join()
        os.close(reader)

    return done


@pytest.mark.parametrize("how", ["file", "Carbon", "GREENCALLBACKS_SERIES"])
def test_a_named_pipe_named_as_the_series_is_read(tmp_path, monkeypatch, how):
    """A pipe the user names is read, as cat reads it (`--intensity <(cat series.csv)`, /dev/stdin):
    it had been refused with the pipes that walking a directory finds."""
    import os

    fifo = tmp_path / "series.csv"
    os.mkfifo(fifo)
    done = _feed_when_opened(fifo, "timestamp,g_per_kwh\n0,100\n3600,300\n7200,200\n")
    try:
        if how == "file":
            series = IntensitySeries.from_file(fifo)
        elif how == "Carbon":
            series = Carbon(series=str(fifo))
        else:
            monkeypatch.setenv("GREENCALLBACKS_SERIES", str(fifo))
            series = Carbon.from_env()
    finally:
        done()
    mean = series.mean_between if how == "file" else series.intensity_between
    assert mean(1800, 5400).g_per_kwh == pytest.approx(200.0)  # 1800 s at 100 and 1800 s at 300 gCO2eq/kWh


def test_a_named_pipe_is_read_when_its_writer_comes_after_the_reader(tmp_path):
    """A writer started after the command (`mkfifo p; greencallbacks whatif ... --intensity p & cat s.csv > p`)
    is waited for, not taken for an empty file; a writer that writes nothing is an empty file."""
    import errno
    import os
    import threading
    import time

    fifo = tmp_path / "series.csv"
    os.mkfifo(fifo)

    def feed(text, stop):
        while not stop.is_set():  # opens once the reader has: a writer's open without one fails (ENXIO)
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                time.sleep(0.001)
                continue
            os.write(writer, text.encode())
            os.close(writer)
            return

    for text in ("timestamp,g_per_kwh\n0,100\n3600,300\n", ""):
        stop = threading.Event()
        writer = threading.Thread(target=feed, args=(text, stop), daemon=True)
        writer.start()
        try:
            if text:
                assert IntensitySeries.from_file(fifo).values_g_per_kwh == (100.0, 300.0)
            else:
                with pytest.raises(ValueError, match="series.csv'?, line 1: no header and no data"):
                    IntensitySeries.from_file(fifo)
        finally:
            stop.set()
            writer.join()


def test_a_device_is_refused_as_what_it_is():
    with pytest.raises(ValueError, match=r"series file '/dev/null': not a regular file or pipe \(a character device\)"):
        IntensitySeries.from_file("/dev/null")


def test_a_series_file_past_the_size_cap_is_refused_unread(tmp_path, monkeypatch):
    import greencallbacks.carbon.series as series_module

    path = write(tmp_path / "big.csv", "timestamp,g_per_kwh\n0,100\n3600,300\n")
    size = path.stat().st_size
    monkeypatch.setattr(series_module, "MAX_SERIES_BYTES", size - 1, raising=False)
    with pytest.raises(ValueError, match=rf"series file '.*big.csv' is larger than {size - 1} bytes"):
        IntensitySeries.from_file(path)
    monkeypatch.setattr(series_module, "MAX_SERIES_BYTES", size)
    assert IntensitySeries.from_file(path).values_g_per_kwh == (100.0, 300.0)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_spreadsheet_export_separated_otherwise_than_by_commas_is_refused_saying_so(tmp_path, separator):
    """A spreadsheet saves CSV with ';' in many locales: refused naming the columns wanted only, it
    read as a file without them, though they were there."""
    path = tmp_path / "intensity.csv"
    path.write_text(f"timestamp{separator}g_per_kwh\n2026-01-01T00:00Z{separator}120,5\n")
    with pytest.raises(ValueError, match="line 1: ") as refused:
        IntensitySeries.from_file(path)
    assert f"separated by {separator!r}, not commas" in str(refused.value)
    assert "'.' as the decimal mark" in str(refused.value)
