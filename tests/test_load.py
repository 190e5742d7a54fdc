"""Load: long runs keep a flat memory footprint and a constant number of threads.

Resident memory (psutil) and the thread count are sampled through the run, after a warm-up.
The bounds are generous (allocator noise on a 2-core CI machine); a leak of one record, one
snapshot or one thread per phase would exceed them many times over. The numbers measured here
are quoted in docs/RELIABILITY.md.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import warnings
from pathlib import Path

import pytest

from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import RECORDS_KEPT_IN_MEMORY, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT_MB = 20.0


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_tracker_20k_phases_keep_memory_and_threads_flat(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is tested elsewhere; this is about memory
    clock = FakeClock(start=0.0)
    sensor = ScriptedSensor("gpu0", clock, power_w=300.0)
    sensor.poll_interval_s = 0.05  # a sampled sensor: the meter's thread runs all along
    tracker = Tracker(output_dir=tmp_path, run_id="load")
    tracker.planned_epochs = 10_000  # the prediction runs at every epoch end too
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: 1.7e9 + clock())
    tracker.start(meter)
    phases, samples = 0, []
    epoch = 0
    while phases < 20_000:
        tracker.begin("train", epoch)
        tracker.add_samples(32)
        clock.advance(1.0)
        tracker.begin("validation", epoch)
        clock.advance(0.2)
        tracker.end("validation")
        tracker.end("train")
        tracker.metrics("train")
        clock.advance(0.01)
        phases += 2
        epoch += 1
        if epoch % 500 == 0:
            samples.append((phases, rss_mb(), threading.active_count()))
    tracker.finish()
    assert len(tracker.records) == RECORDS_KEPT_IN_MEMORY
    warm = samples[2:]  # after 3000 phases
    growth = max(r for _, r, _ in warm) - warm[0][1]
    threads = {t for _, _, t in warm}
    print(f"\ntracker: {phases} phases, RSS {warm[0][1]:.1f} -> {warm[-1][1]:.1f} MB "
          f"(max growth {growth:.2f} MB), threads {sorted(threads)}")
    assert growth < RSS_GROWTH_LIMIT_MB
    assert len(threads) == 1
    assert not meter.sampling
    written = read_records(tmp_path)
    assert len([r for r in written if r.phase == "train"]) == epoch
    assert sum(r.energy_j for r in written) == pytest.approx(tracker.total_energy_j, rel=1e-9)


@pytest.mark.slow
def test_lightning_2000_steps_over_200_epochs_keep_memory_and_threads_flat(tmp_path):
    pytest.importorskip("lightning")
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_models import flavour, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(80, 4, generator=generator), torch.randn(80, 1, generator=generator)),
                       batch_size=8)  # 10 steps per epoch

    class Probe(L.Callback):
        def __init__(self):
            self.samples = []

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch % 10 == 9:
                self.samples.append((trainer.current_epoch, rss_mb(), threading.active_count()))

    probe = Probe()
    callback = EnergyCallback(intensity=300, output_dir=tmp_path / "energy", progress_bar=False)
    trainer = L.Trainer(max_epochs=200, logger=L.loggers.CSVLogger(tmp_path, name="csv"), callbacks=[callback, probe],
                        limit_val_batches=0, **trainer_kwargs(log_every_n_steps=50))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyModel(), train)
    assert trainer.global_step == 2000
    warm = probe.samples[2:]  # from epoch 30
    growth = max(r for _, r, _ in warm) - warm[0][1]
    threads = {t for _, _, t in warm}
    print(f"\nlightning: {trainer.global_step} steps, 200 epochs, RSS {warm[0][1]:.1f} -> {warm[-1][1]:.1f} MB "
          f"(max growth {growth:.2f} MB), threads {sorted(threads)}")
    assert growth < RSS_GROWTH_LIMIT_MB
    assert len(threads) == 1
    assert not any(t.name == "greencallbacks-meter" for t in threading.enumerate())
    assert len(callback.tracker.records) <= RECORDS_KEPT_IN_MEMORY
    train = [r for r in read_records(tmp_path / "energy") if r.phase == "train"]
    assert [r.epoch for r in train] == list(range(200))
