"""Ex-ante estimates: the formula by hand, the GPU table, and errors that name the argument."""

from __future__ import annotations

import math

import pytest

from greencallbacks.carbon.intensity import country_intensity, zone_intensity
from greencallbacks.estimate import estimate, format_estimate, gpu_power, gpu_table, list_gpus


def test_one_h100_for_ten_hours_in_france_by_hand():
    result = estimate(gpu="H100 SXM", gpus=1, hours=10, country="FR", pue=1.0)
    fr = country_intensity("FR").g_per_kwh
    assert result["energy_kwh"] == pytest.approx(7.0)  # 10 h x 700 W
    assert result["co2eq_g"] == pytest.approx(7.0 * fr)
    assert result["intensity"]["g_per_kwh"] == pytest.approx(fr)
    assert "not measured" in result["method"]
    assert result["gpu"]["tdp_w"] == 700 and "datasheet" in result["gpu"]["source"]


def test_full_formula_with_cpu_memory_usage_pue_and_comparison():
    result = estimate(
        gpu="A100 PCIe 40GB", gpus=4, hours=2, usage=0.5, cpu_cores=8, cpu_w_per_core=12.0, memory_gb=64,
        intensity=300.0, pue=1.5, compare=["DE", "US-CA"],
    )
    watts = 4 * 250 * 0.5 + 8 * 12.0 + 64 * 0.37
    assert result["power_w"]["total"] == pytest.approx(watts)
    assert result["it_energy_kwh"] == pytest.approx(2 * watts / 1000)
    assert result["energy_kwh"] == pytest.approx(2 * watts / 1000 * 1.5)
    assert result["co2eq_g"] == pytest.approx(result["energy_kwh"] * 300.0)
    de, ca = result["compare"]
    assert de["co2eq_g"] == pytest.approx(result["energy_kwh"] * zone_intensity("DE").g_per_kwh)
    assert ca["g_per_kwh"] == pytest.approx(zone_intensity("US-CA").g_per_kwh)


def test_cpu_tdp_and_user_gpu_tdp():
    result = estimate(gpu_tdp_w=123.0, gpus=2, cpu_tdp_w=200.0, hours=1, intensity=100.0)
    assert result["energy_kwh"] == pytest.approx((2 * 123 + 200) / 1000)
    assert result["gpu"]["source"] == "user-supplied gpu_tdp_w"


def test_gpu_names_are_matched_loosely_but_never_guessed():
    assert gpu_power("NVIDIA H100 80GB HBM3").model == "H100 SXM"  # the nvidia-smi name
    assert gpu_power("tesla t4").tdp_w == 70
    assert gpu_power("NVIDIA A100-SXM4-80GB").tdp_w == 400
    with pytest.raises(ValueError, match="ambiguous.*H100 SXM.*H100 PCIe"):
        gpu_power("H100")
    with pytest.raises(ValueError, match="unknown gpu 'RTX 4080'.*RTX 4090"):
        gpu_power("RTX 4080")


def test_gpu_table_rows_have_power_year_and_datasheet_source():
    assert len(list_gpus()) == len(set(list_gpus())) >= 25
    for gpu, names in gpu_table():
        assert 30 <= gpu.tdp_w <= 1200 and gpu.year and "datasheet" in gpu.source or "specifications" in gpu.source
    # No alias selects two models.
    names = [n for _, ns in gpu_table() for n in set(ns)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"hours": -1}, "hours"),
        ({"hours": 0}, "hours"),
        ({"gpus": 0}, "gpus"),
        ({"usage": 1.5}, "usage"),
        ({"zone": "Atlantis"}, "zone"),
        ({"pue": 0.5}, "pue"),
        ({"gpu": "Quantum 9000"}, "gpu"),
        ({"cpu_tdp_w": 100, "cpu_cores": 4}, "cpu_tdp_w"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    settings = {"gpu": "T4", "hours": 1.0, **kwargs}
    with pytest.raises(ValueError, match=argument):
        estimate(**settings)


def test_nothing_to_estimate():
    with pytest.raises(ValueError, match="nothing to estimate"):
        estimate(hours=1.0)


def test_a_prefix_whose_matches_share_one_power_is_accepted():
    both = gpu_power("A100 SXM")  # 40 GB and 80 GB, both 400 W: the power is known without a guess
    assert both.tdp_w == 400 and both.model == "A100 SXM4 40GB / A100 SXM4 80GB" and "datasheet" in both.source
    with pytest.raises(ValueError, match=r"ambiguous.*\(250 W\).*\(300 W\)"):
        gpu_power("A100 PCIe")  # 40 GB at 250 W, 80 GB at 300 W: the memory size matters here
    with pytest.raises(ValueError, match="ambiguous"):
        gpu_power("A100")  # SXM 400 W, PCIe 250 or 300 W
    with pytest.raises(ValueError, match="unknown gpu 'V100S'"):
        gpu_power("V100S")  # one prefix match is still not taken as that model


def test_embodied_is_shown_apart_from_operational_and_summed_only_in_its_own_line():
    from greencallbacks.embodied import amortised_g, footprints
    from greencallbacks.estimate import format_estimate

    result = estimate(gpu="H100 SXM", gpus=8, hours=100, intensity=50.0, embodied_host="server", host_share=0.5)
    gpu_g = 8 * amortised_g(footprints()["H100 SXM"].kgco2eq, 100 * 3600)
    host_g = amortised_g(0.5 * footprints()["server"].kgco2eq, 100 * 3600)
    assert result["embodied"]["embodied_co2eq_g"] == pytest.approx(gpu_g + host_g)
    assert result["co2eq_g"] == pytest.approx(560 * 50.0)  # operational alone, unchanged
    text = format_estimate(result)
    assert "Embodied:" in text and text.splitlines()[-1].startswith("Operational 28 kg + embodied")
    # A GPU without a published footprint: said, not guessed, and no sum.
    t4 = format_estimate(estimate(gpu="T4", hours=10, intensity=50.0))
    assert "Embodied: not known" in t4 and "left out rather than guessed" in t4 and "Operational" not in t4
    with pytest.raises(ValueError, match="host_share"):
        estimate(gpu="H100 SXM", hours=1, embodied_host="server", host_share=2)


def test_a_prefix_of_several_models_keeps_its_embodied_figure_and_an_unknown_one_is_null():
    """ "A100 SXM" (40 and 80 GB, one power): billed the larger footprint, its range spanning both."""
    import json

    from greencallbacks.embodied import amortised_g, footprints

    both = estimate(gpu="A100 SXM", hours=2, intensity=50.0)["embodied"]
    small, large = footprints()["A100 SXM4 40GB"], footprints()["A100 SXM4 80GB"]
    assert both["embodied_missing"] == []
    assert both["embodied_co2eq_g"] == pytest.approx(amortised_g(max(small.kgco2eq, large.kgco2eq), 2 * 3600))
    assert both["embodied_co2eq_g_low"] == pytest.approx(amortised_g(min(small.low_kgco2eq, large.low_kgco2eq), 2 * 3600))
    assert both["embodied_co2eq_g_high"] == pytest.approx(amortised_g(max(small.high_kgco2eq, large.high_kgco2eq), 2 * 3600))
    assert "either A100 SXM4 40GB or A100 SXM4 80GB" in both["embodied_sources"][0]["source"]
    unknown = json.loads(json.dumps(estimate(gpu="T4", hours=2, intensity=50.0)))["embodied"]
    assert unknown["embodied_co2eq_g"] is None and unknown["embodied_co2eq_g_low"] is None  # not 0 g
    assert unknown["embodied_missing"]


@pytest.mark.parametrize("name", ["H20", "NVIDIA H20", "MI25", "H1"])
def test_a_name_cut_inside_a_model_number_is_unknown_not_ambiguous(name):
    """The H20 is a GPU of its own: it was called an ambiguous prefix of the H200's forms."""
    with pytest.raises(ValueError, match="unknown gpu") as raised:
        gpu_power(name)
    assert "ambiguous" not in str(raised.value)
    assert gpu_power("A100 SXM4").tdp_w == 400  # a prefix ending at a word still fits its forms


def test_many_identical_gpus_are_counted_not_built_one_by_one():
    """A million GPUs were a million dicts (10 s, 363 MB) and a billion hung: one entry, counted."""
    from greencallbacks.embodied import amortised_g
    from greencallbacks.estimate import MAX_GPUS

    result = estimate(gpu="H100 SXM", gpus=MAX_GPUS, hours=1, intensity=100.0)  # a hang: pytest-timeout's
    sources = result["embodied"]["embodied_sources"]
    assert sources[0]["billed"] == [f"gpu0-gpu{MAX_GPUS - 1} (H100 SXM), {MAX_GPUS} devices"]
    assert result["embodied"]["embodied_co2eq_g"] == pytest.approx(amortised_g(164 * MAX_GPUS, 3600))
    assert result["power_w"]["gpu"] == pytest.approx(700 * MAX_GPUS)
    with pytest.raises(ValueError, match=r"gpus must be an integer from 1 to 1,000,000, got 1000000000"):
        estimate(gpu="H100 SXM", gpus=1_000_000_000, hours=1)


@pytest.mark.parametrize("kwargs, named", [
    ({"gpu_tdp_w": 1e308, "gpus": 10, "hours": 1}, "hours, gpus and gpu_tdp_w are too large together"),
    ({"gpu_tdp_w": 1e200, "hours": 1e200}, "hours and gpu_tdp_w are too large together"),
    ({"gpu": "H100 SXM", "hours": 1e308}, "hours is too large"),
    ({"memory_gb": 1e308, "hours": 1}, "hours and memory_gb are too large together"),
])
def test_a_result_that_overflows_is_refused_naming_the_inputs(kwargs, named):
    """It was inf kWh, and Infinity in the JSON (no JSON at all); an hour past the calendar named
    the internal duration_s."""
    from greencallbacks.estimate import EstimateOverflowError

    with pytest.raises(EstimateOverflowError, match=named) as raised:
        estimate(intensity=100.0, **kwargs)
    assert "duration_s" not in str(raised.value)


@pytest.mark.parametrize("kwargs, named", [({"gpus": 4}, "gpus describe"), ({"usage": 0.5}, "usage describe"),
                                           ({"gpus": 2, "usage": 0.5}, "gpus and usage describe")])
def test_gpu_count_or_usage_without_a_gpu_is_refused_not_ignored(kwargs, named):
    with pytest.raises(ValueError, match=rf"{named} the GPUs: give gpu or gpu_tdp_w"):
        estimate(hours=1, cpu_cores=4, **kwargs)


def test_a_core_count_past_any_float_is_an_overflow_not_an_internal_error():
    from greencallbacks.estimate import EstimateOverflowError

    with pytest.raises(EstimateOverflowError, match="cpu_cores is too large"):
        estimate(hours=1, cpu_cores=10**400)


@pytest.mark.parametrize(
    "place, zone",
    [("us-east-1", "aws:us-east-1"), ("westeurope", "azure:westeurope"), ("West Europe", "azure:westeurope"),
     ("California", "US-CA"), ("UK", "GBR")],
)
def test_compare_takes_every_name_the_location_arguments_take(place, zone):
    """--compare refused the bare region names --region accepts (it took only names with ':')."""
    from greencallbacks.carbon import Carbon

    kind = "region" if ":" in zone else "zone"
    (row,) = estimate(gpu="T4", hours=1, intensity=100.0, compare=[place])["compare"]
    expected = Carbon(**{kind: place}).intensity_between(0, 1)
    assert row["zone"] == place and row["g_per_kwh"] == expected.g_per_kwh and zone in row["source"]


def test_a_comparison_across_bases_says_so_and_one_of_one_basis_does_not():
    from greencallbacks.estimate import format_estimate

    mixed = format_estimate(estimate(gpu="T4", hours=1, country="FR", compare=["US-CA", "aws:us-east-1"]))
    assert "note: these figures mix bases" in mixed and "life-cycle" in mixed and "direct (combustion)" in mixed
    same = format_estimate(estimate(gpu="T4", hours=1, country="FR", compare=["DE", "PL"]))
    assert "mix bases" not in same


@pytest.mark.parametrize("name, board_w", [("AMD Instinct MI250X", 560), ("MI250", 560), ("Tesla K80", 300)])
def test_a_two_die_board_is_estimated_per_device(name, board_w):
    """rocm-smi / nvidia-smi list each die as a device: 8 MI250X devices are 4 boards, 2,240 W."""
    gpu = gpu_power(name)
    assert gpu.tdp_w == board_w / 2 and gpu.devices_per_board == 2
    assert f"{board_w // 2} W per device" in gpu.source
    result = estimate(gpu=name, gpus=8, hours=1, intensity=100.0)
    assert result["power_w"]["gpu"] == pytest.approx(4 * board_w)
    assert gpu_power("MI300X").tdp_w == 750 and gpu_power("MI300X").devices_per_board == 1


def test_the_command_line_counts_devices(capsys):
    from greencallbacks.cli import main

    assert main(["estimate", "--gpu", "AMD Instinct MI250X", "--gpus", "8", "--hours", "1", "--intensity", "100"]) == 0
    out = capsys.readouterr().out
    assert "= 2240 W" in out and "4480" not in out
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    gpus_help = " ".join(capsys.readouterr().out.split("\n  --gpus GPUS")[1].split("--hours")[0].split())
    assert gpus_help.startswith("number of GPU devices as nvidia-smi / rocm-smi list them")


@pytest.mark.parametrize(
    "model, year",
    [("A100 SXM4 40GB", 2020), ("A100 SXM4 80GB", 2020), ("A100 PCIe 40GB", 2020), ("A100 PCIe 80GB", 2021),
     ("H100 SXM", 2022), ("H100 PCIe", 2022), ("V100 SXM2", 2017), ("V100 PCIe", 2017), ("H200 SXM", 2023)],
)
def test_the_year_column_is_the_year_the_product_was_announced(model, year):
    from greencallbacks.carbon.tables import table_comment

    assert "the year the product was announced" in table_comment("gpu_power.csv")
    assert gpu_power(model).year == year


def test_a100_sxm4_without_its_memory_size_is_either_variant():
    """ "A100 SXM4" was an alias of the 40 GB row: its smaller footprint was taken silently."""
    from greencallbacks.embodied import lookup

    assert gpu_power("A100 SXM4").model == "A100 SXM4 40GB / A100 SXM4 80GB"
    footprint, _ = lookup("A100 SXM4")
    assert footprint is not None and footprint.key == "A100 SXM4 40GB / A100 SXM4 80GB" and footprint.kgco2eq == 150
    assert estimate(gpu="A100 SXM4", hours=1, intensity=1.0)["embodied"] == estimate(
        gpu="A100 SXM", hours=1, intensity=1.0)["embodied"]
    assert lookup("NVIDIA A100-SXM4-40GB")[0].kgco2eq == 127.6  # the memory size given: that row


def test_an_intensity_of_minus_zero_prices_at_zero():
    """-0.0 passes every check of an intensity >= 0 and was printed "-0 kg at -0 gCO2eq/kWh"."""
    result = estimate(hours=1, gpu="T4", intensity=-0.0)
    assert math.copysign(1.0, result["co2eq_g"]) == 1.0
    assert math.copysign(1.0, result["intensity"]["g_per_kwh"]) == 1.0
    assert "-0" not in format_estimate(result)
