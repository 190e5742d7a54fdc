"""Per-hook cost: what the callbacks add to every training step, and what each phase boundary costs.

1. Per step, timed directly (many calls, median of several repeats, in microseconds):
   - Lightning: ``EnergyCallback.on_train_batch_end`` with a real batch in a started session; and
     the whole per-step dispatch Lightning does for one more callback (its six per-step hooks
     through ``_call_callback_hooks``, which formats ``callback.state_key`` into a profiler name
     on every call), with the callback minus without.
   - HF: the ``training_step`` wrapper that counts samples (wrapped minus raw), the callback's
     ``on_step_end``, and the ``CallbackHandler``'s per-step events with the callback minus without.
   - Keras: asserts the callback overrides no training or evaluation batch hook but
     ``on_train_batch_end`` (step values) and is ``async_safe`` (Keras's dispatch is unchanged);
     times ``on_predict_batch_end``.
2. Per boundary: one read of each sensor found here, one ``Meter.snapshot``, one phase
   (``begin`` + ``end``) in memory and with its record written (the fsync follows on the writer's thread).
3. Reads of each sensor per epoch during a real fit of each framework (``energy_j`` wrapped
   with a counter), and the background thread's polls.
4. On a simulated GPU host (the tests' fake NVML on the real clock, each energy-counter read
   sleeping the H100's latency: 2.9 ms median, 15 ms p99): the training thread's time per phase
   boundary (``Tracker.begin`` / ``end`` in memory, each after 10 ms of other work, and the
   meter's part of it), median and p99, with the counter read at the boundary (before) and off
   the training thread (now), also with four idle worker processes in the process tree (whose
   CPU time the CPU estimate reads), and as a multiple of a fixed bit of Python timed alike; and,
   in the same runs, each 1-second epoch's GPU energy against the simulated GPU's exact energy.
5. The share of a fit spent inside the callback, in real fits of all three frameworks with ~1 s
   epochs, on this CPU host and on the simulated GPU host (``overhead.SelfTime``: the training
   thread's time in the callback's hooks and core calls, and the meter thread's CPU time); the
   same fits with an empty callback (the framework's base class), its hooks timed the same way,
   for the time per hook call of ours against it; and a Lightning fit under ``SimpleProfiler``.
6. Step values at the frameworks' logging cadence: one ``Tracker.live`` (CPU host; simulated
   GPU host with the counter off the thread; rank 0 of two local gloo processes, where it sums
   the ranks' open parts in a gather), and each adapter's per-step hook with step values
   on, at a step that does not log, minus the same with them off. Then the hook at a step that
   LOGS, in real fits on this CPU host (``logging_step``): Lightning's ``on_train_batch_end``
   (CSVLogger, and CSV + TensorBoard; a module logging its loss to the progress bar), HF's
   ``on_step_end`` (``report_to`` none and tensorboard) and Keras' ``on_train_batch_end`` beside a
   per-batch TensorBoard, each ``in_fit`` (every logging step of the fit, right after its
   training step: median and mean) and ``warm`` (the same call repeated back to back at one
   logging step), with the part of it in ``EnergySession.live_metrics``.

Usage: python benchmarks/hooks.py [--quick] [--only simulated_gpu_boundaries,fit_shares,...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, mlp_module, percentile, pin_threads, quiet, simulated_gpu_sensor, simulated_nvml  # noqa: E402

LIGHTNING_STEP_HOOKS = (
    ("on_train_batch_start", "batch_idx"),
    ("on_before_backward", "loss"),
    ("on_after_backward", None),
    ("on_before_optimizer_step", "optimizer"),
    ("on_before_zero_grad", "optimizer"),
    ("on_train_batch_end", "outputs"),
)
HF_STEP_EVENTS = ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end")
KERAS_TRAINING_BATCH_HOOKS = (
    "on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end",
    "on_test_batch_begin", "on_test_batch_end",
)
KERAS_HOOKS_OURS = ["on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end"]


def per_call_us(fn, calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean cost of one call, in microseconds."""
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(means)


def loop_overhead_us(calls: int) -> float:
    return per_call_us(lambda: None, calls)


def _batch():
    import torch

    return torch.randn(32, 32), torch.randint(0, 10, (32,))


def host_sensors():
    from greencallbacks.sensors.discover import discover_sensors

    return discover_sensors(gpus=None).sensors


# ------------------------------------------------------------------------------- per step
def lightning_per_step(calls: int, workdir: Path) -> dict:
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.trainer import call

    from greencallbacks.lightning import EnergyCallback

    batch = _batch()
    callback = EnergyCallback(country="FR", output_dir=str(workdir / "lightning-hook"))
    callback.session.start(device_indices=[])
    try:
        direct = per_call_us(lambda: callback.on_train_batch_end(None, None, None, batch, 0), calls)
        state_key = per_call_us(lambda: callback.state_key, calls)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        values = {"batch_idx": (batch, 0), "loss": (torch.tensor(1.0),), "optimizer": (optimizer,),
                  "outputs": ({"loss": torch.tensor(1.0)}, batch, 0), None: ()}

        def dispatch(trainer):
            def one_step():
                for hook, argument in LIGHTNING_STEP_HOOKS:
                    call._call_callback_hooks(trainer, hook, *values[argument])
            return one_step

        kwargs = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, accelerator="cpu", devices=1)
        with_cb = L.Trainer(callbacks=[callback], **kwargs)
        with_empty = L.Trainer(callbacks=[L.Callback()], **kwargs)  # what any one more callback costs
        without_cb = L.Trainer(callbacks=[], **kwargs)
        n = max(1000, calls // 10)
        added, empty = [], []
        for _ in range(5):  # interleaved: the difference of medians drifts less
            bare = per_call_us(dispatch(without_cb), n, 1)
            added.append(per_call_us(dispatch(with_cb), n, 1) - bare)
            empty.append(per_call_us(dispatch(with_empty), n, 1) - bare)
    finally:
        callback.session.stop()
    return {
        "on_train_batch_end_us": direct - loop_overhead_us(calls),
        "state_key_us": state_key,
        "step_dispatch_added_us": statistics.median(added),
        "empty_callback_step_dispatch_added_us": statistics.median(empty),
        "per_step_hooks_dispatched": len(LIGHTNING_STEP_HOOKS),
    }


def hf_per_step(calls: int, workdir: Path) -> dict:
    import types

    import transformers
    from transformers import TrainingArguments
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState

    from greencallbacks import hf as hf_adapter
    from greencallbacks.hf import EnergyCallback

    transformers.logging.set_verbosity_error()
    inputs = {"inputs": _batch()[0], "labels": _batch()[1]}
    callback = EnergyCallback(country="FR", output_dir=str(workdir / "hf-hook"))
    callback.session.start(device_indices=[])
    try:
        raw = types.SimpleNamespace(training_step=lambda model, batch: None, prediction_step=lambda *a, **k: None)
        wrapped = types.SimpleNamespace(training_step=lambda model, batch: None, prediction_step=lambda *a, **k: None,
                                        callback_handler=types.SimpleNamespace(callbacks=[callback]))
        wrapped.__dict__[hf_adapter._OWNERS] = [callback]
        hf_adapter._wrap_trainer(wrapped)
        wrapper_us = per_call_us(lambda: wrapped.training_step(None, inputs), calls) - per_call_us(
            lambda: raw.training_step(None, inputs), calls)

        args = TrainingArguments(output_dir=str(workdir / "hf-args"), use_cpu=True, report_to="none")
        # A step that does not log: at global_step 0, 0 % logging_steps == 0 made every call a logging
        # step (the step values computed each time: 16 us of the 19.5 measured so on 2026-12-04).
        state, control = TrainerState(global_step=1), TrainerControl()
        on_step_end_us = per_call_us(lambda: callback.on_step_end(args, state, control), calls) - loop_overhead_us(calls)

        def events(handler):
            def one_step():
                for event in HF_STEP_EVENTS:
                    getattr(handler, event)(args, state, control)
            return one_step

        with_cb = CallbackHandler([DefaultFlowCallback, callback], None, None, None, None)
        with_empty = CallbackHandler([DefaultFlowCallback, transformers.TrainerCallback()], None, None, None, None)
        without_cb = CallbackHandler([DefaultFlowCallback], None, None, None, None)
        n = max(1000, calls // 10)
        added, empty = [], []
        for _ in range(5):
            bare = per_call_us(events(without_cb), n, 1)
            added.append(per_call_us(events(with_cb), n, 1) - bare)
            empty.append(per_call_us(events(with_empty), n, 1) - bare)
    finally:
        callback.session.stop()
    return {
        "training_step_wrapper_us": wrapper_us,
        "on_step_end_us": on_step_end_us,
        "step_events_added_us": statistics.median(added),
        "empty_callback_step_events_added_us": statistics.median(empty),
        "per_step_events_dispatched": len(HF_STEP_EVENTS),
    }


def keras_per_step(calls: int, workdir: Path) -> dict:
    import keras
    import numpy as np

    from greencallbacks.keras import EnergyCallback

    base = keras.callbacks.Callback
    overridden = [h for h in KERAS_TRAINING_BATCH_HOOKS if getattr(EnergyCallback, h) is not getattr(base, h)]
    # The batch hooks count steps (a failed epoch's step; a custom test_step's count; calls begun
    # against calls ended, for a compiled step that ran out of data) and give the step values;
    # async_safe keeps Keras dispatching them asynchronously, off the training thread.
    assert overridden == KERAS_HOOKS_OURS and EnergyCallback.async_safe, \
        f"per-batch training hooks: {overridden}"
    callback = EnergyCallback(country="FR", output_dir=str(workdir / "keras-hook"))
    logs = {"outputs": np.zeros((32, 10), dtype="float32")}
    predict_us = per_call_us(lambda: callback.on_predict_batch_end(0, logs), calls) - loop_overhead_us(calls)
    train_us = per_call_us(lambda: callback.on_train_batch_end(0, {}), calls) - loop_overhead_us(calls)
    test_us = per_call_us(lambda: callback.on_test_batch_end(0, {}), calls) - loop_overhead_us(calls)
    train_begin_us = per_call_us(lambda: callback.on_train_batch_begin(0, {}), calls) - loop_overhead_us(calls)
    test_begin_us = per_call_us(lambda: callback.on_test_batch_begin(0, {}), calls) - loop_overhead_us(calls)
    return {
        "training_batch_hooks_overridden": overridden,
        "async_safe": bool(getattr(EnergyCallback, "async_safe", False)),
        "on_predict_batch_end_us": predict_us,
        "on_train_batch_end_us": train_us,
        "on_test_batch_end_us": test_us,
        "on_train_batch_begin_us": train_begin_us,
        "on_test_batch_begin_us": test_begin_us,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
    }


# ---------------------------------------------------------------------------- per boundary
def boundary_costs(workdir: Path, repeats: int) -> dict:
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker

    sensors = host_sensors()
    reads = {}
    for sensor in sensors:
        costs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sensor.energy_j()
            costs.append((time.perf_counter() - t0) * 1e6)
        reads[sensor.name] = {"method": str(sensor.method), "median_us": statistics.median(costs)}
    meter = Meter(sensors)

    def timed(fn, after_work_s: float = 0.0, before=None) -> float:
        costs = []
        for _ in range(repeats):
            if before is not None:
                before()
            _busy(after_work_s)
            t0 = time.perf_counter()
            fn()
            costs.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(costs)

    snapshot_us = timed(meter.snapshot)
    phase = {}
    for label, output_dir in (("in_memory", None), ("records_written", workdir / "boundary")):
        tracker = Tracker(output_dir=output_dir)
        tracker.start(meter)

        def one_phase(tracker=tracker):
            tracker.begin("train", 0)
            tracker.end("train")

        phase[label] = timed(one_phase)
        if output_dir is not None:  # the end alone (the phase's record and the gap's written), after an epoch's work
            phase["end_after_work"] = timed(lambda: tracker.end("train"), 0.01, before=lambda: tracker.begin("train", 0))
            phase["reference_after_work"] = timed(_reference_work, 0.01)  # the yardstick of section 7
        tracker.finish()
    meter.close()
    return {
        "sensors": reads,
        "snapshot_us": snapshot_us,
        "phase_begin_end_in_memory_us": phase["in_memory"],
        "phase_begin_end_records_written_us": phase["records_written"],
        "phase_end_records_written_after_10ms_work_us": phase["end_after_work"],
        "reference_after_10ms_work_us": phase["reference_after_work"],
    }


# --------------------------------------------------------------------------- reads / epoch
def counted_sensors():
    sensors = host_sensors()
    reads: collections.Counter = collections.Counter()
    polls: collections.Counter = collections.Counter()
    for sensor in sensors:
        read, poll = sensor.energy_j, sensor.poll

        def counted_read(read=read, name=sensor.name):
            reads[name] += 1
            return read()

        def counted_poll(poll=poll, name=sensor.name):
            polls[name] += 1
            return poll()

        sensor.energy_j, sensor.poll = counted_read, counted_poll
    return sensors, reads, polls


def reads_per_epoch(epochs: int, steps: int, workdir: Path) -> dict:
    import overhead

    out = {}
    x, y, xv, yv = overhead._data(steps, 2)

    # Lightning
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from greencallbacks.lightning import EnergyCallback as LightningCallback

    Module = mlp_module()

    sensors, reads, polls = counted_sensors()
    t0 = time.perf_counter()
    L.Trainer(max_epochs=epochs, callbacks=[LightningCallback(country="FR", sensors=sensors)],
              logger=L.loggers.CSVLogger(str(workdir / "lightning-reads")), enable_progress_bar=False,
              enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
              accelerator="cpu", devices=1).fit(
        Module(), DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(xv, yv), batch_size=32))
    out["lightning"] = _reads_summary(reads, polls, epochs, time.perf_counter() - t0)

    # Keras
    import keras

    from greencallbacks.keras import EnergyCallback as KerasCallback

    sensors, reads, polls = counted_sensors()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.fit(x.numpy(), y.numpy(), batch_size=32, epochs=epochs, validation_data=(xv.numpy(), yv.numpy()), verbose=0,
              callbacks=[KerasCallback(country="FR", sensors=sensors, output_dir=str(workdir / "keras-reads"))])
    out["keras"] = _reads_summary(reads, polls, epochs, time.perf_counter() - t0)

    # HF
    import transformers
    from transformers import Trainer, TrainingArguments

    from greencallbacks.hf import EnergyCallback as HFCallback

    transformers.logging.set_verbosity_error()

    Rows, Model = overhead.hf_dataset_and_model()

    sensors, reads, polls = counted_sensors()
    args = TrainingArguments(output_dir=str(workdir / "hf-reads"), num_train_epochs=epochs, per_device_train_batch_size=32,
                             per_device_eval_batch_size=32, use_cpu=True, disable_tqdm=True, report_to="none",
                             logging_strategy="epoch", eval_strategy="epoch", save_strategy="no", seed=0)
    t0 = time.perf_counter()
    Trainer(model=Model(), args=args, train_dataset=Rows(x, y), eval_dataset=Rows(xv, yv),
            callbacks=[HFCallback(country="FR", sensors=sensors)]).train()
    out["hf"] = _reads_summary(reads, polls, epochs, time.perf_counter() - t0)
    return out


def _reads_summary(reads, polls, epochs: int, seconds: float) -> dict:
    return {
        "epochs": epochs,
        "reads_per_epoch": {name: count / epochs for name, count in reads.items()},
        "reads_total": dict(reads),
        "polls_per_s": {name: count / seconds for name, count in polls.items()},
        "fit_s": seconds,
    }


# ------------------------------------------------------------------ simulated GPU host
def _busy(seconds: float) -> None:
    """Stand-in for training: a pure-Python loop holds the GIL, the worst case for the meter's
    thread (torch releases it inside its kernels)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _reference_work() -> dict:
    """A fixed bit of plain Python (a 10-item dict) timed like a boundary: on this VM such code
    runs 10-100x slower right after other work than in a warm loop, so boundaries are also
    given as a multiple of it."""
    out = {}
    for i in range(10):
        out[i] = i * 2.0
    return out


def _worker_processes(count: int) -> list:
    """Idle child processes, as DataLoader workers are: the CPU estimate reads each one's CPU time."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]) for _ in range(count)]


def simulated_gpu_boundaries(quick: bool) -> dict:
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker

    phases = 30 if quick else 400
    epochs, epoch_s, val_s = (2, 0.3, 0.1) if quick else (8, 1.0, 0.3)
    out = {"phases_timed": phases, "epoch_s": epoch_s}
    # (label, GPU counter off the thread (None: no GPU), worker processes, CPU time off the thread)
    configs = [("cpu_host_control", None, 0, True), ("counter_read_at_boundary", False, 0, False),
               ("off_thread", True, 0, True)]
    if not quick:
        configs += [("off_thread_4_workers_cpu_time_in_place", True, 4, False), ("off_thread_4_workers", True, 4, True)]
    for label, off_thread, workers, cpu_off_thread in configs:
        children = _worker_processes(workers)
        time.sleep(2.5 if workers else 0)  # the process tree's children are listed every 2 s
        nvml, gpu = simulated_nvml(300.0)
        gpu_sensors = [] if off_thread is None else [simulated_gpu_sensor(nvml, gpu)]
        sensors = host_sensors()
        for sensor in sensors:
            # The process tree's CPU time: read in place before 2026-12-01 (a /proc read per child);
            # 2026-12-03 to 2026-12-05 off the thread while the tree had live children; since
            # 2026-12-06 at the boundary without a /proc read (getrusage, and each child's CPU clock:
            # the library's own choice). `_reads_tree = False` is the read of before 2026-12-01.
            if sensor.name == "cpu" and not cpu_off_thread:
                sensor._reads_tree = False
        meter = Meter([*gpu_sensors, *sensors], off_thread=bool(off_thread) or cpu_off_thread)
        snapshot = meter.snapshot
        meter_us: list[float] = []

        def timed_snapshot(*args, **kwargs):  # the meter's share of a boundary (snapshot + window)
            t0 = time.perf_counter()
            try:
                return snapshot(*args, **kwargs)
            finally:
                meter_us.append((time.perf_counter() - t0) * 1e6)

        meter.snapshot = timed_snapshot
        tracker = Tracker()  # records in memory: the tracker's own writing is timed in boundary_costs
        tracker.start(meter)
        read_counter, on_training_thread = nvml.nvmlDeviceGetTotalEnergyConsumption, [0]

        def counted_read(handle):  # counter reads made by the training thread, a fact not a timing
            on_training_thread[0] += threading.current_thread() is threading.main_thread()
            return read_counter(handle)

        nvml.nvmlDeviceGetTotalEnergyConsumption = counted_read
        boundary_us, reference_us = [], []
        for _ in range(phases):
            for call, into in ((lambda: tracker.begin("train", 0), boundary_us), (lambda: tracker.end("train"), boundary_us),
                               (_reference_work, reference_us)):
                _busy(0.01)
                t0 = time.perf_counter()
                call()
                into.append((time.perf_counter() - t0) * 1e6)
        # Accuracy: power steps at every boundary (the hardest case for a quantised counter), with
        # training that holds the GIL (a pure-Python loop) and then training that releases it
        # (sleeping, as a thread waiting on the device does).
        stamps, waits = {}, {}
        for epoch in range(1, 2 * epochs + 1):  # epoch 0 holds the timed phases above
            stamps[epoch], waits[epoch] = [], _busy if epoch <= epochs else time.sleep
            for power, seconds, call in ((650.0, epoch_s, lambda: tracker.begin("train", epoch)),
                                         (250.0, val_s, lambda: tracker.begin("validation", epoch)),
                                         (650.0, 0.02, lambda: tracker.end("validation")),
                                         (100.0, 0.05, lambda: tracker.end("train"))):
                gpu.set_power(power)  # the load changes at the boundary's instant
                stamps[epoch].append(time.monotonic())
                call()
                waits[epoch](seconds)
        reads_while_timed = on_training_thread[0]
        tracker.finish()
        errors: dict[str, list[float]] = {"gil_held": [], "gil_released": []}
        for record in tracker.records if gpu_sensors else ():
            if record.phase == "train" and record.epoch in stamps:
                ours = sum(c["energy_j"] for c in record.components if c["kind"] == "gpu")
                t0, t1, t2, t3 = stamps[record.epoch]  # the train record excludes its validation
                truth = gpu.energy_between_j(t0, t1) + gpu.energy_between_j(t2, t3)
                errors["gil_held" if record.epoch <= epochs else "gil_released"].append((ours - truth) / truth)
        meter.close()
        for child in children:
            child.kill()
            child.wait()
        out[label] = {
            "worker_processes": workers,
            "boundary_us_median": statistics.median(boundary_us),
            "reference_us_median": statistics.median(reference_us),
            "boundary_over_reference": statistics.median(boundary_us) / statistics.median(reference_us),
            "boundary_us_p99": percentile(boundary_us, 0.99),
            "meter_us_median": statistics.median(meter_us),
            "meter_us_p99": percentile(meter_us, 0.99),
            "counter_reads_on_training_thread": reads_while_timed,
            "epoch_gpu_relative_errors": errors,
            "epoch_gpu_max_abs_relative_error": {k: max((abs(e) for e in v), default=None) for k, v in errors.items()},
        }
    return out


def step_cadence(calls: int, workdir: Path) -> dict:
    """What step values cost: one ``Tracker.live``, the per-step hooks at a step that does not log,
    and each adapter's hook at a step that logs, in a real fit (``logging_steps``)."""
    import types

    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker

    out = {}
    for label, gpu in (("cpu_host", False), ("simulated_gpu_host", True)):
        meter = Meter([*host_sensors(), *([simulated_gpu_sensor(*simulated_nvml(300.0))] if gpu else [])])
        tracker = Tracker()
        tracker.start(meter)
        tracker.begin("train", 0)
        time.sleep(0.3)  # the reader has read the counter and found its phase
        out[f"tracker_live_us.{label}"] = per_call_us(tracker.live, max(1000, calls // 20))
        tracker.end("train")
        tracker.finish()
        meter.close()
    out["tracker_live_us.two_gloo_ranks"] = _live_on_two_ranks(max(200, calls // 100))

    from greencallbacks.hf import EnergyCallback as HFCallback
    from greencallbacks.keras import EnergyCallback as KerasCallback
    from greencallbacks.lightning import EnergyCallback as LightningCallback

    batch = _batch()
    trainer = types.SimpleNamespace(global_step=1)  # not a logging step (log_every_n_steps=50)
    control = types.SimpleNamespace(should_log=False, should_evaluate=False)
    logs = {"loss": 0.1}
    hooks = {}
    for on in (True, False):
        lightning = LightningCallback(country="FR", output_dir=str(workdir / f"step-l{on}"), step_metrics=on)
        lightning.session.start(device_indices=[])
        lightning._live_every = 50 if on else 0  # what on_train_start sets in a fit
        hf = HFCallback(country="FR", output_dir=str(workdir / f"step-h{on}"), step_metrics=on)
        keras_cb = KerasCallback(country="FR", output_dir=str(workdir / f"step-k{on}"), step_metrics=on)
        keras_cb._live_every = 10**9 if on else 0  # a TensorBoard with update_freq: a batch it does not write
        try:
            hooks[on] = {
                "lightning.on_train_batch_end": per_call_us(lambda: lightning.on_train_batch_end(trainer, None, None, batch, 0), calls),
                "hf.on_step_end": per_call_us(lambda: hf.on_step_end(None, None, control), calls),
                "keras.on_train_batch_end": per_call_us(lambda: keras_cb.on_train_batch_end(0, logs), calls),
            }
        finally:
            lightning.session.stop()
    out.update({f"added_per_step_us.{name}": hooks[True][name] - hooks[False][name] for name in hooks[True]})
    out.update({f"per_step_us_off.{name}": value - loop_overhead_us(calls) for name, value in hooks[False].items()})
    out["logging_step"] = logging_steps(workdir, quick=calls < 100_000)
    return out


def _live_on_two_ranks(calls: int) -> float:
    """One ``Tracker.live`` on rank 0 of two local gloo processes, where it sums the ranks' open
    parts in a gather (microseconds per call, median of repeats; both ranks call it back to back)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_live_rank, args=(port, calls, results), nprocs=2, join=True)
    return results[0]


def _live_rank(rank: int, port: int, calls: int, results) -> None:
    import torch.distributed as dist

    from greencallbacks.distributed import TorchReducer
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tracker = Tracker()
        tracker.start(Meter(host_sensors()), reducer=TorchReducer(), output_dir=tempfile.mkdtemp(prefix="gcb-live-"))
        tracker.begin("train", 0)
        dist.barrier()
        results[rank] = per_call_us(tracker.live, calls)
        tracker.end("train")
        tracker.finish()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------- a step that logs
class _StepTimes:
    """Each call of a hook, timed and told apart by whether it logged step values; at one logging
    step (the ``warm_at``-th), the logging call repeated ``warm`` times back to back. The part in
    ``EnergySession.live_metrics`` (the core's share) is timed alike."""

    def __init__(self, warm: int, warm_at: int = 3) -> None:
        self.logging, self.other, self.warm, self.live, self.live_warm = [], [], [], [], []
        self.warm_calls, self.warm_at = warm, warm_at
        self._warming = False

    def time(self, call, logged, again=None) -> None:
        t0 = time.perf_counter()
        call()
        took = time.perf_counter() - t0
        if not logged():
            self.other.append(took)
            return
        self.logging.append(took)
        if len(self.logging) == self.warm_at and again is not None:
            self._warming = True
            for _ in range(self.warm_calls):
                again()  # undo what marks the step as logged
                t0 = time.perf_counter()
                call()
                self.warm.append(time.perf_counter() - t0)
            self._warming = False

    @contextlib.contextmanager
    def watching_live(self):
        from greencallbacks.session import EnergySession

        live = EnergySession.live_metrics

        def timed(session, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return live(session, *args, **kwargs)
            finally:
                (self.live_warm if self._warming else self.live).append(time.perf_counter() - t0)

        EnergySession.live_metrics = timed
        try:
            yield
        finally:
            EnergySession.live_metrics = live

    def summary(self) -> dict:
        def us(values):
            return {"n": len(values), "median_us": statistics.median(values) * 1e6 if values else None,
                    "mean_us": statistics.mean(values) * 1e6 if values else None}

        return {"in_fit": us(self.logging), "warm": us(self.warm), "live_metrics_in_fit": us(self.live),
                "live_metrics_warm": us(self.live_warm), "other_steps": us(self.other)}


def logging_steps(workdir: Path, quick: bool) -> dict:
    import importlib.util

    tensorboard = importlib.util.find_spec("tensorboard") is not None  # else the cases without it only
    out = {}
    steps, every, warm = (200, 10, 100) if quick else (1000, 10, 1000)
    for loggers in ("csv", "csv+tensorboard")[:1 + tensorboard]:
        out[f"lightning.{loggers}"] = _lightning_logging_steps(workdir / f"ll-{loggers}", steps, every, warm, loggers)
    for report_to in ("none", "tensorboard")[:1 + tensorboard]:
        out[f"hf.report_to_{report_to}"] = _hf_logging_steps(workdir / f"hl-{report_to}", steps, every, warm, report_to)
    if tensorboard:
        out["keras.tensorboard"] = _keras_logging_steps(workdir / "kl", steps, every, warm)
    return out


def _lightning_logging_steps(workdir: Path, steps: int, every: int, warm: int, loggers: str) -> dict:
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import overhead
    from greencallbacks.lightning import EnergyCallback

    times = _StepTimes(warm)

    class Timed(EnergyCallback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            before = self._live_step
            times.time(lambda: super(Timed, self).on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx),
                       lambda: self._live_step != before, lambda: self._replay(before))

        def _replay(self, step):  # as before the logging step's call
            self._live_step, self._live_wait = step, 0

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = overhead._mlp()

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y, _, _ = overhead._data(steps, 0)
    callback = Timed(country="FR", output_dir=str(workdir / "energy"))
    chosen = [L.loggers.CSVLogger(str(workdir))]
    if "tensorboard" in loggers:
        chosen.append(L.loggers.TensorBoardLogger(str(workdir)))
    with times.watching_live():
        trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=chosen, log_every_n_steps=every,
                            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                            accelerator="cpu", devices=1)
        trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=overhead.BATCH))
    return times.summary()


def _hf_logging_steps(workdir: Path, steps: int, every: int, warm: int, report_to: str) -> dict:
    import io

    import transformers
    from transformers import Trainer, TrainingArguments

    import overhead
    from greencallbacks.hf import EnergyCallback

    transformers.logging.set_verbosity_error()
    times = _StepTimes(warm)

    class Timed(EnergyCallback):
        def on_step_end(self, args, state, control, **kwargs):
            should = control.should_log or control.should_evaluate
            times.time(lambda: super(Timed, self).on_step_end(args, state, control, **kwargs), lambda: should,
                       lambda: None)

    Rows, Model = overhead.hf_dataset_and_model()
    x, y, _, _ = overhead._data(steps, 0)
    callback = Timed(country="FR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(workdir / "tb")  # transformers 5; 4.x: logging_dir
    args = TrainingArguments(
        output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=overhead.BATCH, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, report_to=report_to, logging_strategy="steps",
        logging_steps=every, eval_strategy="no", save_strategy="no", seed=0, learning_rate=0.01,
    )
    with contextlib.redirect_stdout(io.StringIO()), times.watching_live():  # the Trainer prints every log
        Trainer(model=Model(), args=args, train_dataset=Rows(x, y), callbacks=[callback]).train()
    return times.summary()


def _keras_logging_steps(workdir: Path, steps: int, every: int, warm: int) -> dict:
    import keras

    import overhead
    from greencallbacks.keras import EnergyCallback

    times = _StepTimes(warm)

    class Timed(EnergyCallback):
        def on_train_batch_end(self, batch, logs=None):
            logged = lambda: bool(self._live_every) and self._live_batches % self._live_every == 0  # noqa: E731
            times.time(lambda: super(Timed, self).on_train_batch_end(batch, logs), logged,
                       lambda: setattr(self, "_live_batches", self._live_batches - 1))

    x, y, _, _ = (t.numpy() for t in overhead._data(steps, 0))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((overhead.IN_FEATURES,)),
                              keras.layers.Dense(overhead.HIDDEN, activation="relu"), keras.layers.Dense(overhead.CLASSES)])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = Timed(country="FR", output_dir=str(workdir / "energy"))
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(workdir / "tb"), update_freq=every)
    with times.watching_live():
        model.fit(x, y, batch_size=overhead.BATCH, epochs=1, verbose=0, shuffle=False,
                  callbacks=[callback, tensorboard])
    return times.summary()


def fit_shares(quick: bool, workdir: Path) -> dict:
    import overhead

    out = {}
    for framework in ("lightning", "keras", "hf"):
        epochs, steps, val_steps = overhead.SIZES[framework]["quick" if quick else "second"]
        for host in ("cpu", "simulated_gpu"):
            sensors = None if host == "cpu" else (lambda: [*host_sensors(), simulated_gpu_sensor(*simulated_nvml(300.0))])
            variants = overhead.BUILDERS[framework](epochs, steps, val_steps, workdir / f"{framework}-{host}",
                                                    sensors=sensors, with_empty=host == "cpu")
            variants["greencallbacks"]()  # warm-up
            run = overhead.attribute(framework, variants, 1 if quick else 3)["median_run"]
            out[f"{framework}.{host}"] = _share(run, epochs)
            if host == "cpu":  # an empty callback in the same fit, its hooks timed the same way
                empty = overhead.attribute(framework, variants, 1 if quick else 3, variant="empty_callback")["median_run"]
                out[f"{framework}.empty_callback"] = _share(empty, epochs)
                out[f"{framework}.us_per_hook_call_over_empty"] = run["us_per_hook_call"] - empty["us_per_hook_call"]
    out["lightning_profiled"] = lightning_profiled(quick, workdir)
    return out


def _share(run: dict, epochs: int) -> dict:
    # Calls made once per fit (set-up, start, teardown) do not recur with more epochs: the
    # steady share leaves them out, which is what a long fit of such epochs would show.
    once_s = sum(ms for label, ms in run["ms_by_call"].items() if run["calls"][label] == 1) / 1e3
    return {
        "epochs": epochs,
        "epoch_s": run["wall_s"] / epochs,
        "training_thread_ms": run["training_thread_s"] * 1e3,
        "meter_thread_cpu_ms": run["meter_thread_cpu_s"] * 1e3,
        "training_thread_share": run["training_thread_s"] / run["wall_s"],
        "once_per_fit_ms": once_s * 1e3,
        "steady_share": (run["training_thread_s"] - once_s) / run["wall_s"],
        "hook_calls": run["hook_calls"],
        "us_per_hook_call": run["us_per_hook_call"],
        "us_per_hook_call_median": run["us_per_hook_call_median"],
        "ms_by_call": run["ms_by_call"],
    }


def lightning_profiled(quick: bool, workdir: Path) -> dict:
    """One Lightning fit each with our callback and an empty one, under ``SimpleProfiler``."""
    import lightning.pytorch as L
    from lightning.pytorch.profilers import SimpleProfiler
    from torch.utils.data import DataLoader, TensorDataset

    import overhead
    from greencallbacks.lightning import EnergyCallback

    epochs, steps, val_steps = overhead.SIZES["lightning"]["quick" if quick else "second"]
    x, y, xv, yv = overhead._data(steps, val_steps)

    Module = mlp_module()

    out = {}
    for label, make in (("greencallbacks", lambda: EnergyCallback(country="FR")), ("empty_callback", L.Callback)):
        callback, profiler = make(), SimpleProfiler()
        t0 = time.perf_counter()
        L.Trainer(max_epochs=epochs, callbacks=[callback], profiler=profiler, logger=L.loggers.CSVLogger(str(workdir / label)),
                  enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                  num_sanity_val_steps=0, accelerator="cpu", devices=1).fit(
            Module(), DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(xv, yv), batch_size=32))
        wall = time.perf_counter() - t0
        prefix = f"[Callback]{callback.state_key}."
        by_hook = {name[len(prefix):]: ds for name, ds in profiler.recorded_durations.items() if name.startswith(prefix)}
        durations = [d for ds in by_hook.values() for d in ds]
        out[label] = {"hook_calls": len(durations), "us_per_hook_call": sum(durations) / len(durations) * 1e6,
                      "us_per_hook_call_median": statistics.median(durations) * 1e6,
                      "hooks_ms": sum(durations) * 1e3, "fit_s": wall, "share_of_fit": sum(durations) / wall,
                      "us_per_call_by_hook": {h: (len(ds), sum(ds) / len(ds) * 1e6) for h, ds in by_hook.items()}}
    out["us_per_call_over_empty"] = out["greencallbacks"]["us_per_hook_call"] - out["empty_callback"]["us_per_hook_call"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(SECTIONS))
    args = parser.parse_args()
    only = SECTIONS if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if set(only) - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {sorted(set(only) - set(SECTIONS))}; choose from {','.join(SECTIONS)}")
    quiet()
    pin_threads(1)
    calls = 10_000 if args.quick else 100_000
    sections = {
        "lightning": lambda w: lightning_per_step(calls, w),
        "hf": lambda w: hf_per_step(calls, w),
        "keras": lambda w: keras_per_step(calls, w),
        "boundary": lambda w: boundary_costs(w, 20 if args.quick else 200),
        "reads": lambda w: reads_per_epoch(3 if args.quick else 5, 5 if args.quick else 20, w),
        "simulated_gpu_boundaries": lambda w: simulated_gpu_boundaries(args.quick),
        "fit_shares": lambda w: fit_shares(args.quick, w),
        "step_cadence": lambda w: step_cadence(calls, w),
    }
    with tempfile.TemporaryDirectory(prefix="gcb-hooks-") as tmp:
        result = {"calls": calls, **{name: sections[name](Path(tmp)) for name in only}}
    emit(result)


SECTIONS = ("lightning", "hf", "keras", "boundary", "reads", "simulated_gpu_boundaries", "fit_shares", "step_cadence")


if __name__ == "__main__":
    main()
