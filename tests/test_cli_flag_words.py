"""The command line speaks in its flags: `--intensity` that is no number names the flag and what it
takes, not a function of ours (it read "invalid _number value: 'abc'"); a warning of the library
names the command's flags for its arguments (the demo said "Pass country=, zone=, region= or
intensity= for your grid.")."""

from __future__ import annotations

import io

import pytest

from greencallbacks.cli import _one_line_warning, main
from greencallbacks.meter import EnergyWarning


@pytest.mark.parametrize("argv", [
    ["estimate", "--hours", "1", "--gpu", "T4", "--intensity", "abc"],
    ["demo", "--intensity", "1,5"],
])
def test_an_intensity_that_is_no_number_says_what_the_flag_takes(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    err = capsys.readouterr().err
    assert raised.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "argument --intensity: must be a number of gCO2eq/kWh, got " in err, err
    assert "_number" not in err


def test_an_intensity_flag_still_reads_a_number_and_minus_zero_as_zero(capsys):
    assert main(["estimate", "--hours", "1", "--gpu", "T4", "--intensity", "-0"]) == 0
    assert "at 0 gCO2eq/kWh" in capsys.readouterr().out


@pytest.mark.parametrize("command, said", [
    ("demo", "Pass --country, --zone, --region or --intensity for your grid; pass run_id= to choose."),
    ("report", "Pass country=, zone=, region= or intensity= for your grid; pass --run-id to choose."),
])
def test_a_library_warning_names_the_flags_its_command_has(command, said):
    text = "greencallbacks: Pass country=, zone=, region= or intensity= for your grid; pass run_id= to choose."
    shown = io.StringIO()
    _one_line_warning(command)(EnergyWarning(text), EnergyWarning, __file__, 1, file=shown)
    assert shown.getvalue() == f"greencallbacks {command}: warning: {said}\n"
