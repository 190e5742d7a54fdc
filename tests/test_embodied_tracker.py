"""Embodied CO2eq in the tracker: per record from the sensors' device models, summed over ranks,
re-derived on resume, in the summary and the metrics, and absent (not 0) where nothing is known."""

from __future__ import annotations

import json
import threading

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.embodied import amortised_g, footprints
from greencallbacks.meter import Meter
from greencallbacks.records import Record, read_records
from greencallbacks.sensors.base import Kind
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.test_tracker import ThreadReducer, run_epochs

H100 = "NVIDIA H100 80GB HBM3"


class Described(ScriptedSensor):
    def __init__(self, *args, model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = model

    def describe(self) -> dict:
        return {**super().describe(), **({"model": self.model} if self.model else {})}


def start(tmp_path, sensors, clock, **kwargs):
    tracker = Tracker(carbon=Carbon(intensity=400.0), output_dir=tmp_path, **kwargs)
    tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    return tracker


def test_each_record_bills_its_gpu_footprint_for_its_duration_apart_from_co2eq(tmp_path):
    clock = FakeClock()
    tracker = start(tmp_path, [Described("gpu0", clock, model=H100)], clock)
    run_epochs(tracker, clock, epochs=2)
    records = read_records(tmp_path)
    h100 = footprints()["H100 SXM"]
    for r in records:
        assert r.embodied_co2eq_g == pytest.approx(amortised_g(h100.kgco2eq, r.duration_s))
        assert r.embodied_co2eq_g_low == pytest.approx(amortised_g(h100.low_kgco2eq, r.duration_s))
        assert r.co2eq_g == pytest.approx(r.energy_kwh * 400.0)  # operational, untouched
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["embodied_co2eq_g"] == pytest.approx(sum(r.embodied_co2eq_g for r in records))
    assert summary["co2eq_g"] == pytest.approx(sum(r.co2eq_g for r in records))
    assert [s["key"] for s in summary["embodied_sources"]] == ["H100 SXM", "lifetime_years", "utilisation"]
    assert tracker.metrics("train")["embodied_co2eq_g_total"] == pytest.approx(summary["embodied_co2eq_g"])


def test_without_a_known_device_there_is_no_embodied_figure_and_the_summary_says_why(tmp_path):
    clock = FakeClock()
    cpu = Described("cpu", clock, kind=Kind.CPU, power_w=50.0)
    tracker = start(tmp_path, [Described("gpu0", clock), cpu], clock)
    run_epochs(tracker, clock, epochs=1)
    assert all(r.embodied_co2eq_g is None for r in read_records(tmp_path))
    assert "embodied_co2eq_g_total" not in tracker.metrics("train")
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["embodied_co2eq_g"] is None
    assert any("GPU model not known" in m for m in summary["embodied_missing"])
    assert any("pass host='server'" in m for m in summary["embodied_missing"])


def test_embodied_false_turns_it_off_and_bad_settings_fail_at_construction(tmp_path):
    clock = FakeClock()
    tracker = start(tmp_path, [Described("gpu0", clock, model=H100)], clock, embodied=False)
    run_epochs(tracker, clock, epochs=1)
    assert all(r.embodied_co2eq_g is None for r in read_records(tmp_path))
    for bad, word in (({"host": "laptop"}, "host"), ({"utilisation": 1.5}, "utilisation"), ("yes", "embodied")):
        with pytest.raises(ValueError, match=word):
            Tracker(embodied=bad)


def run_two_ranks(tmp_path, models, embodied):
    """Two ranks of one host on threads, each with its GPU of ``models[rank]``, rank 0 measuring the
    host's CPU (as one rank per host does): their trackers, and the run's summary."""
    shared = ([None, None], threading.Barrier(2))
    results = {}

    def rank_main(rank):
        clock = FakeClock()
        sensors = [Described(f"gpu{rank}", clock, model=models[rank])]
        if rank == 0:  # one rank per host measures CPU and RAM: the host goes with them
            sensors.append(Described("cpu", clock, kind=Kind.CPU, power_w=50.0))
        tracker = Tracker(carbon=Carbon(intensity=400.0), output_dir=tmp_path, run_id="ddp", embodied=embodied)
        tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9),
                      reducer=ThreadReducer(rank, shared))
        run_epochs(tracker, clock, epochs=1)
        results[rank] = tracker

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return results, json.loads((tmp_path / "energy-summary.json").read_text())


def test_two_ranks_sum_their_devices_and_bill_the_host_once(tmp_path):
    results, _ = run_two_ranks(tmp_path, (H100, H100), {"host": "server", "host_share": 0.25})
    train = results[0].last["train"]
    per_second = 2 * amortised_g(footprints()["H100 SXM"].kgco2eq, 1.0) + amortised_g(0.25 * footprints()["server"].kgco2eq, 1.0)
    assert train.embodied_co2eq_g == pytest.approx(per_second * train.duration_s)
    assert results[0].metrics("train") == results[1].metrics("train")


def test_resume_re_derives_the_embodied_total_from_the_records(tmp_path):
    clock = FakeClock()
    first = start(tmp_path, [Described("gpu0", clock, model=H100)], clock)
    run_epochs(first, clock, epochs=1)
    state = first.state_dict()
    second = Tracker(carbon=Carbon(intensity=400.0), output_dir=tmp_path)
    second.load_state_dict(state)
    second.start(Meter([Described("gpu0", clock, model=H100)], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    run_epochs(second, clock, epochs=1)
    records = read_records(tmp_path)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["attempts"] == 2
    assert summary["embodied_co2eq_g"] == pytest.approx(sum(r.embodied_co2eq_g for r in records))


def test_records_written_before_the_field_still_load_and_a_wrong_type_is_named():
    old = Record(run_id="r", phase="train", epoch=0, seq=0, start_time="2026-01-01T00:00:00+00:00", duration_s=1.0,
                 samples=1, it_energy_kwh=0.001, energy_kwh=0.001, co2eq_g=0.4, intensity_gco2eq_per_kwh=400.0,
                 intensity_source="t", pue=1.0, energy_j_per_sample=3.6, co2eq_g_per_sample=0.4).to_dict()
    for key in ("embodied_co2eq_g", "embodied_co2eq_g_low", "embodied_co2eq_g_high"):
        del old[key]
    assert Record.from_dict(old).embodied_co2eq_g is None
    with pytest.raises(TypeError, match="embodied_co2eq_g"):
        Record.from_dict({**old, "embodied_co2eq_g": "0.1"})


def test_a_mig_instance_bills_its_share_of_the_gpu_in_records_and_summary(tmp_path):
    from greencallbacks.sensors.share import Apportioned

    clock = FakeClock()
    mig = Apportioned(Described("gpu0", clock, model=H100), 3 / 7, "MIG instance: 3 of the GPU's 7 compute slices")
    tracker = start(tmp_path, [mig], clock)
    run_epochs(tracker, clock, epochs=2)
    records = read_records(tmp_path)
    h100 = footprints()["H100 SXM"]
    for r in records:
        assert r.embodied_co2eq_g == pytest.approx(3 / 7 * amortised_g(h100.kgco2eq, r.duration_s))
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["embodied_co2eq_g"] == pytest.approx(3 / 7 * amortised_g(h100.kgco2eq, sum(r.duration_s for r in records)))
    assert summary["embodied_sources"][0]["billed"] == [f"gpu0 ({H100}) x 0.4286 (its share of the device)"]
