"""The CO2eq prediction prices the energy to come at an intensity series from where the last
training phase ended. An epoch's validation runs inside its training phase (Lightning's and Keras'
at the epoch's end, a mid-epoch one) and is billed apart, so the training record's start plus its
duration fell short of that end by the validation's time: the window priced began that much too
early. A real Lightning fit on a fake clock, an hourly series turning dirty after 5 hours, epochs of
80 minutes of which 40 are validation: at the end of epoch 3 the prediction priced 20 minutes of
the dirty grid at the clean value (3072 g, where the run emitted 3180 g), and a CO2eq budget of
3100 g stopped the run an epoch late (after epoch 4, 780 g spent, where epoch 3 had shown it).
"""

from __future__ import annotations

import csv
import json
import warnings

import pytest

pytest.importorskip("torch", reason="torch is not installed: the framework flow needs it")

import greencallbacks.session as session_module  # noqa: E402
from greencallbacks import Budget  # noqa: E402
from greencallbacks.ledger import Ledger  # noqa: E402
from greencallbacks.meter import Meter  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.fakes.system_clock import SystemClock  # noqa: E402
from tests.test_embodied_tracker import H100, Described  # noqa: E402
from tests.test_records import make_record  # noqa: E402

pytestmark = pytest.mark.slow

HOUR = 1.7e9 - 1.7e9 % 3600 + 3600
STEP_S, POWER_W = 600.0, 360.0  # 0.06 kWh a batch: 4 training and 4 validation batches an epoch
CLEAN_HOURS, CLEAN, DIRTY = 5, 100.0, 1000.0
RUN_G = 3180.0  # 4 epochs (5 h 20 min) of 0.48 kWh, 5 h at 100 g/kWh and the rest at 1000; 6 more at 1000


@pytest.fixture
def system(monkeypatch):
    system = SystemClock(monkeypatch, unix_s=HOUR)
    monkeypatch.setattr(session_module, "Meter", lambda *a, **k: Meter(*a, clock=system.steady, **k))
    return system


def fit(tmp_path, system, budget):
    from lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Clocked(TinyModel):
        def training_step(self, batch, batch_idx):
            system.advance(STEP_S)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            system.advance(STEP_S)
            return super().validation_step(batch, batch_idx)

    series = tmp_path / "grid.csv"
    values = [CLEAN] * CLEAN_HOURS + [DIRTY] * 20
    series.write_text("timestamp,g_per_kwh\n" + "".join(f"{HOUR + 3600 * k!r},{v}\n" for k, v in enumerate(values)))
    energy = EnergyCallback(sensors=[Described("gpu0", system.steady, model=H100, power_w=POWER_W)], series=str(series),
                            budget=budget, output_dir=tmp_path / "energy")
    trainer = L.Trainer(max_epochs=10, logger=L.loggers.CSVLogger(tmp_path, name="logs"), callbacks=[energy],
                        **trainer_kwargs(val_check_interval=0.5, num_sanity_val_steps=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Clocked(), *loaders())
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    return trainer, [float(r["co2eq_g_predicted"]) for r in rows if r.get("co2eq_g_predicted")]


def test_the_co2_prediction_prices_the_series_from_the_end_of_training_not_before_its_validations(tmp_path, system):
    _, predicted = fit(tmp_path, system, None)
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["co2eq_g"] == pytest.approx(RUN_G, rel=1e-9)
    # Every epoch costs the same, so each prediction (from epoch 3 on) is the run's total exactly.
    assert len(predicted) == 7
    assert predicted == pytest.approx([RUN_G] * 7, rel=1e-9)  # 3072 at epoch 3 before


def test_a_co2_budget_the_run_will_exceed_stops_it_at_the_first_prediction(tmp_path, system):
    trainer, _ = fit(tmp_path, system, Budget(co2eq_g=3100.0, on_exceed="stop"))
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] is True and "predicted co2eq_g 3180 g" in summary["budget"]["reason"]
    assert [r.epoch for r in read_records(tmp_path / "energy") if r.phase == "train"] == [0, 1, 2, 3]
    assert summary["co2eq_g"] == pytest.approx(300.0, rel=1e-9)  # epoch 4 too before: 780 g


def test_the_ledger_counts_the_validations_inside_a_training_phase_in_its_end():
    ledger = Ledger("r")
    start = "2026-01-01T00:00:00.000+00:00"
    inside = [make_record(phase="validation", epoch=0, seq=1, start_time="2026-01-01T00:20:00.000+00:00", duration_s=600.0),
              make_record(phase="validation", epoch=0, seq=2, start_time="2026-01-01T00:50:00.000+00:00", duration_s=600.0)]
    for record in inside:
        ledger.add(record)
    ledger.add(make_record(phase="train", epoch=0, seq=0, start_time=start, duration_s=2400.0))
    assert ledger.last_train_end_unix == pytest.approx(1767225600.0 + 2400.0 + 1200.0)
    ledger.add(make_record(phase="other", epoch=0, seq=3, start_time="2026-01-01T01:00:00.000+00:00", duration_s=60.0))
    assert ledger.last_train_end_unix == pytest.approx(1767225600.0 + 3600.0)  # a gap after it changes nothing
