"""On an NVIDIA GPU: the meter, the three adapters and (optionally) CodeCarbon and Zeus against NVML.

One workload (a matmul-heavy MLP in TF32 whose data is generated on the device, no validation
loop, so the GPU runs near its power limit) and two references, read after
``torch.cuda.synchronize()`` at the same hooks as the tool under test:

* ``counter``: ``nvmlDeviceGetTotalEnergyConsumption``, what a synchronised boundary read gives.
  It holds the energy of its last 100 ms update, so a window's reference is itself off by up to
  one update's energy at each end (~10 % of a 0.8 s epoch at 600 W).
* ``instant``: instantaneous power (``NVML_FI_DEV_POWER_INSTANT``) sampled every 2 ms by a
  thread and integrated up to the read: not quantised (within 0.4 % of the counter over 1-5 s on
  an H100, RESULTS.md section 5).

Parts (``--parts``, comma-separated; default all but ``peers``):

* ``sensor``: over a load, the counter against instantaneous power integrated every 2 ms and the
  1-second averaged power; the cost of one read of each; the training thread's time per
  ``Meter.snapshot`` (with synchronisation) with the counter read at the boundary
  (``off_thread=False``) and off the training thread (the default), median and p99.
* ``core``: ``Meter`` windows of 1 s and 5 s against both references.
* ``lightning``, ``hf``, ``keras``: each adapter's per-epoch GPU energy (the ``train`` record's
  GPU component) against the references read at the same epoch hooks by a callback placed
  before ours, on short (~0.8 s) and long (~6 s) epochs; the sum of all records against the run
  (target: within 1 % per epoch for epochs of at least 1 s, within 0.5 % per run).
* ``bubble``: what ours costs the fit in wall clock, A/B: the same Lightning fit of many short
  epochs with no energy callback, with ours, with ours not synchronising (its boundaries then bill
  queued work late) and with ours sampling instantaneous power at 10 Hz instead of 50, in turns;
  the time from the start of training to its end after a final synchronize, per epoch.
* ``peers``: the Lightning fit again with, nested inside ours, a Zeus window
  (``begin_window``/``end_window``) and a CodeCarbon task (``start_task``/``stop_task``, no
  synchronize, as a user's callback would) per epoch, and CodeCarbon's tracker
  (``OfflineEmissionsTracker``, ``tracking_mode="process"``) and a Zeus window around ``fit``.
  Both are optional: a peer that does not import is recorded with the reason. Every Internet
  connection and DNS look-up in the process is refused and recorded (``network_attempts``).
  Zeus 0.16 imports ``sklearn.metrics.auc`` only for its power-sampling path; without
  scikit-learn a trapezoid ``auc`` stands in during its import (``sklearn_shim``).

``--dry-run`` runs everything on the CPU with tiny sizes and a simulated GPU (the tests' fake
NVML on the real clock: a counter stepping every 100 ms, instantaneous power, each counter read
sleeping the H100's latency) read by our sensor and by both references; the peers then measure
the real machine (no GPU), so their figures only check the plumbing. It exits 0.

Usage: python benchmarks/gpu.py [--parts sensor,core,lightning,hf,keras,bubble,peers] [--json OUT] [--dry-run]
About 4 minutes on an H100 for every part. On a machine without network, carry the peers' wheels
and ``pip install --no-index --no-deps --target /tmp/site WHEELS`` first (PYTHONPATH=/tmp/site).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, simulated_gpu_sensor, simulated_nvml  # noqa: E402
from overhead import SelfTime  # noqa: E402

PARTS = ("sensor", "core", "lightning", "hf", "keras", "bubble", "peers")
TARGET_EPOCH, TARGET_RUN = 0.01, 0.005  # relative: epochs >= 1 s; the sum of a run's records
KWH_J = 3.6e6


# ----------------------------------------------------------------------------- the GPU
class Gpu:
    """The device under test and its NVML handle (real, or the simulated one of --dry-run)."""

    def __init__(self, torch, dry_run: bool) -> None:
        self.torch, self.dry_run = torch, dry_run
        if dry_run:
            self.nvml, self.simulated = simulated_nvml(250.0)
            self.handle, self.index, self.device = self.simulated.handle, 0, torch.device("cpu")
            self.name, self.driver = "simulated 250 W GPU (fake NVML, H100 read latency)", None
            return
        import pynvml

        self.nvml, self.simulated = pynvml, None
        pynvml.nvmlInit()
        self.index = torch.cuda.current_device()
        self.device = torch.device("cuda", self.index)
        uuid = str(getattr(torch.cuda.get_device_properties(self.index), "uuid", "") or "")
        try:  # NVML enumerates in PCI order, CUDA fastest first: resolve through the UUID
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except Exception:  # noqa: BLE001
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.name, self.driver = (name if isinstance(name, str) else name.decode()), pynvml.nvmlSystemGetDriverVersion()

    def sync(self) -> None:
        if not self.dry_run:
            self.torch.cuda.synchronize(self.index)

    def counter_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def instant_w(self) -> float:
        (value,) = self.nvml.nvmlDeviceGetFieldValues(self.handle, [self.nvml.NVML_FI_DEV_POWER_INSTANT])
        return value.value.uiVal / 1000.0

    def averaged_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def sensor(self):
        """Our NVML sensor for this GPU, as the adapters discover it."""
        if self.dry_run:
            return simulated_gpu_sensor(self.nvml, self.simulated)
        from greencallbacks.sensors.nvml import find_nvml_gpus

        return find_nvml_gpus(device_indices=[self.index]).sensors[0]

    def callback_kwargs(self) -> dict:
        return {"sensors": [self.sensor()]} if self.dry_run else {"gpus": [self.index]}


class References:
    """Both references, read together after synchronising: ``read()`` -> {"counter": J, "instant": J}."""

    def __init__(self, gpu: Gpu, interval_s: float = 0.002) -> None:
        self.gpu, self.interval_s = gpu, interval_s
        self._lock = threading.Lock()
        self._t, self._w, self._j = time.monotonic(), gpu.instant_w(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reference-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        power, now = self.gpu.instant_w(), time.monotonic()
        with self._lock:
            self._j += 0.5 * (power + self._w) * (now - self._t)
            self._t, self._w = now, power

    def read(self, after_ours: bool = False) -> dict:
        """Both, synchronised. The instantaneous integral is taken next to our boundary (after
        the counter's milliseconds-long read when ours comes next, before it when ours came just
        before), so it covers the same span as ours to within microseconds."""
        self.gpu.sync()
        counter = None if after_ours else self.gpu.counter_j()
        self._sample()
        with self._lock:
            instant = self._j
        return {"counter": self.gpu.counter_j() if after_ours else counter, "instant": instant}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def delta(end: dict, start: dict) -> dict:
    return {k: end[k] - start[k] for k in end}


def rel(value, reference):
    return None if value is None or not reference or reference <= 0 else (value - reference) / reference


# ------------------------------------------------------------------------------ workload
class Workload:
    def __init__(self, torch, device, hidden: int, batch: int) -> None:
        self.torch, self.device, self.hidden, self.batch = torch, device, hidden, batch

    def model(self):
        torch, h = self.torch, self.hidden
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(h, 2 * h), torch.nn.ReLU(), torch.nn.Linear(2 * h, 2 * h), torch.nn.ReLU(),
            torch.nn.Linear(2 * h, h),
        ).to(self.device)

    def loss(self, net):
        x = self.torch.randn(self.batch, self.hidden, device=self.device)
        return (net(x) - x).pow(2).mean()

    def run_for(self, seconds: float, sync, net=None) -> int:
        """Optimizer steps for about ``seconds``; returns how many ran."""
        net = net or self.model()
        optimizer = self.torch.optim.SGD(net.parameters(), lr=1e-4)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            optimizer.zero_grad(set_to_none=True)
            self.loss(net).backward()
            optimizer.step()
            n += 1
        sync()
        return n

    def steps_for(self, seconds: float, sync) -> int:
        net = self.model()
        self.run_for(0.2, sync, net)  # warm-up
        t0 = time.perf_counter()
        n = self.run_for(0.5, sync, net)
        return max(2, int(seconds / ((time.perf_counter() - t0) / n)))


# ---------------------------------------------------------------------------- comparison
def gpu_j(record) -> tuple[float, float]:
    """The GPU component of a record and its stated uncertainty."""
    parts = [c for c in record.components if c.get("kind") == "gpu"]
    return sum(c["energy_j"] for c in parts), sum(c.get("uncertainty_j", 0.0) ** 2 for c in parts) ** 0.5


def compare(records, ref_epochs: dict, ref_run: dict, ref_call: dict) -> dict:
    """``ref_run``: over the hooks that start and stop our run; ``ref_call``: over the whole
    ``fit`` / ``train`` call, which also holds framework set-up no callback can see."""
    epochs = []
    for record in records:
        if record.phase == "train" and record.epoch in ref_epochs:
            ours, uncertainty = gpu_j(record)
            ref = ref_epochs[record.epoch]
            epochs.append({"epoch": record.epoch, "duration_s": record.duration_s, "ours_j": ours,
                           "stated_uncertainty_j": uncertainty, "reference_j": ref,
                           "rel": {k: rel(ours, v) for k, v in ref.items()}})
    run = sum(gpu_j(r)[0] for r in records)
    return {
        "epochs": epochs,
        "run": {"ours_j": run, "reference_j": ref_run, "rel": {k: rel(run, v) for k, v in ref_run.items()},
                "fit_call_reference_j": ref_call, "rel_to_fit_call": {k: rel(run, v) for k, v in ref_call.items()}},
        "records": len(records),
    }


def summarize_case(case: dict) -> dict:
    out = {"epochs": len(case["epochs"]),
           "epoch_s_median": statistics.median(e["duration_s"] for e in case["epochs"]) if case["epochs"] else None}
    for ref in ("counter", "instant"):
        errors = [abs(e["rel"][ref]) for e in case["epochs"] if e["rel"][ref] is not None]
        long_errors = [abs(e["rel"][ref]) for e in case["epochs"] if e["duration_s"] >= 1.0 and e["rel"][ref] is not None]
        out[ref] = {"max_abs_epoch_error": max(errors, default=None),
                    "epochs_ge_1s_within_1pct": all(e <= TARGET_EPOCH for e in long_errors) if long_errors else None,
                    "run_error": case["run"]["rel"][ref],
                    "run_within_0_5pct": None if case["run"]["rel"][ref] is None else abs(case["run"]["rel"][ref]) <= TARGET_RUN}
    return out


# ----------------------------------------------------------------------- the adapters
def lightning_module(work):
    """The workload as a LightningModule class (its data are made on the device, no batches)."""
    import lightning.pytorch as L
    import torch

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = work.model()

        def training_step(self, batch, batch_idx):
            return work.loss(self.net)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    return Module


def lightning_case(work, gpu, refs, epochs: int, steps: int, workdir: Path, peers=None) -> dict:
    import lightning.pytorch as L
    import torch

    from greencallbacks.lightning import EnergyCallback

    Module = lightning_module(work)

    state = {"start": {}, "epochs": {}, "run": {}}

    # Lightning calls callbacks in list order at starts and ends alike: with [First, ours, Last]
    # the reference reads first at an epoch's start and last at its end (Last), and the peers'
    # windows (opened by Last, closed by First) nest inside ours.
    class First(L.Callback):
        def setup(self, trainer, pl_module, stage):  # before ours starts its run
            state["run"]["start"] = refs.read()

        def teardown(self, trainer, pl_module, stage):  # before ours stops
            state["run"]["end"] = refs.read()

        def on_train_epoch_start(self, trainer, pl_module):
            state["start"][trainer.current_epoch] = refs.read()

        def on_train_epoch_end(self, trainer, pl_module):
            if peers is not None:
                peers.close(trainer.current_epoch)

    class Last(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if peers is not None:
                peers.open(trainer.current_epoch)

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch
            state["epochs"][epoch] = delta(refs.read(after_ours=True), state["start"][epoch])

    ours = EnergyCallback(country="FR", **gpu.callback_kwargs())
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[First(), ours, Last()], logger=L.loggers.CSVLogger(str(workdir)),
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        accelerator="cuda" if work.device.type == "cuda" else "cpu", devices=1, num_sanity_val_steps=0,
    )
    call0 = refs.read()
    if peers is not None:
        peers.start_run()
    try:
        trainer.fit(Module(), torch.utils.data.DataLoader(range(steps), batch_size=1))
    finally:
        if peers is not None:
            peers.stop_run()
    call = delta(refs.read(), call0)
    out = compare(list(ours.tracker.records), state["epochs"], delta(state["run"]["end"], state["run"]["start"]), call)
    if peers is not None:
        out["peers"] = peers.results(state["epochs"], call)
    return out


def bubble_part(work, gpu, epochs: int, steps: int, rounds: int, workdir: Path) -> dict:
    """Wall clock of the same Lightning fit without a callback, with ours, and with ours not
    synchronising at its boundaries, in turns (``rounds`` of each); per epoch, from the start of
    training to its end after the queued work ran."""
    import lightning.pytorch as L
    import torch

    import greencallbacks.lightning._runs as runs  # where the callback reads device_and_sync
    import greencallbacks.channel as channel
    from greencallbacks.lightning import EnergyCallback

    Module = lightning_module(work)

    class Clock(L.Callback):  # listed last: after ours at the start of training and at its end
        def on_train_start(self, trainer, pl_module):
            gpu.sync()
            self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            gpu.sync()
            self.seconds = time.perf_counter() - self.t0

    def fit(variant: str, n: int) -> float:
        callbacks = [] if variant == "none" else [EnergyCallback(country="FR", **gpu.callback_kwargs())]
        clock = Clock()
        original, power_interval = runs.device_and_sync, channel.POWER_SAMPLE_INTERVAL_S
        if variant == "ours_unsynchronised":
            runs.device_and_sync = lambda device: (original(device)[0], None)
        if variant == "ours_power_10hz":  # the reader thread's instantaneous-power samples 5x rarer
            channel.POWER_SAMPLE_INTERVAL_S = 0.1
        try:
            L.Trainer(max_epochs=epochs, callbacks=[*callbacks, clock], logger=L.loggers.CSVLogger(str(workdir / f"{variant}{n}")),
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      accelerator="cuda" if work.device.type == "cuda" else "cpu", devices=1,
                      num_sanity_val_steps=0).fit(Module(), torch.utils.data.DataLoader(range(steps), batch_size=1))
        finally:
            runs.device_and_sync, channel.POWER_SAMPLE_INTERVAL_S = original, power_interval
        return clock.seconds / epochs

    variants = ("none", "ours", "ours_unsynchronised", "ours_power_10hz")
    fit("none", -1)  # warm-up: CUDA context, kernels, Lightning's first imports
    seconds: dict = {v: [] for v in variants}
    for n in range(rounds):
        for variant in (variants if n % 2 == 0 else variants[::-1]):
            seconds[variant].append(fit(variant, n))
    none = statistics.median(seconds["none"])
    return {"epochs": epochs, "steps": steps, "rounds": rounds, "epoch_s": seconds,
            "median_epoch_s": {v: statistics.median(s) for v, s in seconds.items()},
            "added_ms_per_epoch": {v: (statistics.median(s) - none) * 1e3 for v, s in seconds.items() if v != "none"},
            "added_share": {v: statistics.median(s) / none - 1 for v, s in seconds.items() if v != "none"},
            "spread_none_ms": (max(seconds["none"]) - min(seconds["none"])) * 1e3}


def hf_case(work, gpu, refs, epochs: int, steps: int, workdir: Path) -> dict:
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from greencallbacks.hf import EnergyCallback

    transformers.logging.set_verbosity_error()

    class Steps(torch.utils.data.Dataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return {"idx": torch.tensor(i)}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = work.model()

        def forward(self, idx, labels=None):
            return {"loss": work.loss(self.net)}

    state = {"start": None, "epochs": {}, "run": {}}

    class Reference(TrainerCallback):  # listed before ours: reads just outside our boundaries
        def on_train_begin(self, args, s, control, **kwargs):
            state["run"]["start"] = refs.read()

        def on_train_end(self, args, s, control, **kwargs):
            state["run"]["end"] = refs.read()

        def on_epoch_begin(self, args, s, control, **kwargs):
            state["start"] = refs.read()

        def on_epoch_end(self, args, s, control, **kwargs):  # our records number epochs 0, 1, ...
            state["epochs"][len(state["epochs"])] = delta(refs.read(), state["start"])

    ours = EnergyCallback(country="FR", **gpu.callback_kwargs())
    args = TrainingArguments(
        output_dir=str(workdir), num_train_epochs=epochs, per_device_train_batch_size=1,
        use_cpu=work.device.type != "cuda", dataloader_num_workers=0, disable_tqdm=True, report_to="none",
        logging_strategy="steps", logging_steps=50, eval_strategy="no", save_strategy="no", seed=0, learning_rate=1e-4,
    )
    trainer = Trainer(model=Model(), args=args, train_dataset=Steps(), callbacks=[Reference(), ours])
    call0 = refs.read()
    trainer.train()
    call = delta(refs.read(), call0)
    return compare(list(ours.tracker.records), state["epochs"], delta(state["run"]["end"], state["run"]["start"]), call)


def keras_case(work, gpu, refs, epochs: int, steps: int, workdir: Path) -> dict:
    """Keras 3 on the torch backend: the same MLP as Keras layers, data from host memory."""
    import keras
    import numpy as np

    from greencallbacks.keras import EnergyCallback

    state = {"start": None, "epochs": {}, "run": {}}

    class Reference(keras.callbacks.Callback):  # after ours, where ours would move itself anyway (logs)
        def on_train_begin(self, logs=None):
            state["run"]["start"] = refs.read()

        def on_train_end(self, logs=None):
            state["run"]["end"] = refs.read()

        def on_epoch_begin(self, epoch, logs=None):
            state["start"] = refs.read()

        def on_epoch_end(self, epoch, logs=None):
            state["epochs"][epoch] = delta(refs.read(), state["start"])

    h = work.hidden
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((h,)), keras.layers.Dense(2 * h, activation="relu"),
                              keras.layers.Dense(2 * h, activation="relu"), keras.layers.Dense(h)])
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    x = np.random.default_rng(0).standard_normal((work.batch, h), dtype=np.float32)

    class Batches(keras.utils.PyDataset):  # one batch served ``steps`` times: no host copy of every step's data
        def __len__(self):
            return steps

        def __getitem__(self, index):
            return x, x

    ours = EnergyCallback(country="FR", output_dir=str(workdir), **gpu.callback_kwargs())
    call0 = refs.read()
    model.fit(Batches(), epochs=epochs, verbose=0, callbacks=[ours, Reference()])
    call = delta(refs.read(), call0)
    return compare(list(ours.tracker.records), state["epochs"], delta(state["run"]["end"], state["run"]["start"]), call)


# ------------------------------------------------------------------------ sensor and core
def timed_us(fn, n: int) -> dict:
    costs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        costs.append((time.perf_counter() - t0) * 1e6)
    return {"median_us": statistics.median(costs), "p99_us": percentile(costs, 0.99)}


def sensor_part(work, gpu, refs, load_s: float, reads: int) -> dict:
    from greencallbacks.meter import Meter

    out: dict = {"cost": {
        "nvmlDeviceGetTotalEnergyConsumption": timed_us(gpu.counter_j, reads),
        "power_instant_field": timed_us(gpu.instant_w, reads),
        "nvmlDeviceGetPowerUsage": timed_us(gpu.averaged_w, reads),
        "torch.cuda.synchronize_idle": timed_us(gpu.sync, reads),
    }}
    # The training thread's time per boundary: a snapshot (its synchronisation then finds the
    # queue empty) after every ~20 ms of training.
    net = work.model()
    for label, off_thread in (("snapshot_counter_read_at_boundary", False), ("snapshot_off_thread", True)):
        meter = Meter([gpu.sensor()], fallback=None, sync=gpu.sync, off_thread=off_thread)
        meter.snapshot()
        costs = []
        for _ in range(reads):
            work.run_for(0.02, lambda: None, net)
            gpu.sync()  # the queued steps' own GPU time is not the boundary's cost
            t0 = time.perf_counter()
            meter.snapshot()
            costs.append((time.perf_counter() - t0) * 1e6)
        meter.close()
        out["cost"][label] = {"median_us": statistics.median(costs), "p99_us": percentile(costs, 0.99)}
    # Over a load: the counter against the power integrals (2 ms instantaneous and 1-s averaged).
    averaged = {"j": 0.0, "t": time.monotonic(), "w": gpu.averaged_w()}
    stop = threading.Event()

    def integrate_averaged():
        while not stop.wait(0.002):
            now, power = time.monotonic(), gpu.averaged_w()
            averaged["j"] += 0.5 * (power + averaged["w"]) * (now - averaged["t"])
            averaged["t"], averaged["w"] = now, power

    thread = threading.Thread(target=integrate_averaged, daemon=True)
    thread.start()
    start, t0 = refs.read(), time.monotonic()
    averaged0 = averaged["j"]
    work.run_for(load_s, gpu.sync, net)
    time.sleep(0.25)  # let the counter's 100 ms update catch up
    window = delta(refs.read(), start)
    stop.set()
    thread.join()
    seconds = time.monotonic() - t0
    out["load"] = {"seconds": seconds, "counter_j": window["counter"], "mean_power_w": window["counter"] / seconds,
                   "instant_vs_counter": rel(window["instant"], window["counter"]),
                   "averaged_vs_counter": rel(averaged["j"] - averaged0, window["counter"])}
    return out


def core_part(work, gpu, refs, windows: list[float]) -> dict:
    from greencallbacks.meter import Meter

    meter = Meter([gpu.sensor()], fallback=None, sync=gpu.sync)
    net = work.model()
    work.run_for(1.5, gpu.sync, net)  # the reader finds the counter's update phase meanwhile
    out = []
    for seconds in windows:
        ref0 = refs.read()
        window = meter.start()
        work.run_for(seconds, lambda: None, net)
        measured = window.stop()
        ref = delta(refs.read(), ref0)
        out.append({"seconds": measured.duration_s, "ours_j": measured.energy_j, "reference_j": ref,
                    "rel": {k: rel(measured.energy_j, v) for k, v in ref.items()},
                    "stated_uncertainty_j": measured.uncertainty_j})
    meter.close()
    return {"windows": out}


# ---------------------------------------------------------------------------------- peers
class NetworkGuard:
    """Refuse and record Internet connections and DNS look-ups made by anything in this process."""

    NAMES = ("connect", "connect_ex", "getaddrinfo", "create_connection")

    def __init__(self) -> None:
        self.attempts: list[dict] = []
        self._saved: dict = {}

    def _refuse(self, what: str, target) -> None:
        stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack(limit=12)[:-2]]
        self.attempts.append({"what": what, "target": repr(target), "stack": stack[-6:]})
        raise OSError(f"network refused by the benchmark: {what} {target!r}")

    def install(self) -> None:
        guard = self
        saved = self._saved = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex,
                               "getaddrinfo": socket.getaddrinfo, "create_connection": socket.create_connection}

        def local(address) -> bool:
            host = address[0] if isinstance(address, tuple) else address
            return not isinstance(host, str) or host in ("localhost", "127.0.0.1", "::1") or host.startswith("/")

        def connect(sock, address):
            if sock.family == socket.AF_UNIX or local(address):
                return saved["connect"](sock, address)
            guard._refuse("connect", address)

        def connect_ex(sock, address):
            if sock.family == socket.AF_UNIX or local(address):
                return saved["connect_ex"](sock, address)
            guard._refuse("connect_ex", address)

        def getaddrinfo(host, *args, **kwargs):
            if host is None or local((host,)):
                return saved["getaddrinfo"](host, *args, **kwargs)
            guard._refuse("getaddrinfo", host)

        def create_connection(address, *args, **kwargs):
            if local(address):
                return saved["create_connection"](address, *args, **kwargs)
            guard._refuse("create_connection", address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection

    def uninstall(self) -> None:
        if self._saved:
            socket.socket.connect, socket.socket.connect_ex = self._saved["connect"], self._saved["connect_ex"]
            socket.getaddrinfo, socket.create_connection = self._saved["getaddrinfo"], self._saved["create_connection"]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_codecarbon() -> dict:
    info: dict = {"available": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import codecarbon
            from codecarbon import OfflineEmissionsTracker
        info.update(available=True, version=getattr(codecarbon, "__version__", None), cls=OfflineEmissionsTracker,
                    has_tasks=hasattr(OfflineEmissionsTracker, "start_task"))
    except Exception as exc:  # noqa: BLE001 - optional peer
        info["error"] = _error(exc)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    return info


def load_zeus() -> dict:
    info: dict = {"available": False, "sklearn_shim": False}
    shim = None
    try:
        import sklearn.metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: stand in for Zeus's import only
        def auc(x, y):
            xs, ys = [float(v) for v in x], [float(v) for v in y]
            return sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0 for i in range(len(xs) - 1))

        shim = types.ModuleType("sklearn")
        shim.metrics = types.ModuleType("sklearn.metrics")
        shim.metrics.auc = auc
        sys.modules["sklearn"], sys.modules["sklearn.metrics"] = shim, shim.metrics
    try:
        import zeus
        from zeus.monitor import ZeusMonitor

        info.update(available=True, version=getattr(zeus, "__version__", None), cls=ZeusMonitor, sklearn_shim=shim is not None)
    except Exception as exc:  # noqa: BLE001 - optional peer
        info["error"] = _error(exc)
    finally:
        if shim is not None:  # Zeus keeps its own reference to auc; hide the stand-in from the rest
            for name in ("sklearn.metrics", "sklearn"):
                sys.modules.pop(name, None)
    logging.getLogger("zeus").setLevel(logging.WARNING)
    return info


class Peers:
    """CodeCarbon and Zeus around one Lightning fit: a window/task per epoch and one around the fit."""

    def __init__(self, codecarbon: dict, zeus: dict, gpu: Gpu) -> None:
        self.errors: list[str] = []
        self.epochs: dict[int, dict] = {}
        self.fit: dict = {}
        self.seconds: dict[str, list[float]] = {"zeus": [], "codecarbon_task": []}
        self.zeus = self.cc = None
        self.zeus_index = None if gpu.dry_run else gpu.index
        if zeus.get("available"):
            try:
                self.zeus = zeus["cls"](gpu_indices=[] if gpu.dry_run else [gpu.index], cpu_indices=[])
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"zeus: {_error(exc)}")
        if codecarbon.get("available"):
            kwargs = dict(country_iso_code="FRA", save_to_file=False, log_level="error", measure_power_secs=15,
                          allow_multiple_runs=True, tracking_mode="process")
            if not gpu.dry_run and int(gpu.nvml.nvmlDeviceGetCount()) > 1:
                kwargs["gpu_ids"] = [int(gpu.nvml.nvmlDeviceGetIndex(gpu.handle))]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.cc = codecarbon["cls"](**kwargs)
                self.cc_tasks = bool(codecarbon.get("has_tasks"))
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"codecarbon: {_error(exc)}")

    def _timed(self, key: str, what: str, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
            self.errors.append(f"{what}: {_error(exc)}")
        finally:
            self.seconds[key].append(time.perf_counter() - t0)

    def open(self, epoch: int) -> None:
        if self.zeus is not None:
            self._timed("zeus", "zeus begin_window", lambda: self.zeus.begin_window(f"epoch{epoch}"))
        if self.cc is not None and self.cc_tasks:
            self._timed("codecarbon_task", "codecarbon start_task", lambda: self.cc.start_task(f"epoch{epoch}"))

    def close(self, epoch: int) -> None:
        row = self.epochs.setdefault(epoch, {})
        if self.cc is not None and self.cc_tasks:  # first, as a plain user callback: no synchronize
            data = self._timed("codecarbon_task", "codecarbon stop_task", lambda: self.cc.stop_task(f"epoch{epoch}"))
            row["codecarbon_task_j"] = data.gpu_energy * KWH_J if data is not None else None
        if self.zeus is not None:
            m = self._timed("zeus", "zeus end_window", lambda: self.zeus.end_window(f"epoch{epoch}"))
            row["zeus_j"] = m.gpu_energy.get(self.zeus_index) if m is not None and self.zeus_index is not None else None

    def start_run(self) -> None:
        if self.zeus is not None:
            self._timed("zeus", "zeus begin_window fit", lambda: self.zeus.begin_window("fit"))
        if self.cc is not None:
            self.cc.start()  # CodeCarbon swallows its own exceptions here

    def stop_run(self) -> None:
        if self.cc is not None:
            self.cc.stop()
            data = getattr(self.cc, "final_emissions_data", None)
            self.fit["codecarbon_j"] = data.gpu_energy * KWH_J if data is not None else None
        if self.zeus is not None:
            m = self._timed("zeus", "zeus end_window fit", lambda: self.zeus.end_window("fit"))
            self.fit["zeus_j"] = m.gpu_energy.get(self.zeus_index) if m is not None and self.zeus_index is not None else None

    def results(self, ref_epochs: dict, ref_call: dict) -> dict:
        epochs = {e: {k: {"j": v, "rel": {r: rel(v, ref_epochs[e][r]) for r in ref_epochs[e]}} for k, v in row.items()}
                  for e, row in self.epochs.items() if e in ref_epochs}
        fit = {k: {"j": v, "rel": {r: rel(v, ref_call[r]) for r in ref_call}} for k, v in self.fit.items()}
        return {"epochs": epochs, "fit": fit, "errors": self.errors,
                "boundary_ms_mean": {k: 1e3 * sum(v) / len(v) if v else None for k, v in self.seconds.items()}}


# ------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="sensor,core,lightning,hf,keras", help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dry-run", action="store_true", help="CPU, simulated GPU, tiny sizes")
    parser.add_argument("--short-s", type=float, default=0.8, help="target length of a short epoch")
    parser.add_argument("--long-s", type=float, default=6.0, help="target length of a long epoch")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"gpu: unknown part(s) {unknown}; choose from {','.join(PARTS)}", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu: no CUDA device here; use --dry-run to check the script on a CPU.", file=sys.stderr)
        return 2
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*has a `batch_size` of 1.*")
    guard = NetworkGuard() if "peers" in parts else None
    if guard is not None:
        guard.install()
    started = time.perf_counter()
    gpu = Gpu(torch, args.dry_run)
    refs = References(gpu, 0.01 if args.dry_run else 0.002)  # (the simulated power is constant)
    if args.dry_run:
        torch.set_num_threads(1)
        work = Workload(torch, gpu.device, hidden=32, batch=16)
        short_s, long_s, short_epochs, long_epochs, windows, load_s, reads = 0.15, 0.3, 2, 2, [0.2, 0.4], 0.3, 20
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        work = Workload(torch, gpu.device, hidden=4096, batch=4096)
        short_s, long_s, short_epochs, long_epochs, windows, load_s, reads = (
            args.short_s, args.long_s, 5, 3, [1.0, 5.0], 5.0, 200)
    steps = {"short": work.steps_for(short_s, gpu.sync), "long": work.steps_for(long_s, gpu.sync)}
    lengths = (("short", short_epochs), ("long", long_epochs))
    result: dict = {
        "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
        "torch": torch.__version__, "gpu": gpu.name, "driver": str(gpu.driver),
        "workload": {"hidden": work.hidden, "batch": work.batch, "steps": steps}, "parts": parts,
        "targets": {"epoch_ge_1s": TARGET_EPOCH, "run": TARGET_RUN},
    }
    cases = {"lightning": lightning_case, "hf": hf_case, "keras": keras_case}

    def save() -> None:  # after every part, so that a run cut short keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")

    try:
        with tempfile.TemporaryDirectory(prefix="gcb-gpu-") as tmp:
            tmp_path = Path(tmp)
            if "sensor" in parts:
                result["sensor"] = sensor_part(work, gpu, refs, load_s, reads)
            if "core" in parts:
                result["core"] = core_part(work, gpu, refs, windows)
            save()
            for name, case in cases.items():
                if name in parts:
                    result[name] = {length: timed_case(name, case, work, gpu, refs, epochs, steps[length],
                                                       tmp_path / f"{name}-{length}")
                                    for length, epochs in lengths}
                    print(f"gpu: {name} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
                    save()
            if "bubble" in parts:
                bubble_s = 0.1 if args.dry_run else 0.3
                result["bubble"] = bubble_part(work, gpu, 4 if args.dry_run else 12, work.steps_for(bubble_s, gpu.sync),
                                               2 if args.dry_run else 4, tmp_path / "bubble")
                print(f"gpu: bubble done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
                save()
            if "peers" in parts:
                peers_info = {"codecarbon": load_codecarbon(), "zeus": load_zeus()}
                result["peers"] = {"versions": {k: {kk: vv for kk, vv in v.items() if kk != "cls"} for k, v in peers_info.items()}}
                for length, epochs in lengths:
                    peers = Peers(peers_info["codecarbon"], peers_info["zeus"], gpu)
                    result["peers"][length] = lightning_case(work, gpu, refs, epochs, steps[length],
                                                             tmp_path / f"peers-{length}", peers=peers)
                    save()
                result["network_attempts"] = guard.attempts
    finally:
        refs.close()
        if guard is not None:
            guard.uninstall()
    result["wall_s"] = time.perf_counter() - started
    result["summary"] = summarize(result)
    save()
    print(json.dumps(result["summary"], indent=2, default=str))
    return 0


def timed_case(name: str, case, *args) -> dict:
    """One adapter case, with the training thread's time inside our callback (hooks and core
    calls, ``overhead.SelfTime``) as a share of the whole ``fit``/``train`` call on this GPU host."""
    import torch

    synchronize, waited = torch.cuda.synchronize, [0.0]

    def timed_synchronize(*a, **k):
        # Inside our hooks, synchronising waits for the work already queued (the epoch's last
        # steps): GPU time the call takes anyway, not a cost of ours. Timed to be told apart.
        if not getattr(selftime._local, "depth", 0):
            return synchronize(*a, **k)
        t0 = time.perf_counter()
        try:
            return synchronize(*a, **k)
        finally:
            waited[0] += time.perf_counter() - t0

    torch.cuda.synchronize = timed_synchronize
    try:
        with SelfTime(name) as selftime:
            t0 = time.perf_counter()
            out = case(*args)
            wall = time.perf_counter() - t0
    finally:
        torch.cuda.synchronize = synchronize
    hooks = selftime.hook_call_s
    own = selftime.seconds - waited[0]
    out["training_thread"] = {
        "callback_ms": selftime.seconds * 1e3, "call_s": wall, "share": selftime.seconds / wall,
        "meter_thread_cpu_ms": selftime.thread_cpu_s * 1e3,
        "waiting_for_queued_gpu_work_ms": waited[0] * 1e3, "own_ms": own * 1e3, "own_share": own / wall,
        "hook_calls": len(hooks), "us_per_hook_call": statistics.fmean(hooks) * 1e6 if hooks else None,
        "us_per_hook_call_median": statistics.median(hooks) * 1e6 if hooks else None,
        "ms_by_call": {k: v * 1e3 for k, v in selftime.seconds_by.most_common(6)}}
    return out


def summarize(result: dict) -> dict:
    summary: dict = {}
    for name in ("lightning", "hf", "keras"):
        for length, case in result.get(name, {}).items():
            summary[f"{name}.{length}"] = {**summarize_case(case), "callback_share_of_call": case["training_thread"]["share"],
                                           "callback_share_without_gpu_wait": case["training_thread"]["own_share"]}
    if "bubble" in result:
        summary["bubble"] = {k: result["bubble"][k] for k in ("added_ms_per_epoch", "added_share", "spread_none_ms")}
    if "core" in result:
        summary["core"] = [{"seconds": w["seconds"], "rel": w["rel"]} for w in result["core"]["windows"]]
    if "sensor" in result:
        cost = result["sensor"]["cost"]
        summary["sensor"] = {"snapshot_us": {k: cost[k] for k in cost if k.startswith("snapshot")},
                             "counter_read_us": cost["nvmlDeviceGetTotalEnergyConsumption"],
                             **{k: v for k, v in result["sensor"]["load"].items() if k.endswith("vs_counter")}}
    for length in ("short", "long"):
        case = result.get("peers", {}).get(length)
        if case:
            tools = {}
            for row in case["peers"]["epochs"].values():
                for tool, value in row.items():
                    if value["rel"]["instant"] is not None:
                        tools[tool] = max(tools.get(tool, 0.0), abs(value["rel"]["instant"]))
            summary[f"peers.{length}"] = {"greencallbacks": summarize_case(case)["instant"]["max_abs_epoch_error"],
                                          **{f"{k}.max_abs_epoch_error": v for k, v in tools.items()},
                                          "fit": {k: v["rel"] for k, v in case["peers"]["fit"].items()},
                                          "errors": len(case["peers"]["errors"])}
    return summary


if __name__ == "__main__":
    sys.exit(main())
