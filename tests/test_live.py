"""Energy so far at the frameworks' own logging cadence (``Tracker.live`` and the three adapters).

The core part runs on a fake clock with a scripted sensor, so every value is exact. The adapters
run real fits on CPU with a scripted constant-power sensor on the real clock and read the real
logger files back (TensorBoard event files, Lightning's metrics.csv, HF's ``log_history``).
"""

from __future__ import annotations

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

J_PER_KWH = 3.6e6


# ------------------------------------------------------------------------------------- core
def started(power_w=100.0, pue=1.5, intensity=300.0, output_dir=None):
    clock, wall = FakeClock(), FakeClock(1.7e9)

    def advance(seconds):
        clock.advance(seconds)
        wall.advance(seconds)

    sensor = ScriptedSensor("gpu", clock, power_w)
    tracker = Tracker(carbon=Carbon(intensity=intensity, pue=pue), output_dir=output_dir)
    tracker.start(Meter([sensor], clock=clock, wall_clock=wall))
    return tracker, sensor, advance


def test_live_totals_include_open_phases_and_add_no_record(tmp_path):
    tracker, sensor, advance = started(output_dir=tmp_path)
    advance(1.0)
    tracker.begin("train", 0)  # the 1 s gap is closed but not yet published
    advance(2.0)
    live = tracker.live()
    assert live["energy_kwh_total"] * J_PER_KWH == pytest.approx(100.0 * 3.0 * 1.5, rel=1e-12)
    assert live["co2eq_g_total"] == pytest.approx(live["energy_kwh_total"] * 300.0, rel=1e-12)
    assert live["power_w"] == pytest.approx(100.0, rel=1e-12)  # IT power, before PUE
    advance(1.0)
    tracker.begin("validation", 0)  # nested: the train phase holds a billed segment now
    advance(0.5)
    sensor.set_power(300.0)
    advance(0.5)
    live = tracker.live(prefix="energy/")
    assert set(live) == {"energy/energy_kwh_total", "energy/co2eq_g_total", "energy/power_w"}
    assert live["energy/energy_kwh_total"] * J_PER_KWH == pytest.approx((400.0 + 50.0 + 150.0) * 1.5, rel=1e-12)
    assert live["energy/power_w"] == pytest.approx((100.0 + 50.0 + 150.0) / 2.0, rel=1e-12)  # since the previous call
    tracker.end("validation")
    advance(1.0)
    last_live = tracker.live()
    record = tracker.end("train")
    # The epoch's logged total is the live value at its end: nothing billed twice or lost.
    assert tracker.metrics("train")["energy_kwh_total"] == pytest.approx(last_live["energy_kwh_total"], rel=1e-12)
    assert tracker.metrics("train")["co2eq_g_total"] == pytest.approx(last_live["co2eq_g_total"], rel=1e-12)
    assert record.energy_kwh * J_PER_KWH == pytest.approx((300.0 + 300.0) * 1.5, rel=1e-12)
    tracker.finish()
    assert tracker.live() == {}  # not running
    written = read_records(tmp_path)
    assert [r.phase for r in written] == ["other", "validation", "train"]  # no record from live()
    assert sum(r.energy_kwh for r in written) == pytest.approx(tracker.total_energy_j / J_PER_KWH, rel=1e-12)


def test_live_values_only_grow_and_never_pass_the_next_boundary():
    tracker, sensor, advance = started()
    values = []
    for epoch in range(3):
        tracker.begin("train", epoch)
        for _ in range(5):
            advance(0.25)
            values.append(tracker.live()["energy_kwh_total"])
        tracker.begin("validation", epoch)
        advance(0.1)
        values.append(tracker.live()["energy_kwh_total"])
        tracker.end("validation")
        tracker.end("train")
        assert values[-1] <= tracker.metrics("train")["energy_kwh_total"]
        advance(0.05)
    assert values == sorted(values) and len(set(values)) == len(values)
    tracker.finish()


def test_live_power_is_steady_when_logging_steps_come_faster_than_a_slow_counters_updates():
    """A counter read off the training thread moves in steps of its update period (0.1 s): steps
    logged 20 ms apart read 0.42 W, then 10 W, for a mean of 3.5 W."""
    from tests.test_meter import SlowSensor, reader_meter, run_reader

    clock = FakeClock()
    meter = reader_meter(clock, SlowSensor("gpu0", clock, power_w=300.0, instant=False))
    tracker = Tracker(carbon=Carbon(intensity=300.0))
    tracker.start(meter)
    tracker.begin("train", 0)
    powers = []
    for _ in range(150):  # 3 s of logging steps 20 ms apart
        run_reader(meter, clock, 0.02)
        powers.append(tracker.live()["power_w"])
    steady = powers[60:]  # once a whole window has passed
    assert min(steady) >= 300.0 * 0.88 and max(steady) <= 300.0 * 1.12
    tracker.end("train")
    tracker.finish()


def test_a_restarted_tracker_measures_power_from_its_new_meter():
    tracker, _, advance = started()
    advance(1.0)
    tracker.live()
    tracker.finish()
    clock = FakeClock(5000.0)
    tracker.start(Meter([ScriptedSensor("gpu", clock, 40.0)], clock=clock))
    clock.advance(2.0)
    assert tracker.live()["power_w"] == pytest.approx(40.0, rel=1e-12)
    tracker.finish()


class TwoRanks:
    """Rank 0 of two, rank 1's part of each gather given: what ``TorchReducer.gather_floats`` returns."""

    rank, world_size = 0, 2

    def __init__(self, rank_1: tuple[float, float, float]) -> None:
        self.rank_1, self.sent = rank_1, []

    def gather_floats(self, values):
        self.sent.append(values)
        return [tuple(values), self.rank_1]


def test_on_several_ranks_live_sums_every_ranks_open_part_and_meets_them_even_when_its_own_fails():
    """Rank 0's part alone read half the open epoch of two ranks (1/N of N). A rank whose part
    fails still meets the others in the gather (one skipped would pair its next gather with their
    later ones): they get NaN totals, which the adapters do not log, and it raises after."""
    tracker, _, advance = started(power_w=100.0, pue=1.5, intensity=300.0)
    alone = tracker.reducer
    tracker.reducer = ranks = TwoRanks(rank_1=(1800.0, 0.15, 300.0))  # 1200 J IT at PUE 1.5, its grams, its power
    tracker.begin("train", 0)
    advance(10.0)  # rank 0: 1000 J IT, 1500 J at the facility
    live = tracker.live()
    assert ranks.sent == [pytest.approx((1500.0, 1500.0 / J_PER_KWH * 300.0, 100.0), rel=1e-12)]
    assert live["energy_kwh_total"] == pytest.approx(3300.0 / J_PER_KWH, rel=1e-12)
    assert live["co2eq_g_total"] == pytest.approx(1500.0 / J_PER_KWH * 300.0 + 0.15, rel=1e-12)
    assert live["power_w"] == pytest.approx(400.0, rel=1e-12)

    def broken():
        raise OSError("counter gone")

    tracker.meter.peek = broken
    ranks.rank_1 = (1.0, 1.0, 1.0)
    with pytest.raises(OSError, match="counter gone"):
        tracker.live()
    assert len(ranks.sent) == 2 and all(v != v for v in ranks.sent[1])  # met the other rank, with NaN
    del tracker.meter.peek
    tracker.reducer = ranks_after = TwoRanks(rank_1=(0.0, 0.0, 0.0))
    assert tracker.live()["energy_kwh_total"] > 0 and len(ranks_after.sent) == 1  # and goes on
    tracker.reducer = alone  # (the phase's end gathers records: a collective of its own)
    tracker.end("train")
    tracker.finish()


# -------------------------------------------------------------------------------- Lightning
def lightning_fit(tmp_path, **callback_kwargs):
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tests.lightning_models import flavour, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    sensor = ScriptedSensor("gpu", time.monotonic, 50.0)
    callback = EnergyCallback(sensors=[sensor], intensity=300.0, pue=1.2, **callback_kwargs)
    data = TensorDataset(torch.randn(100, 4), torch.randn(100, 1))
    loggers = [L.loggers.TensorBoardLogger(tmp_path, name="tb"), L.loggers.CSVLogger(tmp_path, name="csv")]
    trainer = L.Trainer(max_epochs=1, logger=loggers, callbacks=[callback], limit_val_batches=2,
                        **trainer_kwargs(log_every_n_steps=10))
    trainer.fit(TinyModel(), DataLoader(data, batch_size=1), DataLoader(data, batch_size=10))
    return trainer, callback, loggers


def split_points(scalars: dict, name: str) -> tuple[list[tuple[int, float]], list[float]]:
    """``name``'s values logged at steps, and those logged with an epoch's values (which come
    with ``energy_kwh``, after the step value of the same step)."""
    points, epoch_values = list(scalars.get(name, [])), []
    for step, _ in scalars.get("energy_kwh", []):
        last = max((i for i, p in enumerate(points) if p[0] == step))
        epoch_values.append(points.pop(last)[1])
    return points, epoch_values


def step_points(scalars: dict, name: str) -> list[tuple[int, float]]:
    return split_points(scalars, name)[0]


def test_lightning_logs_totals_so_far_at_its_logging_steps(tmp_path):
    from tests.test_lightning import csv_scalars, tensorboard_scalars

    trainer, callback, (tensorboard, csv_logger) = lightning_fit(tmp_path)
    records = read_records(tensorboard.log_dir)
    (train,) = [r for r in records if r.phase == "train"]
    read_back = {"tensorboard": tensorboard_scalars(tensorboard.log_dir),
                 "csv": csv_scalars(f"{csv_logger.log_dir}/metrics.csv")}
    for where, scalars in read_back.items():
        assert [v for _, v in scalars["energy_kwh"]] == pytest.approx([train.energy_kwh], rel=1e-6), where
        points, (epoch_total,) = split_points(scalars, "energy_kwh_total")
        assert [s for s, _ in points] == list(range(9, 100, 10)), where  # Lightning's own step numbering
        values = [v for _, v in points]
        assert len(values) >= 8 and values == sorted(values) and len(set(values)) == len(values), (where, values)
        assert values[-1] <= epoch_total, where  # the step values only grow, up to the epoch's
        co2 = [v for _, v in step_points(scalars, "co2eq_g_total")]
        assert co2 == pytest.approx([v * 300.0 for v in values], rel=1e-5), where
        power = [v for _, v in step_points(scalars, "power_w")]
        assert len(power) == len(values) and all(p == pytest.approx(50.0, rel=0.2) for p in power[1:]), (where, power)
    # The progress bar ends on the epoch's total (the last value it was given).
    assert trainer.progress_bar_metrics["energy_kwh_total"] == pytest.approx(epoch_total, rel=1e-6)
    assert len(records) == len({r.seq for r in records}) and {r.phase for r in records} == {"other", "train", "validation"}


def two_optimizers(TinyModel):
    """TinyModel with manual optimization stepping two optimizers a batch: two global steps per
    batch, one logging step, as Lightning counts them."""
    import torch

    class TwoOptimizers(TinyModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            for optimizer, layer in zip(self.optimizers(), (self.layer, self.other)):
                loss = torch.nn.functional.mse_loss(layer(x), y)
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            self.log("step_loss", loss, on_step=True, on_epoch=False)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.layer.parameters(), lr=0.05), torch.optim.SGD(self.other.parameters(), lr=0.05)]

    return TwoOptimizers


@pytest.mark.parametrize("optimization, accumulate", [("automatic", 1), ("automatic", 3), ("manual, two optimizers", 1)])
def test_lightning_step_values_land_on_lightnings_own_logging_steps(tmp_path, optimization, accumulate):
    """Over two epochs (global_step read only when a multiple can be reached), with and without
    gradient accumulation, and with manual optimization stepping two optimizers a batch (two
    global steps, one logging step): the step values sit at exactly the steps of a metric the
    model logs per step, and nowhere else."""
    pytest.importorskip("lightning")
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tests.lightning_models import flavour, step_logging, trainer_kwargs
    from tests.test_lightning import csv_scalars

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    StepLogging = step_logging(TinyModel)

    TwoOptimizers = two_optimizers(TinyModel)

    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0)
    data = TensorDataset(torch.randn(61, 4), torch.randn(61, 1))  # 61 batches: the last group is short
    logger = L.loggers.CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback], limit_val_batches=0,
                        **trainer_kwargs(log_every_n_steps=4, accumulate_grad_batches=accumulate))
    model = StepLogging() if optimization == "automatic" else TwoOptimizers()
    trainer.fit(model, DataLoader(data, batch_size=1))
    assert trainer.global_step == (2 * 2 * 61 if optimization != "automatic" else 2 * -(-61 // accumulate))
    scalars = csv_scalars(f"{logger.log_dir}/metrics.csv")
    lightning_steps = [s for s, _ in scalars["step_loss"]]
    assert len(lightning_steps) >= 6
    ours = step_points(scalars, "energy_kwh_total")
    assert [s for s, _ in ours] == lightning_steps
    values = [v for _, v in ours]
    assert values == sorted(values)


def test_lightning_manual_optimization_resumed_logs_its_first_logging_step(tmp_path):
    """Two optimizers a batch: global_step counts 20 after 10 batches, Lightning logs by batches.
    Resumed from that checkpoint, the first logging step (the 20th batch) was taken for the
    checkpoint's own, already logged, and had no step value."""
    pytest.importorskip("lightning")
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tests.lightning_models import flavour, trainer_kwargs
    from tests.test_lightning import csv_scalars

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    TwoOptimizers = two_optimizers(TinyModel)

    data = DataLoader(TensorDataset(torch.randn(10, 4), torch.randn(10, 1)), batch_size=1)

    def fit(epochs, **fit_kwargs):
        callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                                  output_dir=tmp_path / "energy")
        logger = L.loggers.CSVLogger(tmp_path, name="csv")
        trainer = L.Trainer(max_epochs=epochs, logger=logger, callbacks=[callback], limit_val_batches=0,
                            **trainer_kwargs(log_every_n_steps=20, enable_checkpointing=True,
                                             default_root_dir=tmp_path))
        trainer.fit(TwoOptimizers(), data, **fit_kwargs)
        return trainer, csv_scalars(f"{logger.log_dir}/metrics.csv")

    first, _ = fit(1)
    assert first.global_step == 20
    (checkpoint,) = (tmp_path / "csv" / "version_0" / "checkpoints").glob("*.ckpt")
    _, scalars = fit(3, ckpt_path=str(checkpoint))
    lightning_steps = [s for s, _ in scalars["step_loss"]]
    assert lightning_steps == [19]
    assert [s for s, _ in step_points(scalars, "energy_kwh_total")] == lightning_steps


def test_lightning_values_reach_the_bar_and_callback_metrics_without_gathering_the_modules(tmp_path, monkeypatch):
    """``trainer.progress_bar_metrics`` and ``trainer.callback_metrics`` gather every metric the
    module logged, and turn each progress-bar tensor into a number (``.item()``: on a GPU, a wait
    for the queued steps), before they return: 20-70 us of each logging step on a CPU. Our hooks
    put their values in the dicts behind them: the same values show, and our hooks gather nothing."""
    pytest.importorskip("lightning")
    import sys
    import time

    import torch
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
    from torch.utils.data import DataLoader, TensorDataset

    from tests.lightning_models import flavour, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def ours_on_stack() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if str(frame.f_globals.get("__name__")).startswith("greencallbacks.lightning."):  # the callback's modules
                return True
            frame = frame.f_back
        return False

    gathered = []  # for each gathering of the module's metrics: whether one of our hooks asked
    real = _ResultCollection.metrics
    monkeypatch.setattr(_ResultCollection, "metrics", lambda self, on_step: (gathered.append(ours_on_stack()),
                                                                                 real(self, on_step))[1])

    class LoggedToTheBar(TinyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, prog_bar=True)
            return loss

    shown, epoch = [], {}

    class Bar(L.Callback):  # after ours, as the progress bar: what it would show at each step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            shown.append((trainer.global_step, trainer.progress_bar_metrics.get("energy_kwh_total")))

        def on_train_epoch_end(self, trainer, pl_module):
            epoch.update(callback.tracker.metrics("train"), bar=trainer.progress_bar_metrics["energy_kwh_total"],
                         monitored=float(trainer.callback_metrics["energy_kwh"]))

    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0)
    data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    trainer = L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name="csv"), callbacks=[callback, Bar()],
                        limit_val_batches=2, **trainer_kwargs(log_every_n_steps=10))
    trainer.fit(LoggedToTheBar(), DataLoader(data, batch_size=1), DataLoader(data, batch_size=10))
    assert gathered and not any(gathered)  # Lightning gathers them; our hooks never did
    steps = [(step, value) for step, value in shown if step % 10 == 0]
    values = [value for _, value in steps]
    assert [step for step, _ in steps] == [10, 20, 30, 40] and None not in values, shown
    assert values == sorted(values) and len(set(values)) == 4, values  # a new total at each logging step
    assert values[-1] <= epoch["bar"] == pytest.approx(epoch["energy_kwh_total"], rel=1e-12)  # the epoch's own total
    assert epoch["monitored"] == pytest.approx(epoch["energy_kwh"], rel=1e-6)  # what checkpoints, early stopping read
    assert "step_loss" in trainer.progress_bar_metrics  # the module's own, still there
    assert float(trainer.callback_metrics["val_energy_kwh"]) > 0


def test_lightning_step_metrics_off_logs_per_epoch_only(tmp_path):
    pytest.importorskip("lightning")
    from tests.lightning_models import flavour
    from tests.test_lightning import csv_scalars

    _, EnergyCallback, _ = flavour("lightning.pytorch")
    with pytest.raises(ValueError, match="step_metrics"):
        EnergyCallback(step_metrics="no")
    _, _, (_, csv_logger) = lightning_fit(tmp_path, step_metrics=False)
    scalars = csv_scalars(f"{csv_logger.log_dir}/metrics.csv")
    assert len(scalars["energy_kwh_total"]) == len(scalars["energy_kwh"]) == 1


# ------------------------------------------------------------------------------------------ HF
def hf_train(tmp_path, monkeypatch, **callback_kwargs):
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import BATCH, TokenDataset, scripted_sensor, tensorboard_dir, tiny_model, training_args

    callback = EnergyCallback(intensity=400.0, pue=1.5, sensors=[scripted_sensor()], **callback_kwargs)
    args = training_args(tmp_path / "out", num_train_epochs=1, max_steps=40, logging_strategy="steps", logging_steps=5,
                         eval_strategy="no", report_to=["tensorboard"], **tensorboard_dir(monkeypatch, tmp_path / "tb"))
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(40 * BATCH), callbacks=[callback])
    trainer.train()
    return trainer


def test_hf_logs_totals_so_far_at_its_logging_steps(tmp_path, monkeypatch):
    trainer = hf_train(tmp_path, monkeypatch)  # skips without transformers
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = trainer.state.log_history
    steps = [e for e in history if "energy_kwh_total" in e and "energy_kwh" not in e]
    (epoch,) = [e for e in history if "energy_kwh" in e]
    assert [e["step"] for e in steps] == list(range(5, 41, 5))
    values = [e["energy_kwh_total"] for e in steps]
    assert len(values) >= 7 and values == sorted(values) and len(set(values)) == len(values), values
    assert values[-1] <= epoch["energy_kwh_total"]  # the step values only grow, up to the epoch's
    assert [e["co2eq_g_total"] for e in steps] == pytest.approx([v * 400.0 for v in values], rel=1e-9)
    assert all(e["power_w"] == pytest.approx(50.0, rel=0.2) for e in steps[1:]), steps
    assert len([e for e in history if "loss" in e]) == 8  # the Trainer's own step logs are untouched
    records = read_records(tmp_path / "out")
    assert [r.phase for r in records if r.phase == "train"] == ["train"]  # no record from a step log

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [(s.step, s.value) for s in events.Scalars("train/energy_kwh_total")]
    assert logged[:-1] == [(e["step"], pytest.approx(e["energy_kwh_total"], rel=1e-6)) for e in steps]
    assert logged[-1] == (40, pytest.approx(epoch["energy_kwh_total"], rel=1e-6))


def test_hf_step_metrics_off_logs_per_epoch_only(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from greencallbacks.hf import EnergyCallback

    with pytest.raises(ValueError, match="step_metrics"):
        EnergyCallback(step_metrics=1)
    history = hf_train(tmp_path, monkeypatch, step_metrics=False).state.log_history
    assert len([e for e in history if "energy_kwh_total" in e]) == 1


# --------------------------------------------------------------------------------------- Keras
def keras_run(backend: str, tmp_path) -> dict:
    from pathlib import Path

    from keras_runs import run_keras

    runner = Path(__file__).with_name("keras_live_runner.py")
    results = run_keras(backend, tmp_path, str(runner), backend, str(tmp_path), purpose=f"the Keras {backend}-backend step values")
    for name, result in results.items():
        assert "error" not in result, (name, result["error"])
    return results


def keras_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("keras").split(".")[:2])


def tensorboard_tensors(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    scalar_tags = [t for t in events.Tags()["tensors"] if t.startswith(("batch_", "epoch_"))]  # not the model's config
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)] for tag in scalar_tags}


def test_keras_tensorboard_logging_batches_gets_the_totals_so_far(tmp_path):
    results = keras_run("tensorflow", tmp_path)
    history = results["tensorboard"]["history"]
    written = tensorboard_tensors(tmp_path / "tensorboard" / "tb" / "train")
    points = written["batch_energy_kwh_total"]
    if keras_version() < (3, 7):
        # Keras 3.3-3.6's TensorBoard never advances its step: every batch summary, its own
        # batch_loss too, goes to step 0 (fixed in Keras 3.7). Ours go the same way.
        assert {step for step, _ in written["batch_loss"]} == {0}
        assert [step for step, _ in points] == [0] * 16
    else:
        # Every 5th batch of 2 epochs x 40, counted from the fit's start like TensorBoard does.
        assert [step for step, _ in points] == list(range(5, 81, 5))
    values = [v for _, v in points]
    assert values == sorted(values) and len(set(values)) == len(values), values
    # Each epoch's step values stay below the total logged at its end.
    assert max(values[:8]) <= history["energy_kwh_total"][0] * (1 + 1e-6)  # float32 in the file
    assert max(values[8:]) <= history["energy_kwh_total"][1] * (1 + 1e-6)
    assert [v for _, v in written["batch_co2eq_g_total"]] == pytest.approx([v * 300.0 for v in values], rel=1e-5)
    assert len(written["batch_power_w"]) == len(points)
    assert len(history["energy_kwh_total"]) == 2  # History keeps epochs only
    assert [v for _, v in written["epoch_energy_kwh_total"]] == pytest.approx(history["energy_kwh_total"], rel=1e-6)
    off = tensorboard_tensors(tmp_path / "tensorboard_off" / "tb" / "train")
    assert "batch_energy_kwh_total" not in off and "batch_loss" in off  # the switch: TensorBoard still logs batches


def test_keras_without_step_values_keeps_async_batch_dispatch(tmp_path):
    results = keras_run("torch", tmp_path)
    for name in ("no_tensorboard", "off"):
        result = results[name]
        if result["async_train"]["none"] is None:
            pytest.skip("this Keras has no asynchronous callback dispatch (CallbackList._async_train is newer than 3.3)")
        assert result["async_train"]["energy"] == result["async_train"]["none"] is True, name
        # In the fit itself the batch hooks ran off the training thread: Keras dispatched them asynchronously.
        hooks = result["batch_hooks_on_main_thread"]
        assert len(hooks) == 80 and not any(hooks), name
        assert "energy_kwh_total" in result["history"] and len(result["history"]["energy_kwh_total"]) == 2


def test_lightning_values_go_through_the_public_properties_where_a_release_drops_the_private_dicts():
    """The tested fallback of ``_shown``'s private seam: without ``_logger_connector``'s dicts
    (a later Lightning), the values go where ``callback_metrics`` and ``progress_bar_metrics`` show."""
    import types

    from greencallbacks.lightning._shared import _shown

    public = types.SimpleNamespace(callback_metrics={"a": 1}, progress_bar_metrics={"b": 2},
                                   _logger_connector=types.SimpleNamespace())
    assert _shown(public, "_callback_metrics") is public.callback_metrics
    assert _shown(public, "_progress_bar_metrics") is public.progress_bar_metrics
    private = types.SimpleNamespace(_logger_connector=types.SimpleNamespace(_callback_metrics={}, _progress_bar_metrics={}))
    assert _shown(private, "_progress_bar_metrics") is private._logger_connector._progress_bar_metrics
