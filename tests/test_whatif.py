"""Time-varying intensity through the real tracker, and the what-if analysis on hand-computed series."""

import dataclasses
import importlib.util
import json
from datetime import datetime, timezone

import pytest

from greencallbacks.carbon import Carbon, IntensitySeries
from greencallbacks.carbon.intensity import zone_intensity
from greencallbacks.meter import Meter
from greencallbacks.records import Record, RecordWriter, read_records
from greencallbacks.tracker import Tracker, utc_iso
from greencallbacks.units import J_PER_KWH
from greencallbacks.whatif import Phase, energy_profile, main, whatif
from tests.fakes.scripted import FakeClock, ScriptedSensor

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
HOUR = 3600.0


def write_series(path, points):
    path.write_text("timestamp,g_per_kwh\n" + "".join(f"{utc_iso(t)},{v}\n" for t, v in points))
    return path


# ------------------------------------------------------------------ 1. the tracker and a series
def run_with_nested_validation(tmp_path, series_path):
    """gap [0,5] 100 W; train [5,20] 200 W; validation [20,30] 50 W; train [30,40] 200 W."""
    clock = FakeClock(0.0)
    sensor = ScriptedSensor("gpu", clock, power_w=100.0)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + T0)
    tracker = Tracker(carbon=Carbon(series=series_path), output_dir=tmp_path, run_id="series")
    tracker.start(meter)
    clock.advance(5)
    sensor.set_power(200.0)
    tracker.begin("train", 0)
    clock.advance(15)
    sensor.set_power(50.0)
    tracker.begin("validation", 0)
    clock.advance(10)
    sensor.set_power(200.0)
    tracker.end("validation")
    clock.advance(10)
    tracker.end("train")
    tracker.finish()
    return {r.phase: r for r in read_records(tmp_path)}


@pytest.fixture
def steps_inside_phases(tmp_path):
    # 100 until T0+15, 300 until T0+25, then 200: both train and validation see a step change.
    return write_series(tmp_path / "steps.csv", [(T0, 100), (T0 + 15, 300), (T0 + 25, 200)])


def test_tracker_bills_each_segment_at_its_own_time(tmp_path, steps_inside_phases):
    records = run_with_nested_validation(tmp_path / "run", steps_inside_phases)
    other, train, validation = records["other"], records["train"], records["validation"]
    # Hand-computed: sum of E_i x time-weighted mean intensity of segment i (PUE 1).
    assert other.co2eq_g == pytest.approx(500 * 100 / J_PER_KWH)
    train_mean_first = (10 * 100 + 5 * 300) / 15
    assert train.co2eq_g == pytest.approx((3000 * train_mean_first + 2000 * 200) / J_PER_KWH)
    assert validation.co2eq_g == pytest.approx(500 * (5 * 300 + 5 * 200) / 10 / J_PER_KWH)
    assert validation.intensity_gco2eq_per_kwh == pytest.approx(250.0)
    assert train.energy_kwh * J_PER_KWH == pytest.approx(5000.0)
    for record in records.values():
        assert record.intensity_source.startswith("time series steps.csv")
        assert record.intensity_zone == "series:steps.csv"


def test_record_intensity_is_the_energy_weighted_mean(tmp_path, steps_inside_phases):
    train = run_with_nested_validation(tmp_path / "run", steps_inside_phases)["train"]
    assert train.intensity_gco2eq_per_kwh == pytest.approx(train.co2eq_g / train.energy_kwh)  # 180, not 200


def test_whatif_as_recorded_matches_the_tracker_for_sequential_phases(tmp_path, steps_inside_phases):
    clock = FakeClock(0.0)
    sensor = ScriptedSensor("gpu", clock, power_w=120.0)
    tracker = Tracker(carbon=Carbon(series=steps_inside_phases), output_dir=tmp_path, run_id="seq")
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + T0))
    for epoch, seconds in enumerate((12, 9, 14)):
        tracker.begin("train", epoch)
        clock.advance(seconds)
        tracker.end("train")
    tracker.finish()
    records = read_records(tmp_path)
    result = whatif(records, steps_inside_phases, window_h=0)
    assert result.as_recorded.co2eq_g == pytest.approx(sum(r.co2eq_g for r in records), rel=1e-9)
    assert result.recorded_co2eq_g == pytest.approx(result.as_recorded.co2eq_g, rel=1e-9)


def test_whatif_as_recorded_matches_the_tracker_with_validation_nested_in_training(tmp_path, steps_inside_phases):
    """Validation in the middle of the epoch: the train record's 25 s are [5, 20] and [30, 40], not [5, 30]."""
    records = list(run_with_nested_validation(tmp_path / "run", steps_inside_phases).values())
    result = whatif(records, steps_inside_phases, window_h=0)
    assert result.as_recorded.co2eq_g == pytest.approx(sum(r.co2eq_g for r in records), rel=1e-9)
    assert result.recorded_co2eq_g == pytest.approx(result.as_recorded.co2eq_g, rel=1e-9)
    assert result.run_duration_s == pytest.approx(40.0)


def test_whatif_as_recorded_matches_the_tracker_for_validations_inside_every_epoch(tmp_path):
    # 60 s steps alternating 100 / 700 g/kWh; each epoch: 20 s train, 40 s validation, 30 s train.
    series = write_series(tmp_path / "alternating.csv", [(T0 + 60 * i, 100 if i % 2 == 0 else 700) for i in range(30)])
    clock = FakeClock(0.0)
    sensor = ScriptedSensor("gpu", clock, power_w=200.0)
    tracker = Tracker(carbon=Carbon(series=series, pue=1.4), output_dir=tmp_path / "run", run_id="nested")
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + T0))
    for epoch in range(4):
        clock.advance(3)
        tracker.begin("train", epoch)
        clock.advance(20)
        sensor.set_power(80.0)
        tracker.begin("validation", epoch)
        clock.advance(40)
        sensor.set_power(200.0)
        tracker.end("validation")
        clock.advance(30)
        tracker.end("train")
    tracker.finish()
    records = read_records(tmp_path / "run")
    result = whatif(records, series, window_h=0)
    assert result.as_recorded.co2eq_g == pytest.approx(sum(r.co2eq_g for r in records), rel=1e-9)
    assert result.run_duration_s == pytest.approx(4 * 93.0)


def test_profile_cuts_nested_records_out_of_the_outer_ones_time():
    train = record(T0, 70.0, 7.0, seq=0)  # billed 70 s: [0, 20] and [50, 100]
    validation = record(T0 + 20, 30.0, 3.0, phase="validation", seq=1)
    gap = record(T0 + 100.0 - 0.0004, 5.0, 0.5, phase="other", seq=2)  # starts at train's end, to the millisecond
    run_start, phases = energy_profile([gap, validation, train])
    assert run_start == T0
    assert sorted(phases, key=lambda p: p.offset_s) == [
        Phase(0.0, 20.0, pytest.approx(2.0)), Phase(20.0, 30.0, 3.0),
        Phase(50.0, 50.0, pytest.approx(5.0)), Phase(pytest.approx(100.0, abs=2e-3), 5.0, 0.5),
    ]


def test_flexible_start_moves_a_nested_profile_as_a_whole():
    """Train billed 2 h around a nested 1 h validation: hours 0 and 2 for train, hour 1 for validation."""
    run = [record(T0, 2 * HOUR, 2.0, seq=0), record(T0 + HOUR, HOUR, 0.5, phase="validation", seq=1)]
    result = whatif(run, hourly([400, 100, 400, 100, 400, 100]), window_h=1, threshold=300)
    assert result.as_recorded.co2eq_g == pytest.approx(1 * 400 + 0.5 * 100 + 1 * 400)
    assert result.run_duration_s == pytest.approx(3 * HOUR)
    best = result.flexible_start
    assert best.start_unix == T0 + HOUR and best.co2eq_g == pytest.approx(1 * 100 + 0.5 * 400 + 1 * 100)


# ------------------------------------------------------------------------------ 3. what-if
def record(start_unix, duration_s, energy_kwh, phase="train", seq=0):
    return Record(run_id="r", phase=phase, epoch=0, seq=seq, start_time=utc_iso(start_unix), duration_s=duration_s,
                  samples=0, it_energy_kwh=energy_kwh, energy_kwh=energy_kwh, co2eq_g=0.0,
                  intensity_gco2eq_per_kwh=0.0, intensity_source="", pue=1.0, energy_j_per_sample=None,
                  co2eq_g_per_sample=None)


def hourly(values):
    return IntensitySeries(tuple(T0 + i * HOUR for i in range(len(values))), tuple(float(v) for v in values), "synthetic")


# Hours 0-3 alternate dirty/clean, 10-11 are the cleanest two hours in a row, the rest is dirty.
SERIES = hourly([400, 100, 400, 100] + [500] * 6 + [150, 150] + [500] * 36)
TWO_HOUR_RUN = [record(T0, HOUR, 1.0, seq=0), record(T0 + HOUR, HOUR, 1.0, seq=1)]


def test_as_recorded_is_energy_times_intensity_of_its_hours():
    result = whatif(TWO_HOUR_RUN, SERIES, threshold=300)
    assert result.as_recorded.co2eq_g == pytest.approx(400 + 100)
    assert result.energy_kwh == pytest.approx(2.0) and result.run_duration_s == 2 * HOUR


def test_flexible_start_finds_the_cleanest_window():
    result = whatif(TWO_HOUR_RUN, SERIES, window_h=24, threshold=300)
    best = result.flexible_start
    assert best.start_unix == T0 + 10 * HOUR
    assert best.co2eq_g == pytest.approx(300.0)
    assert best.saving_g == pytest.approx(200.0) and best.saving_pct == pytest.approx(40.0)


def test_flexible_start_respects_the_window():
    best = whatif(TWO_HOUR_RUN, SERIES, window_h=5, threshold=300).flexible_start
    assert best.start_unix == T0 and best.saving_g == 0.0  # every 2 h window before hour 10 costs 500


def test_flexible_start_aligns_an_odd_start_to_the_series_steps():
    run = [record(T0 + 1800, 2 * HOUR, 2.0)]  # 00:30 to 02:30
    best = whatif(run, SERIES, window_h=24, threshold=300).flexible_start
    assert best.start_unix == T0 + 10 * HOUR and best.co2eq_g == pytest.approx(300.0)


def test_pause_and_resume_skips_dirty_hours_within_a_doubled_duration():
    result = whatif(TWO_HOUR_RUN, SERIES, threshold=300)
    paused = result.pause_resume
    # Pause hour 0 (400), run hour 1 (100), pause hour 2 (400), run hour 3 (100): done at 4 h = 2 x 2 h.
    assert paused.running == [(T0 + HOUR, T0 + 2 * HOUR), (T0 + 3 * HOUR, T0 + 4 * HOUR)]
    assert paused.co2eq_g == pytest.approx(200.0)
    assert paused.saving_g == pytest.approx(300.0)
    assert paused.end_unix - paused.start_unix <= 2 * result.run_duration_s


def test_pause_budget_runs_out_and_the_run_goes_on_through_dirty_hours():
    series = hourly([400, 400, 400, 100, 100, 100])
    result = whatif(TWO_HOUR_RUN, series, threshold=300)
    # Two dirty hours fit the 2 h budget; the third must be worked through.
    assert result.pause_resume.running == [(T0 + 2 * HOUR, T0 + 4 * HOUR)]
    assert result.pause_resume.co2eq_g == pytest.approx(400 + 100)


def test_pause_and_resume_follows_the_phase_profile():
    # 3 kWh in the first hour, 1 kWh in the second: pausing hour 0 moves the heavy phase to hour 1.
    run = [record(T0, HOUR, 3.0, seq=0), record(T0 + HOUR, HOUR, 1.0, seq=1)]
    result = whatif(run, hourly([400, 100, 400, 100, 400]), threshold=300)
    assert result.as_recorded.co2eq_g == pytest.approx(3 * 400 + 1 * 100)
    assert result.pause_resume.co2eq_g == pytest.approx(3 * 100 + 1 * 100)


def test_default_threshold_is_the_median_and_said():
    result = whatif(TWO_HOUR_RUN, SERIES)
    assert result.threshold_g_per_kwh == pytest.approx(250.0)  # median of 400, 100, 400, 100
    assert "median" in result.threshold_note


def test_other_regions_use_static_intensities():
    result = whatif(TWO_HOUR_RUN, SERIES, threshold=300, zones=["FR", "DE", "gcp:europe-west1"])
    france, germany, gcp = result.regions
    assert france.co2eq_g == pytest.approx(2.0 * zone_intensity("FR").g_per_kwh)
    assert germany.co2eq_g == pytest.approx(2.0 * zone_intensity("DE").g_per_kwh)
    assert gcp.co2eq_g == pytest.approx(2.0 * Carbon(region="gcp:europe-west1").static_intensity.g_per_kwh)
    assert france.name == "in FR" and france.saving_g == pytest.approx(500 - france.co2eq_g)


def test_unknown_zone_and_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="zone"):
        whatif(TWO_HOUR_RUN, SERIES, zones=["Atlantis"])
    with pytest.raises(ValueError, match="window_h"):
        whatif(TWO_HOUR_RUN, SERIES, window_h=-1)
    with pytest.raises(ValueError, match="threshold"):
        whatif(TWO_HOUR_RUN, SERIES, threshold=0)
    with pytest.raises(ValueError, match="empty"):
        whatif([], SERIES)


def test_zero_duration_phase_is_billed_at_its_instant():
    run = [record(T0 + HOUR, 0.0, 0.5)]
    result = whatif(run, SERIES, threshold=300)
    assert result.as_recorded.co2eq_g == pytest.approx(0.5 * 100)


def test_markdown_table_lists_every_scenario():
    table = whatif(TWO_HOUR_RUN, SERIES, threshold=300, zones=["FR"]).to_markdown()
    for expected in ("| as recorded, priced at this series |", "flexible start", "pause and resume", "| in FR |", "| scenario |"):
        assert expected in table


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def recorded_run(tmp_path):
    writer = RecordWriter(tmp_path / "run" / "energy-records.jsonl")
    for r in TWO_HOUR_RUN:
        writer.write(r)
    series = write_series(tmp_path / "grid.csv", zip(SERIES.times_unix, SERIES.values_g_per_kwh))
    return tmp_path / "run", series


def test_main_prints_json(recorded_run, capsys):
    run, series = recorded_run
    assert main([str(run), "--intensity", str(series), "--threshold", "300", "--zones", "FR,DE", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flexible_start"]["co2eq_g"] == pytest.approx(300.0)
    assert data["pause_resume"]["co2eq_g"] == pytest.approx(200.0)
    assert [r["name"] for r in data["regions"]] == ["in FR", "in DE"]


def test_main_writes_a_plot_and_a_table(recorded_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run, series = recorded_run
    plot = tmp_path / "whatif.png"
    assert main([str(run), "--intensity", str(series), "--window-h", "12", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| as recorded, priced at this series |" in capsys.readouterr().out


def test_main_reports_bad_input_without_a_traceback(recorded_run, tmp_path, capsys):
    run, _ = recorded_run
    assert main([str(run), "--intensity", str(tmp_path / "missing.csv")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_main_takes_a_region_in_every_form_report_and_estimate_take(recorded_run, capsys):
    """``us-east-1`` and ``West Europe`` were refused here while ``report --compare-zones`` took them."""
    from greencallbacks.carbon.intensity import place_intensity

    run, series = recorded_run
    assert main([str(run), "--intensity", str(series), "--zones", "us-east-1,West Europe", "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    assert [r["name"] for r in regions] == ["in us-east-1", "in West Europe"]
    energy = sum(r.energy_kwh for r in TWO_HOUR_RUN)
    for row, place in zip(regions, ["aws:us-east-1", "azure:westeurope"]):
        assert row["co2eq_g"] == pytest.approx(energy * place_intensity(place).g_per_kwh)


def test_main_names_the_file_and_line_of_a_start_time_that_is_no_time(recorded_run, capsys):
    """The report reads no start time; whatif said only "run r: Invalid isoformat string"."""
    run, series = recorded_run
    file = run / "energy-records.jsonl"
    lines = file.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "start_time": "yesterday"})
    file.write_text("\n".join(lines) + "\n")
    assert main([str(run), "--intensity", str(series)]) == 2
    err = capsys.readouterr().err
    assert err == f"greencallbacks whatif: error: {file}:2: start_time 'yesterday' is not an ISO-8601 time\n"


@pytest.mark.parametrize("zone, says", [
    ("Atlantis", "unknown zone 'Atlantis'; did you mean"),
    ("aws:nowhere", "unknown region 'aws:nowhere'"),
    ("CAMX", "use the US state (e.g. --zones US-CA)"),
])
def test_main_names_the_zones_command_and_its_own_flag_for_an_unknown_zone(recorded_run, capsys, zone, says):
    """The command line's words, as the other sub-commands say them: no Python function to call."""
    run, series = recorded_run
    assert main([str(run), "--intensity", str(series), "--zones", f"FR,{zone}"]) == 2
    err = capsys.readouterr().err
    assert says in err and "list_zones()" not in err and "zone='" not in err, err
    if zone != "CAMX":
        assert "(`greencallbacks zones --search TEXT` lists them)" in err


# ------------------------------------------------------------- series that do not cover the run
def test_a_series_that_does_not_overlap_the_run_is_refused():
    old = IntensitySeries(tuple(T0 - 400 * 24 * HOUR + i * HOUR for i in range(48)), (100.0,) * 48, "2020.csv")
    with pytest.raises(ValueError, match=r"covers .* but the run ran .*Give a series that covers the run"):
        whatif(TWO_HOUR_RUN, old)


def test_a_run_reaching_past_the_series_is_marked_extrapolated_in_every_output():
    short = hourly([400, 100])  # covers T0 .. T0 + 2 h; the run ends at T0 + 2 h, pause-and-resume beyond
    run = [record(T0 + HOUR, HOUR, 1.0), record(T0 + 2 * HOUR, HOUR, 1.0, seq=1)]  # T0 + 1 h .. T0 + 3 h
    result = whatif(run, short, threshold=300)
    assert result.as_recorded.extrapolated and result.series_covers == (T0, T0 + 2 * HOUR)
    assert "EXTRAPOLATED beyond the series' data" in result.to_markdown() and "Extrapolated:" in result.to_markdown()
    assert result.to_dict()["as_recorded"]["extrapolated"] is True
    inside = whatif(TWO_HOUR_RUN, SERIES, threshold=300)
    assert not any(s.extrapolated for s in inside.scenarios) and "EXTRAPOLATED" not in inside.to_markdown()


def test_a_run_inside_a_gap_of_the_series_is_marked_extrapolated():
    # Hourly values, then none for 5 hours: the run (T0 + 1 h .. T0 + 3 h) lies in the gap after T0 + 1 h.
    times = (T0 - HOUR, T0, T0 + 6 * HOUR, T0 + 7 * HOUR)
    gappy = IntensitySeries(times, (300.0, 200.0, 100.0, 100.0), "gappy.csv")
    run = [record(T0 + HOUR, HOUR, 1.0), record(T0 + 2 * HOUR, HOUR, 1.0, seq=1)]
    result = whatif(run, gappy, threshold=300)
    assert result.as_recorded.extrapolated and result.as_recorded.co2eq_g == pytest.approx(2 * 200.0)
    assert "or into a gap" in result.to_markdown()
    assert not whatif(run, hourly([400, 100, 200, 300, 100]), threshold=300).as_recorded.extrapolated


def test_flexible_start_stays_inside_the_series():
    series = hourly([400, 400, 400, 100])  # a later start would run into the end of the series
    result = whatif(TWO_HOUR_RUN, series, window_h=24, threshold=300)
    assert result.flexible_start.start_unix == T0 + 2 * HOUR  # 400 + 100, the last window inside
    assert not result.flexible_start.extrapolated and "window cut to 2 h" in result.flexible_start.detail


def test_plot_draws_the_series_at_its_own_steps_on_its_own_figure(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    from greencallbacks import figures

    backend = matplotlib.get_backend()
    drawn = []
    real_save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: (drawn.append(figure), real_save(figure, path))[1])
    run = [record(T0 + 1800, 2 * HOUR, 2.0)]  # starts half past: the steps are at 0.5 h, 1.5 h after it
    result = whatif(run, SERIES, window_h=0, threshold=300)
    result.plot(tmp_path / "w.pdf", SERIES)
    assert (tmp_path / "w.pdf").read_bytes()[:5] == b"%PDF-"
    line = drawn[0].axes[0].lines[0]
    assert list(line.get_xdata())[:3] == [0.0, 0.5, 1.5]
    assert list(line.get_ydata())[:3] == [400.0, 100.0, 400.0]
    assert matplotlib.get_backend() == backend
    with pytest.raises(ValueError, match="must end in"):
        result.plot(tmp_path / "w.jpeg", SERIES)


def test_main_finds_runs_under_a_log_root_and_reports_each(tmp_path, capsys):
    for name, start in (("version_0", T0), ("version_1", T0 + 5 * HOUR)):
        writer = RecordWriter(tmp_path / "logs" / name / "energy" / "energy-records.jsonl")
        for r in (record(start, HOUR, 1.0), record(start + HOUR, HOUR, 1.0, seq=1)):
            writer.write(dataclasses.replace(r, run_id=name))
    series = write_series(tmp_path / "grid.csv", zip(SERIES.times_unix, SERIES.values_g_per_kwh))
    assert main([str(tmp_path / "logs"), "--intensity", str(series), "--threshold", "300"]) == 0
    out, err = capsys.readouterr()
    assert "## Run version_0" in out and "## Run version_1" in out and "2 runs found" in err
    assert main([str(tmp_path / "logs"), "--intensity", str(series), "--run-id", "version_1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "version_1"
    assert main([str(tmp_path / "logs"), "--intensity", str(series), "--run-id", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--run-id 'nope' is not among the runs found: version_0, version_1" in err and "run_id=" not in err
    if importlib.util.find_spec("matplotlib") is not None:  # without it, --plot asks for it first
        assert main([str(tmp_path / "logs"), "--intensity", str(series), "--plot", str(tmp_path / "p.bmp")]) == 2
        assert "must end in .png, .pdf or .svg" in capsys.readouterr().err
    assert main([str(tmp_path / "logs"), "--intensity", str(series), "--window-h", "-1"]) == 2
    assert "--window-h must be" in capsys.readouterr().err


def test_main_refuses_a_series_of_another_year(recorded_run, tmp_path, capsys):
    run, _ = recorded_run
    old = write_series(tmp_path / "2020.csv", [(T0 - 2 * 365 * 24 * HOUR + i * HOUR, 100) for i in range(24)])
    assert main([str(run), "--intensity", str(old)]) == 2
    err = capsys.readouterr().err
    assert "covers" in err and "Give a series that covers the run" in err and "Traceback" not in err


# --------------------------------------------------------------- pausing nothing, resumed runs
def test_a_pause_scenario_that_pauses_nothing_saves_exactly_nothing():
    # Odd durations on a per-second series: splitting the phases anew would round differently.
    series = IntensitySeries(tuple(T0 + i for i in range(200)), tuple(100.0 + (i * 37) % 50 for i in range(200)), "s")
    run, start = [], T0 + 0.3
    for index in range(10):
        run.append(record(start, 0.7 + index * 0.13, 1e-4 * (index + 1) / 3, seq=index))
        start += 0.7 + index * 0.13
    paused = whatif(run, series, threshold=1000, window_h=0).pause_resume
    assert "paused 0 s in 0 pause(s)" in paused.detail
    assert paused.saving_g == 0.0 and paused.saving_pct == 0.0


def resumed_run():
    """Attempt 0 ran hour 0, crashed; attempt 1 resumed at hour 3 and ran hour 3: 2 h idle between."""
    return [record(T0, HOUR, 1.0), dataclasses.replace(record(T0 + 3 * HOUR, HOUR, 1.0, seq=1), attempt=1)]


def test_a_resumed_run_is_timed_by_its_attempts_not_the_idle_time_between():
    result = whatif(resumed_run(), hourly([100, 400, 400, 400, 100, 100, 100, 100, 100]), threshold=300)
    assert result.run_duration_s == 2 * HOUR and result.idle_s == 2 * HOUR and result.attempts == 2
    assert "over 2 h in 2 attempts (2 h idle between them, not counted)" in result.to_markdown()
    assert result.as_recorded.co2eq_g == pytest.approx(100 + 400)
    # Idle hours 1-2 are not paused (nothing runs then); hour 3 is, within a budget of the 2 h it ran.
    paused = result.pause_resume
    assert paused.co2eq_g == pytest.approx(100 + 100) and paused.detail.startswith("paused 1 h in 1 pause(s)")
    assert paused.end_unix == T0 + 5 * HOUR


def test_a_resumed_runs_pauses_are_budgeted_on_its_running_time():
    # Every hour after the first is dirty: the run may pause 2 h (its running time), not 4 h (first start to last end).
    series = hourly([100] + [400] * 5 + [100] * 6)
    paused = whatif(resumed_run(), series, threshold=300).pause_resume
    assert paused.detail.startswith("paused 2 h in 1 pause(s)") and paused.end_unix == T0 + 6 * HOUR
    assert paused.co2eq_g == pytest.approx(100 + 400)  # the budget ran out at hour 5
    # The default threshold's span: 4 h from first start to last end, and 2 h of pauses.
    assert "the median over the 6 h the run may span" in whatif(resumed_run(), series).threshold_note


def test_main_says_a_runs_error_in_one_line_when_several_runs_are_found(tmp_path, capsys):
    for name, start in (("version_0", T0), ("version_1", T0 + 400 * 24 * HOUR)):  # the series covers only the first
        writer = RecordWriter(tmp_path / "logs" / name / "energy" / "energy-records.jsonl")
        writer.write(dataclasses.replace(record(start, HOUR, 1.0), run_id=name))
    series = write_series(tmp_path / "grid.csv", zip(SERIES.times_unix, SERIES.values_g_per_kwh))
    assert main([str(tmp_path / "logs"), "--intensity", str(series)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("greencallbacks whatif: error: run version_1: "), err


def test_recorded_co2eq_priced_with_another_intensity_is_told_apart_from_the_as_recorded_row():
    """A run priced at a given 300 g/kWh when it ran, analysed with a series of 100-500 g/kWh: the
    records' CO2eq and the as-recorded row differ, and the output says why (in text and json)."""
    import dataclasses

    run = [dataclasses.replace(r, co2eq_g=r.energy_kwh * 300.0, intensity_gco2eq_per_kwh=300.0,
                               intensity_source="user-supplied intensity") for r in TWO_HOUR_RUN]
    result = whatif(run, SERIES, threshold=300)
    assert result.recorded_co2eq_g != pytest.approx(result.as_recorded.co2eq_g)
    assert result.as_recorded.name == "as recorded, priced at this series"
    assert result.recorded_g_per_kwh == pytest.approx(300.0)
    text = result.to_markdown()
    assert "Recorded CO2eq: " in text and "(priced when it ran at 300 gCO2eq/kWh on average" in text
    assert "is the records' own, priced when the run ran" in text and f"with {result.series_name}" in text
    assert result.to_dict()["recorded_note"] == result.recorded_note != ""
    # Priced with the series itself, the two agree and no note is needed.
    priced_by_series = [dataclasses.replace(r, co2eq_g=g) for r, g in zip(TWO_HOUR_RUN, (400.0, 100.0))]
    assert whatif(priced_by_series, SERIES, threshold=300).recorded_note == ""


@pytest.mark.parametrize("threshold", [2000.01, 1e9])
def test_a_threshold_above_any_intensity_is_refused_as_every_intensity_is(threshold):
    """Above 2000 g/kWh, the bound of every intensity here, the run would never pause: accepted before."""
    from greencallbacks.whatif import check_options

    with pytest.raises(ValueError, match=r"threshold must be a number of gCO2eq/kWh > 0 and at most 2000"):
        check_options(24, threshold)
    check_options(24, 2000)
