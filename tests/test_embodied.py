"""Embodied emissions: every table row is cited with a range, unknown devices are left out with a
reason, and the amortisation arithmetic by hand."""

from __future__ import annotations

import math

import pytest

from greencallbacks.carbon.tables import read_rows, table_comment
from greencallbacks.embodied import (
    DEFAULT_LIFETIME_YEARS,
    DEFAULT_UTILISATION,
    TABLE,
    Embodied,
    amortised_g,
    embodied_for,
    footprints,
    lookup,
)
from greencallbacks.estimate import list_gpus
from greencallbacks.meter import Component

YEAR_S = 365.25 * 86400
H100 = "NVIDIA H100 80GB HBM3"  # the name NVML reports for an H100 SXM


def test_every_row_cites_a_source_url_year_licence_and_a_range():
    rows = read_rows(TABLE)
    assert len(rows) == len(footprints()) >= 6
    assert "hand-transcribed" in table_comment(TABLE)
    for row in footprints().values():
        assert len(row.source) > 40 and row.url.startswith("https://"), row.key
        assert 2015 <= row.year <= 2030, row.key
        assert row.licence.strip() and row.range_basis.strip(), row.key
        assert 0 < row.low_kgco2eq <= row.kgco2eq <= row.high_kgco2eq, row.key
        assert row.unit in ("device", "GB", "TB") and row.kind in ("gpu", "server", "dram", "ssd")


def test_gpu_rows_use_the_model_names_of_the_gpu_power_table():
    gpu_keys = [key for key, row in footprints().items() if row.kind == "gpu"]
    assert gpu_keys and set(gpu_keys) <= set(list_gpus())


def test_published_figures_are_the_ones_shipped():
    table = footprints()
    assert table["H100 SXM"].kgco2eq * 8 == pytest.approx(1312)  # NVIDIA HGX H100 PCF, per baseboard
    assert table["B200"].kgco2eq * 8 == pytest.approx(2274)  # NVIDIA HGX B200 PCF, per baseboard
    assert table["server"].kgco2eq == 2500 and table["A100 SXM4 80GB"].kgco2eq == 150  # BLOOM paper


@pytest.mark.parametrize(
    "name, key",
    [
        (H100, "H100 SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
        ("NVIDIA B200", "B200"),
        ("server", "server"),
    ],
)
def test_lookup_by_the_names_sensors_report(name, key):
    footprint, reason = lookup(name)
    assert footprint is not None and footprint.key == key and reason == ""


@pytest.mark.parametrize(
    "name, says",
    [
        ("NVIDIA H200", "(H200 SXM): no published manufacturing footprint"),
        ("NVIDIA H100 PCIe", "(H100 PCIe): no published manufacturing footprint"),
        ("AMD Instinct MI300X", "(MI300X): no published manufacturing footprint"),
        ("H100", "ambiguous"),  # a prefix is never taken as a model
        ("Quadro K600", "model not recognised"),
        ("", "no device model given"),
    ],
)
def test_unknown_or_unpublished_devices_are_none_with_a_reason(name, says):
    footprint, reason = lookup(name)
    assert footprint is None and says in reason
    assert "known:" not in reason  # the reason stays short enough for a record


def test_amortisation_by_hand():
    # 164 kg over one hour of a 5-year life at 85 % utilisation.
    assert amortised_g(164, 3600) == pytest.approx(164_000 * 3600 / (5 * YEAR_S) / 0.85)
    assert amortised_g(164, 3600) == pytest.approx(4.4020, rel=1e-4)
    # Whole life at full utilisation bills the whole footprint.
    assert amortised_g(2.5, 4 * YEAR_S, lifetime_years=4, utilisation=1.0) == pytest.approx(2500.0)
    assert amortised_g(100, 0) == 0.0


def test_gpus_are_billed_once_each_and_unknown_ones_listed_as_missing():
    components = [
        Component("gpu0", "gpu", "counter", 1.0),
        Component("gpu1", "gpu", "counter", 1.0),
        Component("gpu2", "gpu", "counter", 1.0),
        Component("gpu3", "gpu", "counter", 1.0),
    ]
    models = {"gpu0": H100, "gpu1": H100, "gpu2": "NVIDIA H200"}
    grams, (low, high), sources, missing = embodied_for(components, 3600, models=models)
    one = amortised_g(164, 3600)
    assert grams == pytest.approx(2 * one)
    assert low == pytest.approx(2 * amortised_g(114.8, 3600)) and high == pytest.approx(2 * amortised_g(213.2, 3600))
    assert [s["key"] for s in sources] == ["H100 SXM", "lifetime_years", "utilisation"]
    assert sources[0]["billed"] == [f"gpu0 ({H100})", f"gpu1 ({H100})"]
    assert "nvidia.com" in sources[0]["url"] and "10-K" in sources[1]["source"] and "BLOOM" in sources[2]["source"]
    assert len(missing) == 2
    assert missing[0].startswith("gpu2: 'NVIDIA H200' (H200 SXM): no published")
    assert missing[1].startswith("gpu3: GPU model not known")


def test_component_dicts_with_a_model_field_work_too():
    record_components = [{"name": "gpu0", "kind": "gpu", "model": "NVIDIA A100-SXM4-40GB", "energy_j": 5.0}]
    result = embodied_for(record_components, 7200, lifetime_years=4, utilisation=0.5)
    assert result.grams == pytest.approx(127.6e3 * 7200 / (4 * YEAR_S) / 0.5)
    assert result.missing == ()
    assert [s["source"] for s in result.sources[1:]] == ["user-supplied", "user-supplied"]


def test_the_host_is_left_out_by_default_and_billed_by_share_when_named():
    components = [Component("cpu", "cpu", "estimated", 1.0), Component("ram", "ram", "estimated", 1.0)]
    alone = embodied_for(components, 3600)
    assert alone.grams == 0.0 and alone.sources == ()
    assert alone.missing == (
        "host machine of cpu, ram (chassis, board, CPUs, memory): not counted; pass host='server' and host_share= to bill it",
    )
    shared = embodied_for(components, 3600, host="server", host_share=0.25, ram_gb=64)
    assert shared.grams == pytest.approx(amortised_g(2500 * 0.25, 3600) + amortised_g(0.4 * 64, 3600))
    assert shared.missing == ()
    assert [s["key"] for s in shared.sources[:2]] == ["server", "dram"]


def test_result_dict_keeps_embodied_apart_from_operational_co2eq():
    result = embodied_for([{"name": "gpu0", "kind": "gpu", "model": H100}], 3600)
    fields = result.to_dict()
    assert "co2eq_g" not in fields
    assert fields["embodied_co2eq_g"] == pytest.approx(amortised_g(164, 3600))
    assert fields["embodied_co2eq_g_low"] < fields["embodied_co2eq_g"] < fields["embodied_co2eq_g_high"]
    assert isinstance(result, Embodied) and result.missing == ()


def test_other_kinds_are_reported_missing_not_guessed():
    result = embodied_for([{"name": "declared", "kind": "other"}], 60)
    assert result.grams == 0.0 and "no manufacturing footprint for kind 'other'" in result.missing[0]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"duration_s": -1}, "duration_s"),
        ({"duration_s": math.nan}, "duration_s"),
        ({"lifetime_years": 0}, "lifetime_years"),
        ({"lifetime_years": True}, "lifetime_years"),
        ({"utilisation": 1.5}, "utilisation"),
        ({"utilisation": 0}, "utilisation"),
        ({"host": "laptop"}, "host must be one of"),
        ({"host": "dram"}, "host must be one of"),
        ({"host": "server", "host_share": 0}, "host_share"),
        ({"ram_gb": -8}, "ram_gb"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, argument):
    call = {"duration_s": 60, **kwargs}
    with pytest.raises(ValueError, match=argument):
        embodied_for([], call.pop("duration_s"), **call)


def test_a_host_share_without_a_host_fails_at_construction_naming_both():
    # It divides the host's footprint: without a host it was accepted and ignored, unsaid.
    from greencallbacks.embodied import estimate_embodied
    from greencallbacks.tracker import Tracker

    with pytest.raises(ValueError, match=r"host_share needs host \(one of \['server'\]\).*host_share=0.25"):
        embodied_for([], 60, host_share=0.25)
    with pytest.raises(ValueError, match="host_share needs host"):
        Tracker(embodied={"host_share": 0.25})  # what every callback's embodied= builds
    with pytest.raises(ValueError, match="host_share needs host"):
        estimate_embodied(hours=1, gpu="H100 SXM", host_share=0.5)
    # The whole host (the default share) is what estimate and the CLI pass when none was given.
    assert estimate_embodied(hours=1, gpu="H100 SXM", host_share=1.0)["embodied_missing"] == []
    assert embodied_for([{"name": "cpu", "kind": "cpu"}], 3600, host="server").grams == pytest.approx(amortised_g(2500, 3600))


def test_defaults_are_the_documented_ones():
    assert DEFAULT_LIFETIME_YEARS == 5.0 and DEFAULT_UTILISATION == 0.85


def test_estimate_embodied_and_its_text_show_both_parts_and_the_sum():
    from greencallbacks.embodied import estimate_embodied, format_embodied

    fields = estimate_embodied(hours=10, gpu="H100 SXM", gpus=8, host="server", host_share=1.0)
    expected = amortised_g(8 * 164 + 2500, 36_000)
    assert fields["embodied_co2eq_g"] == pytest.approx(expected)
    assert fields["embodied_missing"] == [] and fields["hours"] == 10.0
    assert 1000 < expected < 1100  # 3,812 kg over 10 h of a 5-year life at 85 %
    lines = format_embodied(fields, operational_co2eq_g=500.0)
    assert lines[0].startswith(f"Embodied: {expected / 1000:.4g} kg CO2eq (range ")
    assert any("H100 SXM: 164 kg per device (NVIDIA" in line for line in lines)
    assert lines[-1] == f"Operational 500 g + embodied {expected / 1000:.4g} kg = {(500 + expected) / 1000:.4g} kg CO2eq"

    unpublished = estimate_embodied(hours=1, gpu="H200 SXM", gpus=2)
    # The two GPUs are one line, counted, as they are one entry.
    assert unpublished["embodied_co2eq_g"] == 0.0 and len(unpublished["embodied_missing"]) == 1
    assert any(line.startswith("  not counted: gpu0-gpu1: 'H200 SXM'") for line in format_embodied(unpublished))
    with pytest.raises(ValueError, match="hours"):
        estimate_embodied(hours=0, gpu="H100 SXM")
    with pytest.raises(ValueError, match="gpus"):
        estimate_embodied(hours=1, gpu="H100 SXM", gpus=0)


def test_the_host_is_billed_once_per_host_and_only_with_its_components():
    two_packages = [
        Component("cpu-package-0", "cpu", "counter", 1.0),
        Component("cpu-package-1", "cpu", "counter", 1.0),
        Component("dram-0", "dram", "counter", 1.0),
    ]
    assert embodied_for(two_packages, 3600, host="server").grams == pytest.approx(amortised_g(2500, 3600))
    # Another rank's record: its GPUs only; the host is billed by the rank that measures it.
    gpu_rank = embodied_for([{"name": "gpu1", "kind": "gpu", "model": H100}], 3600, host="server")
    assert gpu_rank.grams == pytest.approx(amortised_g(164, 3600))
    assert gpu_rank.missing == (
        "host 'server': not billed with these components (no cpu or ram among them); billed where the host is measured",
    )


@pytest.mark.parametrize("name", ["NVIDIA H20", "H20", "B20", "AMD Instinct MI25"])
def test_a_name_that_stops_inside_a_model_number_is_another_gpu_not_a_prefix(name):
    # The H20 is a GPU of its own, not an H200 with its form factor left out.
    footprint, reason = lookup(name)
    assert footprint is None
    assert "model not recognised (unknown gpu" in reason and "ambiguous" not in reason


@pytest.mark.parametrize(
    "name, says",
    [
        ("NVIDIA H100", "ambiguous: 'H100 SXM'"),  # a whole model number, still a prefix of its forms
        ("V100", "ambiguous"),
        ("A100 SXM", ""),  # billed as either A100 SXM4, as before
        ("A100 SXM4", ""),
        ("NVIDIA A10", "(A10): no published manufacturing footprint"),
    ],
)
def test_prefixes_at_the_end_of_a_model_number_still_match_as_before(name, says):
    footprint, reason = lookup(name)
    assert says in reason
    assert (footprint is not None) == (says == "")


def test_a_shared_gpu_is_billed_the_share_of_its_footprint_its_sensor_declares():
    from greencallbacks.sensors.base import Kind
    from greencallbacks.sensors.share import Apportioned
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    class Described(ScriptedSensor):
        def describe(self) -> dict:
            return {**super().describe(), "model": H100}

    mig = Apportioned(Described("gpu0", FakeClock(), kind=Kind.GPU), 3 / 7, "MIG instance: 3 of the GPU's 7 compute slices")
    result = embodied_for([mig.describe()], 3600)
    h100 = footprints()["H100 SXM"]
    assert result.grams == pytest.approx(3 / 7 * amortised_g(h100.kgco2eq, 3600))
    assert result.range_g == pytest.approx((3 / 7 * amortised_g(h100.low_kgco2eq, 3600), 3 / 7 * amortised_g(h100.high_kgco2eq, 3600)))
    assert result.sources[0]["billed"] == [f"gpu0 ({H100}) x 0.4286 (its share of the device)"]
    # Without a share, the whole device, as before; a share out of (0, 1] is named.
    assert embodied_for([{"name": "gpu0", "kind": "gpu", "model": H100}], 3600).grams == pytest.approx(amortised_g(h100.kgco2eq, 3600))
    with pytest.raises(ValueError, match="gpu0: share"):
        embodied_for([{"name": "gpu0", "kind": "gpu", "model": H100, "share": 1.5}], 3600)


def test_identical_gpus_are_one_counted_component_and_huge_hours_name_hours():
    from greencallbacks.embodied import estimate_embodied

    fields = estimate_embodied(hours=2, gpu="H100 SXM", gpus=3)
    assert fields["embodied_co2eq_g"] == pytest.approx(amortised_g(3 * 164, 7200))
    assert fields["embodied_sources"][0]["billed"] == ["gpu0-gpu2 (H100 SXM), 3 devices"]
    # A count is a whole number of devices, at least one.
    with pytest.raises(ValueError, match=r"gpu0: count must be an integer >= 1, got 2.5"):
        embodied_for([{"name": "gpu0", "kind": "gpu", "model": H100, "count": 2.5}], 60)
    # Its seconds past the largest float: said of hours, the argument given, not of duration_s.
    with pytest.raises(ValueError, match=r"^hours must be small enough to count in seconds"):
        estimate_embodied(hours=1e308, gpu="H100 SXM")


def test_a_device_of_a_two_die_board_is_billed_half_the_boards_footprint(monkeypatch):
    """An estimate counts devices (8 MI250X devices = 4 boards); a footprint would be the board's.
    No MI250X footprint is published, so a made-up per-board row stands in for one here."""
    from dataclasses import replace

    import greencallbacks.embodied as embodied
    from greencallbacks.embodied import estimate_embodied

    board = replace(footprints()["H100 SXM"], key="MI250X", kgco2eq=200.0, low_kgco2eq=100.0, high_kgco2eq=300.0)
    monkeypatch.setattr(embodied, "footprints", lambda: {**footprints(), "MI250X": board})
    result = estimate_embodied(hours=10, gpu="AMD Instinct MI250X", gpus=8)
    assert result["embodied_co2eq_g"] == pytest.approx(amortised_g(4 * 200.0, 10 * 3600))
    assert result["embodied_co2eq_g_high"] == pytest.approx(amortised_g(4 * 300.0, 10 * 3600))
    assert "x 0.5 (a device's share of its board of 2)" in result["embodied_sources"][0]["billed"][0]
    # A one-device board is billed whole, as before.
    h100 = estimate_embodied(hours=10, gpu="H100 SXM", gpus=8)
    assert h100["embodied_co2eq_g"] == pytest.approx(amortised_g(8 * footprints()["H100 SXM"].kgco2eq, 10 * 3600))


def test_embodied_settings_may_be_any_mapping():
    """Hydra's instantiate hands a config's dict over as a DictConfig, a Mapping: it was refused
    with "embodied must be ... a dict", showing what looked like one."""
    from types import MappingProxyType

    from greencallbacks.embodied_run import checked_settings

    settings = MappingProxyType({"host": "server", "host_share": 0.25})
    assert checked_settings(settings) == {"host": "server", "host_share": 0.25}
    with pytest.raises(ValueError, match="embodied must be"):
        checked_settings(MappingProxyType({"hots": "server"}))
