"""Numbers and tables as people read them: units, mean ± error, CSV numbers, Markdown tables."""

from __future__ import annotations

import pytest

from greencallbacks.textformat import (
    ENERGY_UNITS,
    MASS_UNITS,
    column_texts,
    csv_number,
    energy_text,
    mass_text,
    markdown_table,
    number,
    pick_unit,
    plus_minus,
    printable,
    pue_text,
    value_and_error,
)


@pytest.mark.parametrize(
    "values, unit",
    [([0.0325], "Wh"), ([2.0e-7, 1.4e-7], "mWh"), ([3.0], "kWh"), ([0.9], "Wh"), ([], "kWh"), ([None, 0.002], "Wh")],
)
def test_pick_unit_reads_between_1_and_1000(values, unit):
    assert pick_unit(values, ENERGY_UNITS)[0] == unit


def test_pick_unit_for_grams():
    assert pick_unit([1500.0], MASS_UNITS) == ("kg", 1e-3)
    assert pick_unit([0.02], MASS_UNITS) == ("mg", 1e3)


@pytest.mark.parametrize(
    "mean, error, text",
    [
        (5.07, 0.5023, "5.07 ± 0.50"),  # two significant digits of the error, the mean to match
        (12.5, 1.443, "12.5 ± 1.4"),
        (90.0, 10.4, "90 ± 10"),
        (123456.0, 1543.0, "123500 ± 1500"),
        (2.0, 0.0, "2.00 ± 0"),
        (4.2, None, "4.20"),  # one run: no ±
        (5.07e-9, 5.0e-10, "5.07e-9 ± 0.50e-9"),
        # Repeats that agree to 7+ digits: the error is below the mean's last digit, so each is
        # written to its own precision (this recursed without end for a mean in [1, 10)).
        (5.0, 1e-7, "5.00 ± 1.0e-07"),
        (1e-3, 1e-9, "0.00100 ± 1.0e-09"),
        (0.0, 1e-7, "0.0e-7 ± 1.0e-7"),
        # Below a millionth of a millionth of the mean: float sums in another order, not spread.
        (417.0, 2.7e-14, "417 ± 0"),
        (4.17e-4, 4e-17, "4.17e-04 ± 0"),
    ],
)
def test_value_and_error(mean, error, text):
    assert plus_minus(mean, error) == text


def test_number_keeps_three_significant_digits():
    assert [number(v) for v in (0.99996, 36.0, 0.0325, 2.5e-7, 1234567.0, 0.0, None, 7)] == [
        "1.00", "36.0", "0.0325", "2.50e-07", "1.23e+06", "0", "n/a", "7"]
    assert value_and_error(float("nan"), 1.0) == ("n/a", None)


def test_csv_number_is_short_and_round_trips_what_is_measured():
    assert csv_number(56.038999999999994) == "56.039"
    assert csv_number(1 / 3) == "0.333333333333" and float(csv_number(1 / 3)) == pytest.approx(1 / 3, rel=1e-12)
    assert csv_number(None) == "" and csv_number(3) == 3 and csv_number("x") == "x"


def test_markdown_table_aligns_and_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", 1.5]], "lr")
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1.5 |"]
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a"], [], "lr")


def test_energy_mass_and_pue_in_words():
    assert energy_text(2.053e-05) == "20.5 mWh"
    assert energy_text(1.2, 0.1) == "1.20 ± 0.10 kWh"
    assert mass_text(7.82e-03) == "7.82 mgCO2eq"
    assert mass_text(1234.0) == "1.23 kgCO2eq"
    # The source is said once, without parentheses nested in parentheses.
    assert pue_text(1.0, "1.0: IT energy only (no PUE given and no cloud region)") == (
        "1, IT energy only (no PUE given and no cloud region)"
    )
    assert pue_text(1.09, "") == "1.09"


def test_printable_names_keep_their_text_and_others_are_one_quoted_line():
    assert printable("run-1 a/b|c") == "run-1 a/b|c"
    assert printable("r\nx\t") == "'r\\nx\\t'"


def test_a_column_is_in_one_notation():
    """Plain where every cell reads plain (each cell as ``value_and_error`` rounds it alone); else
    one exponent for the column, its largest value's, each cell with its own digits; a value too
    far below the largest for six decimals at that exponent takes its own, still scientific."""
    plain = [(4.8, 1.2), (3.65, 0.15), None, (0.0004, None)]
    assert column_texts(plain) == [value_and_error(4.8, 1.2), value_and_error(3.65, 0.15), None, ("0.000400", None)]
    assert column_texts([(0.01637, 0.00011), (0.0148776, 0.0000027), (0.02, None), None, (0.0, None)]) == [
        ("1.637e-2", "0.011e-2"), ("1.48776e-2", "0.00027e-2"), ("2.00e-2", None), None, ("0", None)]
    assert column_texts([(1.2e6, None), (0.05, None)]) == [("1.20e6", None), ("5.00e-2", None)]
    assert column_texts([(0.51, None), (1.2e-6, None)], 2) == [("5.1e-1", None), ("1.2e-6", None)]
    # Repeats equal but for their float sums keep their "± 0"; a SE past six decimals of its own mean too.
    assert column_texts([(3e-5, 1e-6), (3e-5, 0.0)]) == [("3.00e-5", "0.10e-5"), ("3.00e-5", "0")]
    assert column_texts([(5.0000001, 1e-7), (4.0, 0.1)]) == [("5.00", "1.0e-07"), ("4.00", "0.10")]
