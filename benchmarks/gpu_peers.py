"""GPU energy of one Lightning training, measured by greencallbacks, CodeCarbon and Zeus, against NVML.

The same training (a matmul-heavy MLP in TF32 whose data is generated on the device, no
validation loop) runs with short (~0.8 s) and long (~6 s) epochs. For each length, two fits:

* ``peers``: a reference reads ``nvmlDeviceGetTotalEnergyConsumption`` after
  ``torch.cuda.synchronize()`` at ``on_train_epoch_start`` / ``on_train_epoch_end``. The windows
  nest: reference ⊃ greencallbacks' Lightning ``EnergyCallback`` ⊃ a Zeus window
  (``ZeusMonitor.begin_window`` / ``end_window``) ⊃ a CodeCarbon task (``start_task`` /
  ``stop_task``, called as a user's callback would: no synchronize before ``stop_task``), one
  per epoch. Around ``trainer.fit``: a Zeus window ``fit`` and the CodeCarbon tracker's
  ``start()`` / ``stop()`` (``tracking_mode="process"``).
* ``codecarbon``: the usual CodeCarbon use, an ``OfflineEmissionsTracker`` started before ``fit``
  and stopped after it (no tasks), with the reference and greencallbacks as above.

Each tool's GPU energy is compared with the reference over the same window: per epoch (the
``train`` record's GPU component for greencallbacks, the window for Zeus, the task for
CodeCarbon) and per run (the sum of all greencallbacks records; the ``fit`` window of Zeus;
CodeCarbon's ``final_emissions_data.gpu_energy``, in kWh, converted to J). The output is a
Markdown table on stdout and, with ``--json OUT``, every figure in JSON.

CodeCarbon and Zeus are optional: if one does not import, the reason is recorded and the rest
runs. CodeCarbon runs offline (``country_iso_code="FRA"``, no output handler); besides, every
Internet-socket connection and DNS look-up in this process is refused and recorded while the
script runs (``network_attempts`` in the JSON), so no tool can reach the network unnoticed.
Zeus 0.16 imports ``sklearn.metrics.auc`` at module level only for its power-sampling monitor
(GPUs without an energy counter); when scikit-learn is absent, a trapezoid ``auc`` stands in
during the import (recorded as ``sklearn_shim``).

``--dry-run`` runs on the CPU with tiny sizes and a simulated 250 W counter read by the reference
and by greencallbacks; the peers then measure the real (GPU-less) machine, so their differences
only check the plumbing. It exits 0.

Usage: python benchmarks/gpu_peers.py [--json OUT] [--dry-run] [--short-s 0.8] [--long-s 6]
About 2 minutes on an H100. Needs codecarbon and zeus besides torch, lightning and pynvml; on a
machine without network, carry their wheels (Python 3.12, manylinux) and install them with
``pip install --no-index --no-deps --target /tmp/site WHEELS`` first.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

KWH_J = 3.6e6

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_accuracy as accuracy  # noqa: E402 - the shared workload, reference and simulated counter


# ----------------------------------------------------------------------------- network guard
class NetworkGuard:
    """Refuse and record Internet connections and DNS look-ups made by anything in this process."""

    def __init__(self) -> None:
        self.attempts: list[dict] = []
        self._saved: dict = {}

    def _record(self, what: str, target) -> None:
        stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack(limit=12)[:-2]]
        self.attempts.append({"what": what, "target": repr(target), "t": time.time(), "stack": stack[-6:]})

    def install(self) -> None:
        guard = self
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        original_getaddrinfo = socket.getaddrinfo
        original_create_connection = socket.create_connection
        self._saved = {"connect": original_connect, "connect_ex": original_connect_ex,
                       "getaddrinfo": original_getaddrinfo, "create_connection": original_create_connection}

        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                guard._record("connect", address)
                raise OSError("gpu_peers: network access refused (offline benchmark)")
            return original_connect(sock, address)

        def connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                guard._record("connect_ex", address)
                return 111  # ECONNREFUSED
            return original_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            guard._record("getaddrinfo", host)
            raise socket.gaierror(socket.EAI_NONAME, "gpu_peers: DNS refused (offline benchmark)")

        def create_connection(address, *args, **kwargs):
            guard._record("create_connection", address)
            raise OSError("gpu_peers: network access refused (offline benchmark)")

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.getaddrinfo = getaddrinfo
        socket.create_connection = create_connection

    def uninstall(self) -> None:
        if self._saved:
            socket.socket.connect = self._saved["connect"]
            socket.socket.connect_ex = self._saved["connect_ex"]
            socket.getaddrinfo = self._saved["getaddrinfo"]
            socket.create_connection = self._saved["create_connection"]


# --------------------------------------------------------------------------- energy sources
class NvmlReference(accuracy.NvmlReference):
    """The hardware counter (see gpu_accuracy.py), plus its update period and NVML index."""

    def __init__(self, torch, device_index: int) -> None:
        super().__init__(torch, device_index)
        try:
            self.nvml_index = int(self.pynvml.nvmlDeviceGetIndex(self.handle))
        except Exception:  # noqa: BLE001
            self.nvml_index = device_index
        self.nvml_count = int(self.pynvml.nvmlDeviceGetCount())

    def raw_mj(self) -> int:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def update_period_ms(self, seconds: float = 0.6) -> float | None:
        """Median time between changes of the counter, polled for ``seconds``."""
        changes, last, t_end = [], self.raw_mj(), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            value = self.raw_mj()
            if value != last:
                changes.append(time.perf_counter())
                last = value
        gaps = sorted(b - a for a, b in zip(changes, changes[1:]))
        return 1000.0 * gaps[len(gaps) // 2] if gaps else None

    def describe(self) -> dict:
        return {**super().describe(), "nvml_index": self.nvml_index, "nvml_device_count": self.nvml_count}


class SimulatedCounter(accuracy.SimulatedCounter):
    """--dry-run: a counter at a fixed power, shared by the reference and greencallbacks."""

    nvml_index = None

    def update_period_ms(self, seconds: float = 0.0) -> None:
        return None


simulated_sensor, Workload, gpu_component_j = accuracy.simulated_sensor, accuracy.Workload, accuracy.gpu_component_j


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_codecarbon() -> dict:
    info: dict = {"available": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import codecarbon
            from codecarbon import OfflineEmissionsTracker
        info.update(available=True, version=getattr(codecarbon, "__version__", None), cls=OfflineEmissionsTracker)
        info["has_tasks"] = hasattr(OfflineEmissionsTracker, "start_task") and hasattr(OfflineEmissionsTracker, "stop_task")
    except Exception as exc:  # noqa: BLE001 - optional peer
        info["error"] = _error(exc)
    for name in ("codecarbon",):
        logging.getLogger(name).setLevel(logging.ERROR)
    return info


def _auc_shim_module() -> types.ModuleType:
    """``sklearn.metrics.auc`` as Zeus uses it: trapezoidal area under (x, y), x monotonic."""

    def auc(x, y):
        xs, ys = [float(v) for v in x], [float(v) for v in y]
        if len(xs) < 2:
            raise ValueError("At least 2 points are needed to compute area under curve")
        area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0 for i in range(len(xs) - 1))
        return abs(area) if all(b <= a for a, b in zip(xs, xs[1:])) else area

    sklearn = types.ModuleType("sklearn")
    metrics = types.ModuleType("sklearn.metrics")
    metrics.auc = auc
    sklearn.metrics = metrics
    sklearn.__gpu_peers_shim__ = True
    return sklearn


def load_zeus() -> dict:
    info: dict = {"available": False, "sklearn_shim": False}
    shim = None
    try:
        import sklearn.metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: stand in for the import only
        shim = _auc_shim_module()
        sys.modules["sklearn"], sys.modules["sklearn.metrics"] = shim, shim.metrics
    try:
        import zeus
        from zeus.monitor import ZeusMonitor

        info.update(available=True, version=getattr(zeus, "__version__", None), cls=ZeusMonitor, sklearn_shim=shim is not None)
    except Exception as exc:  # noqa: BLE001 - optional peer
        info["error"] = _error(exc)
    finally:
        if shim is not None:  # zeus.monitor.power keeps its own reference to auc; hide the stand-in from others
            for name, module in (("sklearn.metrics", shim.metrics), ("sklearn", shim)):
                if sys.modules.get(name) is module:
                    del sys.modules[name]
    logging.getLogger("zeus").setLevel(logging.WARNING)
    return info


def make_codecarbon(info: dict, nvml_index, tracking_mode: str | None) -> tuple[object | None, dict]:
    """A tracker with its hardware detected before the measured window opens."""
    meta: dict = {"tracking_mode": tracking_mode or "machine (default)", "measure_power_secs": 15}
    kwargs = dict(country_iso_code="FRA", save_to_file=False, log_level="error", measure_power_secs=15,
                  allow_multiple_runs=True)
    if tracking_mode:
        kwargs["tracking_mode"] = tracking_mode
    if nvml_index is not None:
        kwargs["gpu_ids"] = [int(nvml_index)]  # the NVML index of the training GPU
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # save_to_* is deprecated in 3.x; harmless
            t0 = time.perf_counter()
            tracker = info["cls"](**kwargs)
            meta["construct_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if hasattr(tracker, "get_detected_hardware"):
                meta["hardware"] = tracker.get_detected_hardware()
            meta["hardware_init_s"] = time.perf_counter() - t0
        meta["gpu_source"] = codecarbon_gpu_source(tracker)
        return tracker, meta
    except Exception as exc:  # noqa: BLE001
        meta["error"] = _error(exc)
        return None, meta


def codecarbon_gpu_source(tracker) -> list[dict]:
    """How CodeCarbon measures each GPU (counter or power averaging); private attributes, read defensively."""
    out = []
    for hw in getattr(tracker, "_hardware", []) or []:
        if type(hw).__name__ != "GPU":
            continue
        for dev in getattr(getattr(hw, "devices", None), "devices", []) or []:
            out.append({
                "gpu_index": getattr(dev, "gpu_index", None),
                "has_counter": getattr(dev, "_has_counter", None),
                "power_fallback": getattr(dev, "_use_power_fallback", None),
            })
    return out


def make_zeus(info: dict, gpu_indices: list[int]) -> tuple[object | None, dict]:
    meta: dict = {"gpu_indices": gpu_indices}
    try:
        t0 = time.perf_counter()
        try:
            monitor = info["cls"](gpu_indices=gpu_indices, cpu_indices=[])  # GPU only: no RAPL reads in the windows
            meta["cpu_indices"] = []
        except TypeError:
            monitor = info["cls"](gpu_indices=gpu_indices)
        meta["init_s"] = time.perf_counter() - t0
        power_monitor = getattr(monitor, "power_monitor", None)
        meta["power_monitor"] = power_monitor is not None  # True: power sampling (pre-Volta), not the counter
        return monitor, meta
    except Exception as exc:  # noqa: BLE001
        meta["error"] = _error(exc)
        return None, meta


# ------------------------------------------------------------------------------ the fits
def rel(value, ref):
    if value is None or ref is None or ref <= 0:
        return None
    return (value - ref) / ref


def run_fit(fit: str, work: Workload, reference, callback_kwargs: dict, epochs: int, steps: int, workdir: Path,
            zeus_monitor=None, zeus_index=None, cc_tracker=None, cc_tasks: bool = False) -> dict:
    """One Lightning fit; ``fit`` is "peers" (Zeus and CodeCarbon tasks per epoch) or "codecarbon" (tracker only)."""
    import lightning.pytorch as L
    import torch

    from greencallbacks.lightning import EnergyCallback

    errors: list[str] = []
    boundary_s: dict[str, list[float]] = {"zeus": [], "codecarbon_task": []}

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = work.model()

        def training_step(self, batch, batch_idx):
            return work.loss(self.net)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    class State:
        """Per-epoch reference reads and peer results, shared by the two callbacks below."""

        def __init__(self):
            self.start, self.ref_epochs, self.run = {}, {}, [0.0, 0.0]
            self.duration, self.zeus, self.cc, self.t0 = {}, {}, {}, {}

    state = State()

    def open_peers(epoch: int) -> None:
        if zeus_monitor is not None:
            t = time.perf_counter()
            try:
                zeus_monitor.begin_window(f"{workdir.name}-epoch{epoch}")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"zeus begin_window epoch {epoch}: {_error(exc)}")
            boundary_s["zeus"].append(time.perf_counter() - t)
        if cc_tracker is not None and cc_tasks:
            t = time.perf_counter()
            try:
                cc_tracker.start_task(f"epoch{epoch}")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"codecarbon start_task epoch {epoch}: {_error(exc)}")
            boundary_s["codecarbon_task"].append(time.perf_counter() - t)

    def close_peers(epoch: int) -> None:
        if cc_tracker is not None and cc_tasks:  # first, as a plain user callback: no synchronize before it
            t = time.perf_counter()
            try:
                data = cc_tracker.stop_task(f"epoch{epoch}")
                state.cc[epoch] = None if data is None else {
                    "gpu_energy_kwh": data.gpu_energy, "duration_s": data.duration,
                    "energy_consumed_kwh": data.energy_consumed}
            except Exception as exc:  # noqa: BLE001
                errors.append(f"codecarbon stop_task epoch {epoch}: {_error(exc)}")
            boundary_s["codecarbon_task"].append(time.perf_counter() - t)
        if zeus_monitor is not None:
            t = time.perf_counter()
            try:
                m = zeus_monitor.end_window(f"{workdir.name}-epoch{epoch}")
                state.zeus[epoch] = {"gpu_energy_j": m.gpu_energy.get(zeus_index) if zeus_index is not None else None,
                                     "time_s": m.time}
            except Exception as exc:  # noqa: BLE001
                errors.append(f"zeus end_window epoch {epoch}: {_error(exc)}")
            boundary_s["zeus"].append(time.perf_counter() - t)

    # Lightning calls callbacks in list order for start and end hooks alike. With [First, ours, Last]:
    # epoch start: reference read, greencallbacks, peers open; epoch end: peers close, greencallbacks,
    # reference read. The peers' windows nest inside ours, ours inside the reference's.
    class First(L.Callback):
        def setup(self, trainer, pl_module, stage):  # before greencallbacks starts its run
            state.run[0] = reference.read_j()

        def teardown(self, trainer, pl_module, stage):  # before greencallbacks stops its run
            state.run[1] = reference.read_j()

        def on_train_epoch_start(self, trainer, pl_module):
            epoch = trainer.current_epoch
            state.start[epoch] = reference.read_j()
            state.t0[epoch] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            close_peers(trainer.current_epoch)

    class Last(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            open_peers(trainer.current_epoch)

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch
            state.ref_epochs[epoch] = reference.read_j() - state.start[epoch]
            state.duration[epoch] = time.perf_counter() - state.t0[epoch]

    ours = EnergyCallback(country="FR", **callback_kwargs)
    loader = torch.utils.data.DataLoader(range(steps), batch_size=1)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[First(), ours, Last()], logger=L.loggers.CSVLogger(str(workdir)),
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        accelerator=work.device.type if work.device.type == "cuda" else "cpu", devices=1, num_sanity_val_steps=0,
    )

    reads: dict[str, float] = {}
    zeus_fit = None
    reads["r0"] = reference.read_j()
    if zeus_monitor is not None:
        try:
            zeus_monitor.begin_window(f"{workdir.name}-fit")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"zeus begin_window fit: {_error(exc)}")
    cc_start_s = cc_stop_s = None
    if cc_tracker is not None:
        t = time.perf_counter()
        cc_tracker.start()  # CodeCarbon swallows its own exceptions here
        cc_start_s = time.perf_counter() - t
    reads["r1"] = reference.read_j()
    t_fit = time.perf_counter()
    try:
        trainer.fit(Module(), loader)
    finally:
        fit_s = time.perf_counter() - t_fit
        reads["r2"] = reference.read_j()
        cc_final = None
        if cc_tracker is not None:
            t = time.perf_counter()
            cc_tracker.stop()
            cc_stop_s = time.perf_counter() - t
            data = getattr(cc_tracker, "final_emissions_data", None)
            if data is not None:
                cc_final = {"gpu_energy_kwh": data.gpu_energy, "duration_s": data.duration,
                            "energy_consumed_kwh": data.energy_consumed, "cpu_energy_kwh": data.cpu_energy,
                            "ram_energy_kwh": data.ram_energy}
            else:
                errors.append("codecarbon: no final_emissions_data after stop() (start/stop swallowed an error)")
        if zeus_monitor is not None:
            try:
                m = zeus_monitor.end_window(f"{workdir.name}-fit")
                zeus_fit = {"gpu_energy_j": m.gpu_energy.get(zeus_index) if zeus_index is not None else None, "time_s": m.time}
            except Exception as exc:  # noqa: BLE001
                errors.append(f"zeus end_window fit: {_error(exc)}")
        reads["r3"] = reference.read_j()

    records = list(ours.tracker.records)
    ours_epochs = {r.epoch: r for r in records if r.phase == "train"}
    epochs_out = []
    for epoch in sorted(state.ref_epochs):
        ref_j = state.ref_epochs[epoch]
        row = {"epoch": epoch, "duration_s": state.duration.get(epoch), "reference_j": ref_j}
        record = ours_epochs.get(epoch)
        ours_j = gpu_component_j(record) if record is not None else None
        row["greencallbacks"] = {"j": ours_j, "rel": rel(ours_j, ref_j),
                                 "duration_s": record.duration_s if record is not None else None}
        if zeus_monitor is not None:
            z = state.zeus.get(epoch) or {}
            row["zeus"] = {"j": z.get("gpu_energy_j"), "rel": rel(z.get("gpu_energy_j"), ref_j), "duration_s": z.get("time_s")}
        if cc_tracker is not None and cc_tasks:
            c = state.cc.get(epoch) or {}
            cj = c["gpu_energy_kwh"] * KWH_J if c.get("gpu_energy_kwh") is not None else None
            row["codecarbon_task"] = {"j": cj, "rel": rel(cj, ref_j), "duration_s": c.get("duration_s"),
                                      "energy_consumed_kwh": c.get("energy_consumed_kwh")}
        epochs_out.append(row)

    fit_ref = reads["r2"] - reads["r1"]
    outer_ref = reads["r3"] - reads["r0"]
    run_ref = state.run[1] - state.run[0]
    ours_sum = sum(gpu_component_j(r) for r in records)
    sum_ref_epochs = sum(state.ref_epochs.values())
    runs = {
        "greencallbacks": {"window": "all records (setup..teardown)", "j": ours_sum, "reference_j": run_ref,
                           "rel": rel(ours_sum, run_ref), "fit_call_reference_j": fit_ref,
                           "rel_to_fit_call": rel(ours_sum, fit_ref), "records": len(records)},
    }
    if zeus_monitor is not None:
        zj = (zeus_fit or {}).get("gpu_energy_j")
        runs["zeus"] = {"window": "begin_window/end_window around fit", "j": zj, "reference_j": outer_ref,
                        "rel": rel(zj, outer_ref), "duration_s": (zeus_fit or {}).get("time_s")}
        zsum = [e["zeus"]["j"] for e in epochs_out if e.get("zeus", {}).get("j") is not None]
        runs["zeus_epochs_sum"] = {"window": "sum of the per-epoch windows", "j": sum(zsum) if zsum else None,
                                   "reference_j": sum_ref_epochs, "rel": rel(sum(zsum) if zsum else None, sum_ref_epochs)}
    if cc_tracker is not None:
        cj = cc_final["gpu_energy_kwh"] * KWH_J if cc_final and cc_final.get("gpu_energy_kwh") is not None else None
        key = "codecarbon_with_tasks" if cc_tasks else "codecarbon"
        runs[key] = {"window": "start()..stop() around fit" + (" (tasks per epoch inside)" if cc_tasks else ""),
                     "j": cj, "reference_j": fit_ref, "rel": rel(cj, fit_ref), "final": cc_final,
                     "start_s": cc_start_s, "stop_s": cc_stop_s}
        if cc_tasks:
            tsum = [e["codecarbon_task"]["j"] for e in epochs_out if e.get("codecarbon_task", {}).get("j") is not None]
            runs["codecarbon_tasks_sum"] = {"window": "sum of the per-epoch tasks", "j": sum(tsum) if tsum else None,
                                            "reference_j": sum_ref_epochs,
                                            "rel": rel(sum(tsum) if tsum else None, sum_ref_epochs)}
    boundary_ms = {k: (1000.0 * sum(v) / len(v) if v else None) for k, v in boundary_s.items()}
    return {
        "fit": fit,
        "epochs": epochs_out,
        "runs": runs,
        "reference": {"fit_call_j": fit_ref, "outer_j": outer_ref, "run_setup_teardown_j": run_ref,
                      "sum_epochs_j": sum_ref_epochs, "outside_epochs_j": fit_ref - sum_ref_epochs, "fit_s": fit_s},
        "boundary_ms_mean": boundary_ms,
        "errors": errors,
    }


# ------------------------------------------------------------------------------------ report
def fmt_j(value) -> str:
    return "—" if value is None else f"{value:,.1f}"


def fmt_rel(value) -> str:
    return "—" if value is None else f"{100.0 * value:+.2f} %"


def cell(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    return f"{fmt_j(entry.get('j'))} ({fmt_rel(entry.get('rel'))})"


def markdown(result: dict) -> str:
    lines = []
    lines.append(f"GPU: {result.get('gpu')}  driver: {result.get('driver')}  counter update ≈ "
                 f"{result.get('counter_update_ms') and round(result['counter_update_ms'], 1)} ms  "
                 f"dry run: {result['dry_run']}")
    for name in ("codecarbon", "zeus"):
        p = result["peers"][name]
        state = f"{p.get('version')}" if p.get("available") else f"unavailable: {p.get('error')}"
        lines.append(f"{name}: {state}")
    lines.append("")
    lines.append("Per epoch: GPU energy in J (relative difference to the NVML reference of the same epoch)")
    lines.append("")
    lines.append("| length | fit | epoch | s | reference J | greencallbacks | Zeus window | CodeCarbon task |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for length, case in result["cases"].items():
        for fit_name, fit in case.items():
            if not isinstance(fit, dict) or "epochs" not in fit:
                continue
            for e in fit["epochs"]:
                lines.append(
                    f"| {length} | {fit_name} | {e['epoch']} | {e['duration_s']:.2f} | {fmt_j(e['reference_j'])} | "
                    f"{cell(e.get('greencallbacks'))} | {cell(e.get('zeus'))} | {cell(e.get('codecarbon_task'))} |")
    lines.append("")
    lines.append("Per run: GPU energy in J against the reference over the tool's window")
    lines.append("")
    lines.append("| length | fit | tool | window | tool J | reference J | difference |")
    lines.append("|---|---|---|---|---|---|---|")
    for length, case in result["cases"].items():
        for fit_name, fit in case.items():
            if not isinstance(fit, dict) or "runs" not in fit:
                continue
            for tool, r in fit["runs"].items():
                lines.append(f"| {length} | {fit_name} | {tool} | {r['window']} | {fmt_j(r.get('j'))} | "
                             f"{fmt_j(r.get('reference_j'))} | {fmt_rel(r.get('rel'))} |")
            outside = fit["reference"]["outside_epochs_j"]
            lines.append(f"| {length} | {fit_name} | (reference) | fit call minus the epochs (set-up, gaps, teardown) | "
                         f"{fmt_j(outside)} | {fmt_j(fit['reference']['fit_call_j'])} | "
                         f"{fmt_rel(outside / fit['reference']['fit_call_j'] if fit['reference']['fit_call_j'] > 0 else None)} |")
            if fit.get("errors"):
                lines.append(f"| {length} | {fit_name} | errors | {'; '.join(fit['errors'])[:300]} | | | |")
    lines.append("")
    lines.append("Why they differ:")
    for tool, note in result["notes"].items():
        lines.append(f"* **{tool}**: {note}")
    if result.get("network_attempts"):
        lines.append(f"* **network**: {len(result['network_attempts'])} attempt(s) refused: "
                     + ", ".join(sorted({a['target'] for a in result['network_attempts']}))[:300])
    else:
        lines.append("* **network**: no connection or DNS look-up was attempted during the run.")
    return "\n".join(lines)


def notes(result: dict) -> dict:
    period = result.get("counter_update_ms")
    period_txt = f"~{period:.0f} ms" if period else "unknown here"
    out = {
        "reference": ("nvmlDeviceGetTotalEnergyConsumption (mJ, updated every " + period_txt + ") read after "
                      "torch.cuda.synchronize() at on_train_epoch_start/end, first at the start and last at the end: "
                      "every other window is nested inside it, so the tools' boundary bookkeeping is inside the "
                      "reference's epoch."),
        "greencallbacks": ("the same counter after synchronize, read by its own hooks just inside the reference's "
                           "reads (the peers' windows are inside ours): differences are the counter's update step "
                           "against the epoch length (large for ~0.8 s epochs, small for ~6 s) and the few ms "
                           "between the two reads; the run sum covers setup..teardown, not the whole fit call "
                           "(Lightning's set-up before `setup`), hence the two run figures."),
    }
    cc = result["peers"]["codecarbon"]
    if cc.get("available"):
        sources = []
        for length in result["cases"].values():
            for fit in length.values():
                if isinstance(fit, dict):
                    sources.extend(fit.get("codecarbon_meta", {}).get("gpu_source") or [])
        uses_counter = any(s.get("has_counter") and not s.get("power_fallback") for s in sources)
        gap = []
        for length_name, length in result["cases"].items():
            fit = length.get("peers")
            if isinstance(fit, dict) and "codecarbon_with_tasks" in fit.get("runs", {}):
                r = fit["runs"]["codecarbon_with_tasks"]
                gap.append(f"{length_name}: run total {fmt_rel(r.get('rel'))} vs the fit, while the reference spends "
                           f"{fmt_j(fit['reference']['outside_epochs_j'])} J outside the epochs")
        cc_boundary = [fit.get("boundary_ms_mean", {}).get("codecarbon_task") for length in result["cases"].values()
                       for fit in length.values() if isinstance(fit, dict)]
        cc_boundary = [b for b in cc_boundary if b is not None]
        out["codecarbon"] = (
            ("GPU energy from the same NVML energy counter (deltas), " if uses_counter else
             "GPU energy from " + ("power readings averaged over each interval (no usable counter), " if sources else
                                   "no GPU: none detected (it looks for NVIDIA GPUs only when `nvidia-smi --help` runs; "
                                   f"nvidia-smi here: {cc.get('nvidia_smi')}), "))
            + "read at start(), every measure_power_secs=15 s by a timer thread, and at stop(): the run total does not "
            "depend on the 15 s period when the counter is used, only its live figures do; no torch.cuda.synchronize() "
            "of its own (here the reference's read just before stop() synchronizes, so the run total is not affected). Without tasks it gives one figure per run, nothing "
            "per epoch.")
        if cc.get("has_tasks"):
            out["codecarbon (tasks)"] = (
                "start_task/stop_task per epoch give per-epoch values, but stop_task reads the counter without "
                "synchronize (kernels still queued at on_train_epoch_end are left out) and start_task re-reads the "
                "baseline without closing the running interval, so energy between tasks (set-up, epoch gaps, the "
                "queued tail) is dropped from the run total"
                + (" (" + "; ".join(gap) + ")" if gap else "")
                + (f"; each start_task/stop_task took {sum(cc_boundary) / len(cc_boundary):.1f} ms on average" if cc_boundary else "")
                + ".")
    else:
        out["codecarbon"] = f"not measured: {cc.get('error')}"
    zeus = result["peers"]["zeus"]
    if zeus.get("available"):
        pm = any(fit.get("zeus_meta", {}).get("power_monitor") for length in result["cases"].values()
                 for fit in length.values() if isinstance(fit, dict))
        out["zeus"] = (("power sampled by a PowerMonitor process and integrated (auc) — this GPU has no energy counter; "
                        if pm else "the same NVML energy counter, read after torch.cuda.synchronize() at "
                        "begin_window/end_window (no sampling thread), ")
                       + "so it should match the reference up to the counter's update step; its per-epoch windows are "
                       "nested inside the reference's and greencallbacks' (their reads are outside it, CodeCarbon's "
                       "start_task/stop_task inside), which can only make it slightly smaller; the fit window "
                       "encloses CodeCarbon's start()/stop(). Per-epoch values exist only because a window is opened per epoch."
                       + (" scikit-learn was absent: a trapezoid `auc` stood in for Zeus's import (used only by its "
                          "power-sampling path)." if zeus.get("sklearn_shim") else ""))
    else:
        out["zeus"] = f"not measured: {zeus.get('error')}"
    if result["dry_run"]:
        out["dry run"] = ("the reference and greencallbacks read a simulated 250 W counter; CodeCarbon and Zeus measure "
                          "the real machine (no GPU), so their differences here are meaningless (about -100 %).")
    return out


def summarize(result: dict) -> dict:
    """Per length and fit: each tool's largest per-epoch difference and its run difference."""
    out: dict = {}
    for length, case in result["cases"].items():
        for fit_name, fit in case.items():
            entry: dict = {}
            for tool in ("greencallbacks", "zeus", "codecarbon_task"):
                rels = [e[tool]["rel"] for e in fit["epochs"] if e.get(tool, {}).get("rel") is not None]
                if rels:
                    entry[f"{tool}.max_abs_epoch_rel"] = max(abs(r) for r in rels)
            for tool, r in fit["runs"].items():
                entry[f"{tool}.run_rel"] = r.get("rel")
            entry["epoch_s_median"] = sorted(e["duration_s"] for e in fit["epochs"])[len(fit["epochs"]) // 2] if fit["epochs"] else None
            entry["errors"] = len(fit.get("errors", []))
            out[f"{length}.{fit_name}"] = entry
    return out


def strip(obj):
    """Drop non-JSON values (classes) from the peer descriptions."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k != "cls"}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dry-run", action="store_true", help="CPU, simulated counter, tiny sizes")
    parser.add_argument("--short-s", type=float, default=0.8, help="target length of a short epoch")
    parser.add_argument("--long-s", type=float, default=6.0, help="target length of a long epoch")
    parser.add_argument("--budget-s", type=float, default=220.0, help="fewer long epochs if the run would exceed this")
    parser.add_argument("--no-codecarbon", action="store_true")
    parser.add_argument("--no-zeus", action="store_true")
    args = parser.parse_args()

    guard = NetworkGuard()
    guard.install()
    started = time.perf_counter()
    try:
        import torch
        import lightning

        cuda = torch.cuda.is_available()
        if not cuda and not args.dry_run:
            print("gpu_peers: no CUDA device here; use --dry-run to check the script on a CPU.", file=sys.stderr)
            return 2
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*has a `batch_size` of 1.*")

        cc_info = {"available": False, "error": "disabled (--no-codecarbon)"} if args.no_codecarbon else load_codecarbon()
        zeus_info = {"available": False, "error": "disabled (--no-zeus)"} if args.no_zeus else load_zeus()

        if args.dry_run:
            device = torch.device("cpu")
            torch.set_num_threads(1)
            reference = SimulatedCounter()
            work = Workload(torch, device, hidden=32, batch=16)
            callback_kwargs = {"sensors": [simulated_sensor(reference)]}
            sync = lambda: None  # noqa: E731
            short_s, long_s, short_epochs, long_epochs = 0.15, 0.3, 2, 2
            zeus_indices, zeus_index, cc_nvml_index = [], None, None
        else:
            index = torch.cuda.current_device()
            device = torch.device("cuda", index)
            torch.backends.cuda.matmul.allow_tf32 = True
            reference = NvmlReference(torch, index)
            work = Workload(torch, device, hidden=4096, batch=4096)
            callback_kwargs = {"gpus": [index]}
            sync = lambda: torch.cuda.synchronize(index)  # noqa: E731
            short_s, long_s, short_epochs, long_epochs = args.short_s, args.long_s, 5, 3
            zeus_indices, zeus_index = [index], index
            cc_nvml_index = reference.nvml_index if reference.nvml_count > 1 else None
        import shutil

        cc_info["nvidia_smi"] = shutil.which("nvidia-smi")  # CodeCarbon tracks NVIDIA GPUs only if `nvidia-smi --help` runs

        counter_update_ms = reference.update_period_ms()
        short_steps = work.steps_for(short_s, sync)
        long_steps = work.steps_for(long_s, sync)
        result: dict = {
            "dry_run": args.dry_run,
            "date": time.strftime("%Y-%m-%d"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            **reference.describe(),
            "counter_update_ms": counter_update_ms,
            "workload": {"hidden": work.hidden, "batch": work.batch, "short_steps": short_steps, "long_steps": long_steps,
                         "short_epochs": short_epochs, "long_epochs": long_epochs},
            "peers": {"codecarbon": cc_info, "zeus": zeus_info},
            "cases": {},
        }
        with tempfile.TemporaryDirectory(prefix="gcb-gpu-peers-") as tmp:
            tmp_path = Path(tmp)
            # Warm-up (cuBLAS handles, Lightning's first-fit costs); not reported.
            run_fit("warmup", work, reference, callback_kwargs, 1, short_steps, tmp_path / "warmup")
            zeus_monitor, zeus_meta = (None, {})
            if zeus_info.get("available"):
                zeus_monitor, zeus_meta = make_zeus(zeus_info, zeus_indices)
                if zeus_monitor is None:
                    zeus_info["error"] = zeus_meta.get("error")
            for length, epochs, steps in (("short", short_epochs, short_steps), ("long", long_epochs, long_steps)):
                case: dict = {}
                fits = 2 if cc_info.get("available") else 1
                seconds = long_s if length == "long" else short_s
                elapsed = time.perf_counter() - started
                while epochs > 2 and elapsed + fits * (epochs * seconds + 8.0) > args.budget_s:
                    epochs -= 1  # stay within the time budget (the device run is limited)
                    result.setdefault("budget_notes", []).append(f"{length}: epochs reduced to {epochs} at {elapsed:.0f} s")
                cc1, cc1_meta = (None, {})
                if cc_info.get("available"):
                    cc1, cc1_meta = make_codecarbon(cc_info, cc_nvml_index, "process")
                fit = run_fit("peers", work, reference, callback_kwargs, epochs, steps, tmp_path / f"{length}-peers",
                              zeus_monitor=zeus_monitor, zeus_index=zeus_index, cc_tracker=cc1,
                              cc_tasks=bool(cc1 is not None and cc_info.get("has_tasks")))
                fit["codecarbon_meta"], fit["zeus_meta"] = cc1_meta, zeus_meta
                case["peers"] = fit
                if cc_info.get("available"):
                    cc2, cc2_meta = make_codecarbon(cc_info, cc_nvml_index, None)
                    fit = run_fit("codecarbon", work, reference, callback_kwargs, epochs, steps,
                                  tmp_path / f"{length}-codecarbon", cc_tracker=cc2)
                    fit["codecarbon_meta"] = cc2_meta
                    case["codecarbon"] = fit
                result["cases"][length] = case
                print(f"gpu_peers: {length} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        result["network_attempts"] = guard.attempts
        result["summary"] = summarize(result)
        result["wall_s"] = time.perf_counter() - started
        result["notes"] = notes(result)
        result = strip(result)
    finally:
        guard.uninstall()
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text, encoding="utf-8")
    print(markdown(result))
    print(f"\nwall time: {result['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
