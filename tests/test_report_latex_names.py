"""CO2 typeset as CO$_2$ in the LaTeX report's sentences, and in no name quoted there.

An intensity series named by its file, "uk_CO2_grid.csv" or "CO2-2026.csv", is the grid of the
configuration in the caption and the source in the statement: set as CO$_2$ there, the paper quoted
a file "uk\\_CO$_2$\\_grid.csv" that is not the one the run was priced with.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from greencallbacks.cli import main
torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from tests.lightning_models import flavour, loaders, trainer_kwargs  # noqa: E402


@pytest.mark.parametrize("name", ["uk_CO2_grid.csv", "CO2-2026.csv"])
def test_a_series_file_holding_co2_in_its_name_is_quoted_as_written(tmp_path, capsys, name):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    series = tmp_path / name
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(
        f"{(now + timedelta(hours=h)).isoformat()},{100 + 50 * (h % 3)}\n" for h in range(-2, 30)))
    train, val = loaders()
    callback = EnergyCallback(series=str(series), output_dir=tmp_path / "energy")
    L.Trainer(callbacks=[callback], logger=False, max_epochs=1, **trainer_kwargs()).fit(TinyModel(), train, val)
    # A second configuration (a number given as the intensity): the caption then names each one's grid.
    other = EnergyCallback(intensity=100.0, output_dir=tmp_path / "energy")
    L.Trainer(callbacks=[other], logger=False, max_epochs=1, **trainer_kwargs()).fit(TinyModel(), train, val)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "energy"), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    quoted = name.replace("_", r"\_")
    assert f"time series {quoted} (CSV)" in latex  # was "time series uk\_CO$_2$\_grid.csv (CSV)"
    assert f"grid series:{quoted}, PUE 1)" in latex  # the caption's configuration
    assert "CO$_2$-" not in latex and r"\_CO$_2$" not in latex
    assert "gCO$_2$eq/kWh" in latex and "mgCO$_2$eq" in latex  # the units still typeset
    assert latex.count("$") % 2 == 0
