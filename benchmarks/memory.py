"""Memory and threads over a long run: resident memory (psutil) and ``threading.active_count()``.

1. Core: one ``Tracker`` run of many phases (``--phases``; train + validation per epoch) on a
   ``ScriptedSensor`` with a fake clock (tests/fakes/scripted.py), records written to disk.
   RSS and threads are sampled every 1 % of the run; first / last / max and the slope of a
   least-squares line over the second half (after allocator warm-up) are reported.
   The tracker keeps every record in ``tracker.records`` (one per phase, plus the gaps):
   bytes per record are measured with ``tracemalloc`` (memory still held after the run,
   divided by the records held).
2. Lightning: several ``fit`` calls in a row, each with many short epochs; threads after each fit
   show whether the meter's background thread is stopped and not leaked.
3. ``greencallbacks report`` over a sweep (``--sweep-runs`` runs of 50 epochs in one records file,
   as a hyper-parameter search leaves them): seconds and peak Python heap, to show it grows with the
   records and not with records x runs.

Usage: python benchmarks/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, emit, mlp_module, pin_threads, quiet  # noqa: E402


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def _series(samples: list[tuple[int, float, int]], unit: str) -> dict:
    xs = [s[0] for s in samples]
    rss = [s[1] / 2**20 for s in samples]
    threads = [s[2] for s in samples]
    half = len(samples) // 2
    return {
        "samples": len(samples),
        "rss_mib_first": rss[0],
        "rss_mib_last": rss[-1],
        "rss_mib_max": max(rss),
        f"rss_kib_per_{unit}_slope_second_half": _slope(xs[half:], rss[half:]) * 1024,
        "threads_first": threads[0],
        "threads_last": threads[-1],
        "threads_max": max(threads),
    }


def core_tracker(phases: int, workdir: Path) -> dict:
    import psutil

    sys.path.insert(0, str(REPO_ROOT))
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    from greencallbacks.carbon import Carbon
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker

    process = psutil.Process()
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=300.0)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=clock)
    tracker = Tracker(carbon=Carbon(country="FR"), output_dir=workdir / "core")
    gc.collect()
    tracemalloc.start()
    held_before = tracemalloc.get_traced_memory()[0]
    tracker.start(meter)
    every = max(1, phases // 100)
    samples, traced = [], []
    cap = getattr(sys.modules["greencallbacks.tracker"], "RECORDS_KEPT_IN_MEMORY", None)
    t0 = time.perf_counter()
    epochs = phases // 2
    for epoch in range(epochs):
        tracker.begin("train", epoch)
        clock.advance(1.0)
        tracker.add_samples(64)
        tracker.begin("validation", epoch)
        clock.advance(0.2)
        tracker.end("validation")
        tracker.end("train")
        clock.advance(0.01)  # a gap: billed to `other`
        if (2 * epoch) % every == 0:
            samples.append((2 * epoch, float(process.memory_info().rss), threading.active_count()))
            traced.append((2 * epoch, tracemalloc.get_traced_memory()[0] - held_before, len(tracker.records)))
    tracker.finish()
    elapsed = time.perf_counter() - t0
    gc.collect()
    held_after = tracemalloc.get_traced_memory()[0] - held_before
    tracemalloc.stop()
    samples.append((2 * epochs, float(process.memory_info().rss), threading.active_count()))
    # Bytes per record: traced growth while the record list grows; residual growth: once it stops.
    growing = [t for t in traced if t[2] < (cap or float("inf"))]
    per_record = (growing[-1][1] - growing[0][1]) / (growing[-1][2] - growing[0][2]) if len(growing) > 1 and growing[-1][2] > growing[0][2] else None
    half = len(traced) // 2
    out = _series(samples, "1000_phases")
    out["rss_kib_per_1000_phases_slope_second_half"] *= 1000  # the fit above is per phase
    out.update({
        "phases": 2 * epochs,
        "records_held_at_end": len(tracker.records),
        "records_kept_in_memory_cap": cap,
        "bytes_per_record_held": per_record,
        "python_heap_held_after_run_kib": held_after / 1024,
        "python_heap_bytes_per_phase_slope_second_half": _slope([t[0] for t in traced[half:]], [t[1] for t in traced[half:]]),
        "us_per_phase_records_written": elapsed / (2 * epochs) * 1e6,
    })
    return out


def lightning_fits(fits: int, epochs: int, workdir: Path, with_callback: bool = True) -> dict:
    import lightning.pytorch as L
    import psutil
    from torch.utils.data import DataLoader, TensorDataset

    import overhead
    from greencallbacks.lightning import EnergyCallback

    x, y, _, _ = overhead._data(2, 0)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)

    Module = mlp_module(validation=False)

    process = psutil.Process()
    samples = []
    threads_before = threading.active_count()

    class Sampler(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            samples.append((len(samples), float(process.memory_info().rss), threading.active_count()))

    threads_after_fit = []
    for i in range(fits):
        callbacks = [EnergyCallback(country="FR")] if with_callback else []
        L.Trainer(max_epochs=epochs, callbacks=[*callbacks, Sampler()],
                  logger=L.loggers.CSVLogger(str(workdir / f"fit{i}-{with_callback}")),
                  enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                  accelerator="cpu", devices=1).fit(Module(), loader)
        threads_after_fit.append(threading.active_count())
    out = _series(samples, "1000_epochs")
    out["rss_kib_per_1000_epochs_slope_second_half"] *= 1000
    out.update({"fits": fits, "epochs_per_fit": epochs, "threads_before": threads_before,
                "threads_after_each_fit": threads_after_fit})
    return out


def lightning_heap_held_by_tool(epochs: int, workdir: Path) -> dict:
    """Python heap still held by greencallbacks' own code (tracemalloc, by file) as a fit goes on.

    RSS moves by tens of MiB with the allocator and Lightning's own buffers; this counts only the
    live blocks allocated in ``src/greencallbacks``, at a quarter, half and the end of one fit.
    """
    import tracemalloc

    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    import overhead
    from greencallbacks.lightning import EnergyCallback

    x, y, _, _ = overhead._data(2, 0)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    package = str(Path(__import__("greencallbacks").__file__).parent)
    held: dict[int, int] = {}

    Module = mlp_module(validation=False)

    class Probe(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch in (epochs // 4, epochs // 2, epochs):
                stats = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, package + "/*")])
                held[epoch] = sum(stat.size for stat in stats.statistics("filename"))

    tracemalloc.start()
    try:
        L.Trainer(max_epochs=epochs, callbacks=[EnergyCallback(country="FR"), Probe()],
                  logger=L.loggers.CSVLogger(str(workdir / "heap")), enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                  devices=1).fit(Module(), loader)
    finally:
        tracemalloc.stop()
    quarter, half, end = (held[e] for e in (epochs // 4, epochs // 2, epochs))
    return {"epochs": epochs, "held_bytes_by_epoch": held,
            "bytes_per_epoch_second_half": (end - half) / (epochs - epochs // 2),
            "bytes_per_epoch_second_quarter": (half - quarter) / (epochs // 2 - epochs // 4)}


def report_of_a_sweep(runs: int, epochs: int, workdir: Path) -> dict:
    """Time and peak traced heap of ``greencallbacks report`` (markdown) over ``runs`` runs."""
    import json

    from greencallbacks.cli import main as cli_main

    one = workdir / "one-run"
    core_tracker(2 * epochs, one)  # one run's records: train, validation and the gaps
    lines = (one / "core" / "energy-records.jsonl").read_text().splitlines()
    sweep = workdir / "sweep"
    sweep.mkdir()
    with open(sweep / "energy-records.jsonl", "w") as out:
        for run in range(runs):  # the same run under other ids: repeats of one configuration
            for line in lines:
                out.write(json.dumps({**json.loads(line), "run_id": f"trial-{run:05d}"}) + "\n")
    report = workdir / "report.md"

    def run_report() -> int:
        with open(report, "w") as stdout, open(os.devnull, "w") as stderr:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                return cli_main(["report", str(sweep)])

    gc.collect()
    t0 = time.perf_counter()
    code = run_report()
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # a second run for the heap: tracing slows Python several-fold
    run_report()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"runs": runs, "records": runs * len(lines), "exit_code": code, "seconds": seconds,
            "us_per_record": seconds / (runs * len(lines)) * 1e6, "peak_python_heap_mib": peak / 2**20,
            "report_bytes": report.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--phases", type=int, default=None, help="core run length (default 20000; 2000 quick)")
    parser.add_argument("--sweep-runs", type=int, default=None, help="runs in the report's sweep (default 1000; 20 quick)")
    args = parser.parse_args()
    quiet()
    pin_threads(1)
    phases = args.phases or (2000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory(prefix="gcb-memory-") as tmp:
        result = {"core": core_tracker(phases, Path(tmp))}
        fits, epochs = (2, 20) if args.quick else (5, 200)
        # The same fits without the callback first: Lightning's own growth (its CSVLogger keeps
        # every row), to set the callback's against.
        result["lightning_without_callback"] = lightning_fits(fits, epochs, Path(tmp), with_callback=False)
        result["lightning"] = lightning_fits(fits, epochs, Path(tmp))
        result["lightning_heap_held_by_tool"] = lightning_heap_held_by_tool(40 if args.quick else 2000, Path(tmp))
        result["report_of_a_sweep"] = report_of_a_sweep(args.sweep_runs or (20 if args.quick else 1000), 50, Path(tmp))
    emit(result)


if __name__ == "__main__":
    main()
