"""How ``greencallbacks report`` scales with a sweep's size: N runs of E epochs (a training and a
validation record each) in N directories under one log root, written by the core on a fake clock,
then reported in Markdown in this process (records read, grouped, summed, rendered).

The time should grow with the records, not with their square: until 2026-12-06 the per-epoch
table looked for each row's later attempts among every row, and 200 runs of 100 epochs took 79 s
(50 runs: 3.8 s).

Usage: python benchmarks/report_scale.py [--sizes 50x100,200x100,20x1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, emit  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))  # for tests.fakes


def write_sweep(root: Path, runs: int, epochs: int) -> None:
    from greencallbacks import Carbon, Meter, Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    for run in range(runs):
        clock = FakeClock()
        meter = Meter([ScriptedSensor("gpu0", clock, power_w=300.0)], fallback=None, clock=clock,
                      wall_clock=lambda clock=clock: clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=300.0), output_dir=root / f"trial{run}")
        tracker.start(meter)
        for epoch in range(epochs):
            with tracker.phase("train", epoch):
                clock.advance(10.0)
                tracker.add_samples(100)
            with tracker.phase("validation", epoch):
                clock.advance(1.0)
                tracker.add_samples(10)
        tracker.finish()


def time_report(root: Path) -> float:
    from greencallbacks.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["report", str(root)])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"report exited with {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50x100,200x100,20x1000", help="runs x epochs, comma-separated")
    args = parser.parse_args()
    results = []
    for size in args.sizes.split(","):
        runs, epochs = (int(part) for part in size.split("x"))
        with tempfile.TemporaryDirectory() as directory:
            write_sweep(Path(directory), runs, epochs)
            seconds = time_report(Path(directory))
        records = runs * epochs * 2
        results.append({"runs": runs, "epochs": epochs, "records": records, "report_s": round(seconds, 2),
                        "us_per_record": round(seconds / records * 1e6, 1)})
        print(f"{runs:5d} runs x {epochs:5d} epochs  {records:7d} records  report {seconds:6.2f} s  "
              f"({seconds / records * 1e6:.0f} us a record)", flush=True)
    emit({"report_scale": results})


if __name__ == "__main__":
    main()
