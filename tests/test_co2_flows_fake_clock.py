"""CO2eq and embodied CO2eq through real Lightning and HF fits on a fake clock: an intensity series
whose value changes on the hour inside an epoch, a PUE, a GPU with an embodied figure; a crash at a
random batch, a resume from the latest checkpoint (the same callback, or a new one given another
series and PUE), then the evaluations and a prediction.

After each run, every record is checked against the series by hand: its CO2eq is its IT energy x
its PUE x the series' time-weighted mean over its own interval (the series of the attempt that
wrote it); the records sum to the summary and to the last logged training total; embodied
CO2eq is the GPU's amortised footprint over the time measured, once (the idle time between the
attempts is no one's), and is kept apart from the operational figure.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import warnings

import pytest

pytest.importorskip("torch", reason="torch is not installed: the framework flows need it")

import greencallbacks.session as session_module  # noqa: E402
from greencallbacks import watch  # noqa: E402
from greencallbacks.carbon import IntensitySeries  # noqa: E402
from greencallbacks.embodied import amortised_g, footprints  # noqa: E402
from greencallbacks.meter import Meter  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.units import J_PER_KWH  # noqa: E402
from tests.fakes.system_clock import SystemClock  # noqa: E402
from tests.test_embodied_tracker import H100, Described  # noqa: E402

pytestmark = pytest.mark.slow

# The run starts 30 s before an hour, when the series' value changes: inside the first training
# step (after Lightning's sanity check of 10 s), which no crash interrupts.
HOUR = 1.7e9 - 1.7e9 % 3600 + 3600
T0 = HOUR - 30.0
STEP_S, EVAL_STEP_S, IDLE_S, POWER_W = 37.0, 5.0, 100.0, 100.0
SETTINGS = {"first": (1.4, [100, 200, 300, 400, 500]), "corrected": (1.2, [50, 60, 70, 80, 90])}


@pytest.fixture
def system(monkeypatch):
    """The records' wall clock and the meter's clock, both fake: the steps below move them."""
    system = SystemClock(monkeypatch, unix_s=T0)
    monkeypatch.setattr(session_module, "Meter", lambda *args, **kwargs: Meter(*args, clock=system.steady, **kwargs))
    return system


def series_files(tmp_path) -> dict[str, tuple[float, str, IntensitySeries]]:
    """Per setting: (PUE, series path, series), hourly values from two hours before the run."""
    out = {}
    for name, (pue, values) in SETTINGS.items():
        hours = [HOUR - 3600.0 * (3 - k) for k in range(len(values))]
        path = tmp_path / f"{name}.csv"
        path.write_text("timestamp,g_per_kwh\n" + "".join(f"{t!r},{v}\n" for t, v in zip(hours, values)))
        out[name] = (pue, str(path), IntensitySeries.from_file(path))
    return out


def check_co2(directory, settings, measured_s: float, logged_train_total: float) -> None:
    records = read_records(directory)
    by_pue = {pue: series for pue, _, series in settings.values()}
    for r in records:
        start = dt.datetime.fromisoformat(r.start_time.replace("Z", "+00:00")).timestamp()
        mean = by_pue[r.pue].mean_between(start, start + r.duration_s).g_per_kwh
        where = f"{r.phase} {r.epoch} attempt {r.attempt}"
        assert r.energy_kwh == pytest.approx(r.it_energy_kwh * r.pue, rel=1e-9), where
        assert r.co2eq_g == pytest.approx(r.energy_kwh * r.intensity_gco2eq_per_kwh, rel=1e-9), where
        assert r.co2eq_g == pytest.approx(r.it_energy_kwh * r.pue * mean, rel=1e-9), where
        assert r.it_energy_kwh * J_PER_KWH == pytest.approx(POWER_W * r.duration_s, rel=1e-9), where
    assert any(r.intensity_gco2eq_per_kwh not in (100.0 * k for k in range(1, 6)) for r in records
               if r.pue == 1.4), "no record spans the hour"
    summary = json.loads((directory / "energy-summary.json").read_text())
    grams = sum(r.co2eq_g for r in records)
    assert summary["co2eq_g"] == pytest.approx(grams, rel=1e-9)
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")
    assert logged_train_total == pytest.approx(sum(r.co2eq_g for r in records[: last_train + 1]), rel=1e-9)
    # Embodied: the H100's footprint over the time measured, once; apart from co2eq_g.
    assert sum(r.duration_s for r in records) == pytest.approx(measured_s, rel=1e-9)
    embodied = amortised_g(footprints()["H100 SXM"].kgco2eq, measured_s)
    assert sum(r.embodied_co2eq_g for r in records) == pytest.approx(embodied, rel=1e-9)
    assert summary["embodied_co2eq_g"] == pytest.approx(embodied, rel=1e-9)
    assert summary["embodied_missing"] == []


@pytest.mark.parametrize("resume", ["same callback", "new callback, another series and PUE"])
def test_a_lightning_fit_crashed_and_resumed_prices_each_record_at_its_own_series_mean(tmp_path, system, resume):
    from lightning_models import Boom, flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    seed = random.randrange(10**6)
    print("seed", seed)
    rng = random.Random(seed)
    fail_at = (rng.randrange(2), rng.randrange(1, 4))  # after a checkpoint (one per step)

    class Clocked(TinyModel):
        def training_step(self, batch, batch_idx):
            system.advance(STEP_S)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            system.advance(EVAL_STEP_S)
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            system.advance(EVAL_STEP_S)
            return super().test_step(batch, batch_idx)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            system.advance(EVAL_STEP_S)
            return super().predict_step(batch, batch_idx, dataloader_idx)

    settings = series_files(tmp_path)

    def callback(name):
        pue, path, _ = settings[name]
        return EnergyCallback(sensors=[Described("gpu0", system.steady, model=H100, power_w=POWER_W)], series=path, pue=pue)

    def trainer(energy):
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
        return L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path, name="logs"), callbacks=[energy, saver],
                         **trainer_kwargs(enable_checkpointing=True))

    start = system.steady()
    first = callback("first")
    last = tmp_path / "ckpt" / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resume mid-epoch, other settings: tested elsewhere
        with pytest.raises(Boom):
            trainer(first).fit(Clocked(fail_at=fail_at), *loaders())
        system.advance(IDLE_S)  # between the crash and the resume: measured by no one
        second = first if resume == "same callback" else callback("corrected")
        trainer(second).fit(Clocked(), *loaders(), ckpt_path=last)
        evaluations = trainer(second)
        evaluations.validate(Clocked(), loaders()[1], ckpt_path=last)
        evaluations.test(Clocked(), loaders()[1], ckpt_path=last)
        evaluations.predict(Clocked(), loaders()[1], ckpt_path=last)
    directory = tmp_path / "logs" / "version_0"
    logged = [float(row["co2eq_g_total"]) for version in sorted((tmp_path / "logs").iterdir())
              if (version / "metrics.csv").exists()
              for row in csv.DictReader((version / "metrics.csv").open()) if row.get("co2eq_g_total")]
    check_co2(directory, settings, system.steady() - start - IDLE_S, logged[-1])
    assert {r.phase for r in read_records(directory)} >= {"train", "validation", "test", "predict"}


@pytest.mark.parametrize("resume", ["same callback", "new callback, another series and PUE"])
def test_an_hf_train_crashed_and_resumed_prices_each_record_at_its_own_series_mean(tmp_path, system, resume):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, tiny_model, training_args

    seed = random.randrange(10**6)
    print("seed", seed)
    fail_at = random.Random(seed).randrange(2, 8)  # a global step after the first checkpoint

    class Boom(RuntimeError):
        pass

    class Clocked(TrainerCallback):
        def __init__(self, fail_at=None):
            self.fail_at = fail_at

        def on_step_end(self, args, state, control, **kwargs):
            system.advance(STEP_S)
            if state.global_step == self.fail_at:
                raise Boom(f"boom at step {state.global_step}")

        def on_prediction_step(self, args, state, control, **kwargs):
            system.advance(EVAL_STEP_S)

    settings = series_files(tmp_path)
    energy_dir = tmp_path / "energy"

    def callback(name):
        pue, path, _ = settings[name]
        return EnergyCallback(sensors=[Described("gpu0", system.steady, model=H100, power_w=POWER_W)], series=path,
                              pue=pue, output_dir=str(energy_dir))

    def trainer(energy, clocked):
        args = training_args(tmp_path / "out", save_strategy="steps", save_steps=1)
        return Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                       eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[energy, clocked])

    start = system.steady()
    first = callback("first")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        crashing = trainer(first, Clocked(fail_at))
        with pytest.raises(Boom):
            crashing.train()
        watch.settle()  # the failed call is written up (on the watch thread) before the idle time
        system.advance(IDLE_S)
        resumed = trainer(first if resume == "same callback" else callback("corrected"), Clocked())
        resumed.train(resume_from_checkpoint=True)
        logged = [entry["co2eq_g_total"] for entry in resumed.state.log_history if "co2eq_g_total" in entry]
        resumed.evaluate()
        resumed.predict(TokenDataset(EVAL_SAMPLES, seed=2))
    check_co2(energy_dir, settings, system.steady() - start - IDLE_S, logged[-1])
    assert {r.phase for r in read_records(energy_dir)} >= {"train", "validation", "predict"}
    # The run goes on with the new grid and PUE, and says so as Lightning's resume does (before:
    # nothing was said; the records alone told the attempts' pricing apart).
    other = [str(w.message) for w in said if "other settings than this callback's" in str(w.message)]
    if resume == "same callback":
        assert other == []
    else:
        assert len(other) == 1 and "this training continues its run" in other[0] and "corrected.csv" in other[0]
