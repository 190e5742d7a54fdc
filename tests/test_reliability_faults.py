"""Faults: broken sensors, a dying thread, a full or read-only disk, a killed process, interrupts.

Each test here fills a gap left by the unit tests (see ``docs/RELIABILITY.md`` for the whole
table, with the tests elsewhere that cover the other rows). The promise under test: training
always finishes or fails for its own reason, and what was measured is on disk.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from greencallbacks import records as records_module
from greencallbacks import report
from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks import watch
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.sensors.base import Kind
from greencallbacks.sensors.nvml import find_nvml_gpus
from greencallbacks.sensors.rapl import RaplSensor
from tests.fakes.disk import is_descriptor_of, script_fsync
from greencallbacks.tracker import SUMMARY_FILE, Tracker
from tests.fakes import fake_pynvml as fp
from tests.fakes.fake_powercap import FakePowercap
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.killed import killed_after_line

REPO = Path(__file__).resolve().parents[1]


def meter_threads() -> list[threading.Thread]:
    watch.settle()  # a framework call that raised is written up by the watch thread within ~0.2 s
    return [t for t in threading.enumerate() if t.name == "greencallbacks-meter" and t.is_alive()]


def energy_messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


def scripted_tracker(tmp_path: Path | None, clock: FakeClock, power_w: float = 100.0) -> tuple[Tracker, ScriptedSensor]:
    sensor = ScriptedSensor("gpu0", clock, power_w=power_w)
    tracker = Tracker(output_dir=tmp_path, run_id="faults")
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    return tracker, sensor


def run_epochs(tracker: Tracker, clock: FakeClock, epochs, seconds: float = 10.0) -> None:
    for epoch in epochs:
        tracker.begin("train", epoch)
        tracker.add_samples(8)
        clock.advance(seconds)
        tracker.end("train")
        clock.advance(1.0)


# ------------------------------------------------------------------------------------ NVML
@pytest.mark.parametrize("fault", ["error", "lost", "counter reset"])
def test_gpu_fault_mid_run_keeps_what_was_measured_and_labels_the_rest(fault):
    """Through the meter and tracker (the sensor-level behaviour is in test_sensors_nvml.py)."""
    clock = FakeClock()
    nvml = FakeNvml(clock)
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=200.0)
    (sensor,) = find_nvml_gpus([0], environ={}, pynvml=nvml, clock=clock).sensors
    tracker = Tracker(run_id="gpu-fault")
    tracker.start(Meter([sensor], clock=clock, wall_clock=lambda: clock() + 1.7e9))  # default fallback: none for a GPU
    run_epochs(tracker, clock, [0])
    before_j = tracker.total_energy_j
    assert before_j == pytest.approx(200.0 * 10.0, abs=200.0 * 0.1)  # the gap after it is still open
    if fault == "error":
        gpu.error_code = fp.NVML_ERROR_UNKNOWN
    elif fault == "lost":
        gpu.lose()
    else:
        gpu.reset_counter()  # the driver reloaded: the counter restarts from 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(tracker, clock, [1, 2])
        tracker.finish()
    train = [r for r in tracker.records if r.phase == "train"]
    assert [r.epoch for r in train] == [0, 1, 2]
    assert all(r.energy_kwh >= 0 for r in tracker.records)
    if fault == "counter reset":
        # Continuous: what the counter gathered since the reset is counted, nothing negative, no
        # warning. Lost: the 1 s between the last read before the reload and the reload.
        assert not energy_messages(caught)
        assert tracker.total_energy_j == pytest.approx(200.0 * (33.0 - 1.0), abs=200.0 * 0.3)
    else:
        # Lost: stops counting. An NVML error that may pass (NVML_ERROR_UNKNOWN): held and read
        # again until the GPU answers. Either says so once and labels every later record; epoch 0
        # keeps its energy.
        messages = energy_messages(caught)
        said, noted = ("no longer counted", "stopped counting") if fault == "lost" else ("has not answered since", "no answer from")
        assert len(messages) == 1 and said in messages[0]
        assert train[0].energy_kwh > 0
        assert train[2].energy_kwh == 0
        assert noted in train[2].components[0]["note"]
        assert tracker.total_energy_j == pytest.approx(before_j, abs=200.0 * 0.2)


def test_nvml_init_failing_leaves_the_host_measured(tmp_path):
    """discover_sensors with a driver that will not load: host sensors, the GPU listed unavailable."""
    from greencallbacks.sensors.discover import discover_sensors

    nvml = FakeNvml()
    nvml.add_gpu(gpu_uuid(0))
    nvml.init_error = fp.NVML_ERROR_DRIVER_NOT_LOADED
    found = discover_sensors(pynvml=nvml, environ={}, powercap_root=tmp_path / "none")
    assert {s.kind for s in found.sensors} == {Kind.CPU, Kind.RAM}
    assert any(u.kind == Kind.GPU and "not loaded" in u.reason for u in found.unavailable)
    for sensor in found.sensors:
        sensor.close()


# ------------------------------------------------------------------------------------ RAPL
def _write_atomically(zone, total_uj: int) -> None:
    # sysfs reads are atomic; a plain write_text is not, and the poller reads concurrently.
    zone.total_uj = total_uj
    tmp = zone.path / "energy_uj.tmp"
    tmp.write_text(f"{total_uj % zone.max_energy_range_uj}\n")
    os.replace(tmp, zone.energy_path)


def test_rapl_wraps_many_times_during_a_long_pause_are_caught_by_the_background_thread(tmp_path):
    """No phase boundary for 25 wraps' worth of energy: the meter's thread alone keeps count."""
    powercap = FakePowercap(tmp_path / "powercap")
    range_uj = 100_000_000  # wraps every 100 J; poll interval clamps to 0.1 s
    zone = powercap.add_package(0, max_energy_range_uj=range_uj, energy_uj=60_000_000)
    sensor = RaplSensor(zone.path)
    polls = []
    real_poll = sensor.poll
    sensor.poll = lambda: (real_poll(), polls.append(1))  # type: ignore[method-assign]
    meter = Meter([sensor], fallback=None)
    start = meter.snapshot()  # starts the thread
    assert meter.sampling
    consumed_uj = 0
    for _ in range(60):  # 60 x 40 J = 2400 J = 24 wraps, never more than one between polls
        seen = len(polls)
        consumed_uj += 40_000_000
        _write_atomically(zone, 60_000_000 + consumed_uj)
        deadline = time.monotonic() + 5
        while len(polls) <= seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(polls) > seen, "the background thread stopped polling"
    end = meter.snapshot()
    meter.close()
    assert end.energy_j[sensor.name] - start.energy_j[sensor.name] == pytest.approx(consumed_uj / 1e6, abs=1e-6)
    assert not meter_threads()


def test_rapl_two_wraps_between_reads_lose_whole_ranges_a_documented_limit(tmp_path):
    """If the process is stopped (SIGSTOP, a suspended VM) longer than a wrap, nothing can see it."""
    powercap = FakePowercap(tmp_path / "powercap")
    zone = powercap.add_package(0, max_energy_range_uj=100_000_000, energy_uj=60_000_000)
    sensor = RaplSensor(zone.path)
    zone.add_joules(250.0)  # two and a half ranges with no read in between
    assert sensor.energy_j() == pytest.approx(50.0)  # 250 J minus two whole 100 J ranges
    assert sensor.energy_j() >= 0


# ----------------------------------------------------------------------- output directory
def _fail_fsync(monkeypatch, path, code: int, times: int) -> list[int]:
    """The first ``times`` fsyncs of ``path`` fail with ``code``."""
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) <= times:
            raise OSError(code, os.strerror(code))
        return real(fd)

    script_fsync(monkeypatch, records_module, path, fsync)
    return calls


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_disk_full_or_read_only_keeps_training_and_writes_every_record_once_when_it_can(tmp_path, monkeypatch, code):
    clock = FakeClock()
    tracker, _ = scripted_tracker(tmp_path, clock)
    _fail_fsync(monkeypatch, tmp_path / RECORDS_FILE, code, times=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(tracker, clock, range(4))
        tracker.finish()
    messages = energy_messages(caught)
    assert len(messages) == 1 and os.strerror(code) in messages[0]
    written = read_records(tmp_path)
    # Every record exactly once, in order, although the first writes failed after appending.
    assert [r.seq for r in written] == [r.seq for r in tracker.records]
    assert len({r.seq for r in written}) == len(written)
    assert sum(r.energy_j for r in written) == pytest.approx(tracker.total_energy_j, rel=1e-12)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["energy_kwh"] * 3.6e6 == pytest.approx(
        tracker.total_energy_j, rel=1e-12
    )


def test_a_write_cut_short_by_a_full_disk_leaves_no_torn_line_behind(tmp_path, monkeypatch):
    clock = FakeClock()
    tracker, _ = scripted_tracker(tmp_path, clock)
    run_epochs(tracker, clock, [0])
    full = {"on": True, "half_written": False}
    real_write = os.write

    def write_maybe_full(fd, data):
        """A nearly full disk: write(2) stores half of the bytes, and the next call fails."""
        if not full["on"] or not is_descriptor_of(fd, tmp_path / RECORDS_FILE):
            return real_write(fd, data)
        full["half_written"] = not full["half_written"]
        if full["half_written"]:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records_module.os, "write", write_maybe_full)
    with pytest.warns(EnergyWarning, match="No space left"):
        run_epochs(tracker, clock, [1, 2])
    full["on"] = False  # space is freed
    run_epochs(tracker, clock, [3])
    tracker.finish()
    written = read_records(tmp_path)  # a torn line in the middle would raise here
    assert [r.seq for r in written] == [r.seq for r in tracker.records]
    assert [r.epoch for r in written if r.phase == "train"] == [0, 1, 2, 3]


# ------------------------------------------------------------------------- killed process
TRACKER_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import ScriptedSensor

    tracker = Tracker(output_dir=sys.argv[1], run_id="killed")
    tracker.start(Meter([ScriptedSensor("gpu0", time.monotonic, power_w=100.0)], fallback=None))
    epoch = 0
    while True:
        tracker.begin("train", epoch)
        tracker.add_samples(8)
        record = tracker.end("train")
        print(record.seq, flush=True)  # only after end() returned: the record is on disk
        epoch += 1
    """
)


def test_process_killed_between_records_keeps_every_finished_phase(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(TRACKER_CHILD.format(repo=str(REPO)))
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    reported = []
    try:
        while len(reported) < 300:
            line = child.stdout.readline()
            assert line, "the child exited early"
            reported.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)  # mid-write of whatever comes next
        child.wait(timeout=30)
        child.stdout.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line, if the kill cut one, is skipped with a warning
        written = read_records(out)
    seqs = [r.seq for r in written]
    assert set(reported) <= set(seqs)
    assert seqs == sorted(set(seqs))  # in order, nothing twice
    # A torn last line, simulated on a copy, is skipped and everything before it kept.
    torn = tmp_path / "torn.jsonl"
    text = (out / RECORDS_FILE).read_text()
    torn.write_text(text + text.splitlines()[-1][:57])
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r.seq for r in read_records(torn)] == seqs


LONG_GAP_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()
    tracker = Tracker(output_dir=sys.argv[1], run_id="killed")
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    tracker.begin("train", 0)
    clock.advance(1.0)
    tracker.end("train")
    clock.advance(2.0)  # the epoch's end: a checkpoint saved by a later callback
    tracker.begin("train", 1)
    print("begun", flush=True)
    time.sleep(60)  # killed here, inside epoch 1
    """
)


def test_process_killed_in_a_phase_keeps_the_long_gap_before_it(tmp_path):
    """A gap closes when the next phase begins; a long one (Keras: every later callback's epoch
    end) is written then, not with that phase's end, which a killed process never reaches."""
    script = tmp_path / "child.py"
    script.write_text(LONG_GAP_CHILD.format(repo=str(REPO)))
    out = tmp_path / "out"
    killed_after_line([str(script), str(out)], "begun\n")
    gaps = [r for r in read_records(out) if r.phase == "other"]
    assert [round(r.duration_s, 6) for r in gaps if r.epoch == 0] == [2.0]
    assert sum(r.energy_kwh for r in read_records(out)) * 3.6e6 == pytest.approx(300.0)  # 3 s at 100 W


LIGHTNING_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
    import torch
    from lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Slow(TinyModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    callback = EnergyCallback(output_dir=sys.argv[1], progress_bar=False)
    trainer = L.Trainer(max_epochs=1000, logger=False, callbacks=[callback], **trainer_kwargs())
    trainer.fit(Slow(), *loaders())
    """
)


@pytest.mark.slow
def test_lightning_process_killed_mid_training_keeps_every_finished_epoch(tmp_path):
    pytest.importorskip("lightning")
    script = tmp_path / "child.py"
    script.write_text(LIGHTNING_CHILD.format(tests=str(REPO / "tests"), repo=str(REPO)))
    out = tmp_path / "energy"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE, text=True)
    path = out / RECORDS_FILE
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists() and path.read_text().count('"phase": "train"') >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read()[-3000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = read_records(out)
    train = [r for r in written if r.phase == "train"]
    assert len(train) >= 3
    assert [r.epoch for r in train] == list(range(len(train)))  # every finished epoch, in order
    assert not any(r.partial for r in written)  # nothing could run after SIGKILL
    assert all(r.energy_kwh > 0 and r.samples == 32 for r in train)
    # Its records read like a finished training of len(train) epochs; the missing write-up tells.
    from greencallbacks.runs import load

    loaded = load(out)
    assert loaded.unfinished == {written[0].run_id}
    (group,) = json.loads(report.render(loaded.records, "json", unfinished=loaded.unfinished))["configurations"]
    assert group["configuration"]["unfinished"] and "unfinished" in group["statement"]


# ---------------------------------------------------------------------------- Lightning
def _lightning():
    pytest.importorskip("lightning")
    sys.path.insert(0, str(REPO / "tests"))
    from lightning_models import flavour, loaders, trainer_kwargs

    return flavour, loaders, trainer_kwargs


@pytest.mark.slow
def test_lightning_keyboard_interrupt_mid_epoch_is_graceful_and_written(tmp_path):
    flavour, loaders, trainer_kwargs = _lightning()
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Interrupted(TinyModel):
        def training_step(self, batch, batch_idx):
            if (self.current_epoch, batch_idx) == (1, 2):
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    callback = EnergyCallback(output_dir=tmp_path, progress_bar=False)
    trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[callback], **trainer_kwargs())
    sigint = signal.getsignal(signal.SIGINT)
    try:
        # Lightning's own graceful shutdown: on_exception for every callback, then sys.exit(1).
        with pytest.raises(SystemExit):
            trainer.fit(Interrupted(), *loaders())
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl+C while shutting down
    assert trainer.interrupted
    train = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert [(r.epoch, r.partial) for r in train] == [(0, False), (1, True)]
    assert train[1].samples == 16 and train[1].energy_kwh > 0
    assert not meter_threads() and not callback.session.running


@pytest.mark.slow
def test_lightning_two_fits_in_one_process_start_fresh_and_leak_no_thread(tmp_path):
    flavour, loaders, trainer_kwargs = _lightning()
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    threads_before = threading.active_count()
    totals = []
    for run in range(2):
        callback = EnergyCallback(output_dir=tmp_path / f"run{run}", progress_bar=False)
        trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[callback], **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
        written = read_records(tmp_path / f"run{run}")
        assert {r.run_id for r in written} == {callback.tracker.run_id}
        assert callback.tracker.totals["train"].count == 2
        assert callback.tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in written), rel=1e-9)
        totals.append(callback.tracker.total_energy_j)
        assert not meter_threads()
    assert threading.active_count() <= threads_before


# ---------------------------------------------------------------------------------- HF
def _hf():
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    def make(out, callbacks, train=None, **overrides):
        return Trainer(
            model=tiny_model(), args=training_args(out, **overrides), train_dataset=train or TokenDataset(TRAIN_SAMPLES),
            eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=callbacks,
        )

    def callback(**kwargs):
        sensor = scripted_sensor()
        sensor.poll_interval_s = 0.05  # sampled: the meter runs its thread, whose leak we look for
        return EnergyCallback(intensity=400.0, sensors=[sensor], **kwargs)

    return make, callback, TokenDataset, TRAIN_SAMPLES


@pytest.mark.slow
def test_hf_keyboard_interrupt_mid_epoch_propagates_and_is_written(tmp_path):
    make, callback, TokenDataset, TRAIN_SAMPLES = _hf()

    class Interrupting(TokenDataset):
        def __getitem__(self, i):
            if self.reads >= TRAIN_SAMPLES + 20:
                raise KeyboardInterrupt
            return super().__getitem__(i)

    energy = callback()
    trainer = make(tmp_path / "out", [energy], train=Interrupting(TRAIN_SAMPLES))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not meter_threads() and not energy.session.running
    train = [r for r in read_records(tmp_path / "out") if r.phase == "train"]
    assert [(r.epoch, r.partial) for r in train] == [(0, False), (1, True)]
    assert train[1].energy_kwh > 0


@pytest.mark.slow
def test_hf_two_trainings_in_one_process_start_fresh_and_leak_no_thread(tmp_path):
    make, callback, _, _ = _hf()
    run_ids = []
    for run in range(2):
        energy = callback()
        make(tmp_path / f"out{run}", [energy]).train()
        written = read_records(tmp_path / f"out{run}")
        assert energy.tracker.totals["train"].count == 2
        assert energy.tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in written), rel=1e-9)
        run_ids.append(energy.tracker.run_id)
        assert not meter_threads()
    assert run_ids[0] != run_ids[1]


@pytest.mark.slow
def test_hf_two_callbacks_in_one_trainer_each_measure_everything(tmp_path):
    make, callback, _, TRAIN_SAMPLES = _hf()
    low, high = callback(output_dir=tmp_path / "low"), callback(output_dir=tmp_path / "high")
    make(tmp_path / "out", [low, high]).train()
    for energy in (low, high):
        written = read_records(energy.tracker.output_dir)
        train = [r for r in written if r.phase == "train"]
        assert [r.epoch for r in train] == [0, 1]
        assert [r.samples for r in train] == [TRAIN_SAMPLES, TRAIN_SAMPLES]
        assert len([r for r in written if r.phase == "validation"]) == 2
    assert not meter_threads()


# ------------------------------------------------------------------------------- Keras
KERAS_CHILD = textwrap.dedent(
    """
    import gc, json, sys, threading
    sys.path.insert(0, {repo!r})
    import keras, numpy as np
    from greencallbacks.keras import EnergyCallback
    from greencallbacks.records import read_records

    out = sys.argv[1]
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    y = x.sum(axis=1, keepdims=True)

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    def threads():
        from greencallbacks import watch
        watch.settle()  # the watch thread writes a fit that raised up within ~0.2 s
        return sum(t.name == "greencallbacks-meter" and t.is_alive() for t in threading.enumerate())

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

    results = {{}}
    callback = EnergyCallback(output_dir=out + "/interrupt", intensity=100.0)
    try:
        model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback, Interrupt()])
        results["propagated"] = False
    except KeyboardInterrupt:
        results["propagated"] = True
    results["threads_after_interrupt"] = threads()  # no gc.collect() needed: the watch does not wait for it
    results["interrupt"] = [[r.phase, r.epoch, r.partial, r.energy_kwh] for r in read_records(out + "/interrupt")]

    results["runs"] = []
    for run in range(2):
        callback = EnergyCallback(output_dir=out + "/run%d" % run, intensity=100.0)
        history = model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
        written = read_records(out + "/run%d" % run)
        results["runs"].append({{
            "run_id": callback.tracker.run_id,
            "train_count": callback.tracker.totals["train"].count,
            "total_j": callback.tracker.total_energy_j,
            "records_j": sum(r.energy_j for r in written),
            "first_total_kwh": history.history["energy_kwh_total"][0],
            "threads": threads(),
        }})
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_keras_keyboard_interrupt_and_two_fits_in_one_process(tmp_path):
    pytest.importorskip("torch")  # its backend
    pytest.importorskip("keras")
    script = tmp_path / "child.py"
    script.write_text(KERAS_CHILD.format(repo=str(REPO)))
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    # Keras has no interrupt handling: the KeyboardInterrupt reaches the caller, and the
    # unfinished epoch is written as partial once the failed fit's frames are released.
    assert results["propagated"]
    assert results["threads_after_interrupt"] == 0
    train = [(epoch, partial) for phase, epoch, partial, _ in results["interrupt"] if phase == "train"]
    assert train == [(0, False), (1, True)]
    first, second = results["runs"]
    assert first["run_id"] != second["run_id"]
    for run in (first, second):
        assert run["train_count"] == 2 and run["threads"] == 0
        assert run["total_j"] == pytest.approx(run["records_j"], rel=1e-9)
    # Fresh totals: each run's first running total is within its own records (no carry-over).
    for run in (first, second):
        assert 0 < run["first_total_kwh"] * 3.6e6 <= run["records_j"] * (1 + 1e-9)
