"""The seed study, reproduced: what drives the energy of training dense networks.

The paper behind this project (an MDPI study of the drivers of deep-learning carbon footprint)
trained dense networks (MLPs) and found that

  (a) training energy grows linearly with the number of epochs,
  (b) training energy grows linearly with the size of the data set,
  (c) training costs a ~= 5 times the energy of inference on the same samples, so the training
      overhead 1 - 1/a approaches ~80 % of training energy.

This script measures the same three things for MLPs of several depths on synthetic data, with
the core ``Tracker`` around a plain PyTorch loop: one ``train`` phase per epoch, then one
``predict`` phase over the training set, which gives I (J/sample) and a = T / (I x D x E).

    python examples/seed_study.py                   # CPU, about 1-2 minutes
    python examples/seed_study.py --quick           # a few seconds (tests)
    python examples/seed_study.py --device cuda     # measured GPU energy (NVML counters)

It prints three Markdown tables and writes ``seed-study.json``, ``seed-study.png`` and every run's
records (``runs/<run_id>/energy-records.jsonl``) to ``--out``. On a machine without RAPL or NVML
the energy is *estimated* (CPU: TDP x CPU time; RAM: W/GB), so it is proportional to compute
time; the tables say which components were estimated.
(a) uses one run per depth and reads the cumulative training energy after each epoch, which is
what separate runs of 1..E epochs would measure, minus their start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

from greencallbacks.carbon import Carbon
from greencallbacks.cli import OneLineErrorParser
from greencallbacks.lifecycle import lifecycle
from greencallbacks.meter import Meter
from greencallbacks.sensors.discover import discover_sensors
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH

FEATURES = 64
CLASSES = 10


def make_data(samples: int, seed: int = 0):
    """A fixed random teacher network labels Gaussian inputs: learnable, and the same for every run."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    labels = (inputs @ teacher + 0.5 * torch.randn(samples, CLASSES, generator=generator)).argmax(dim=1)
    return inputs, labels


def make_mlp(depth: int, width: int):
    import torch.nn as nn

    layers, size = [], FEATURES
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, CLASSES))
    return nn.Sequential(*layers)


class Study:
    """Shared settings, and one measured training run per call of ``train``."""

    def __init__(self, *, device: str, width: int, batch_size: int, carbon: Carbon, out: Path, seed: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.width = width
        self.batch_size = batch_size
        self.carbon = carbon
        self.out = out
        self.seed = seed
        on_cuda = self.device.type == "cuda"
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if on_cuda else None
        self.sensors = discover_sensors(gpus=[index] if on_cuda else None, host=True).sensors
        self.sync = (lambda: torch.cuda.synchronize(self.device)) if on_cuda else None
        self.meter = Meter(self.sensors, sync=self.sync)

    def methods(self) -> dict[str, str]:
        return {sensor.name: str(sensor.method) for sensor in self.sensors}

    def train(self, run_id: str, depth: int, samples: int, epochs: int, predict: bool):
        """Train an MLP of ``depth`` hidden layers for ``epochs`` epochs; optionally predict over the training set."""
        torch = self.torch
        torch.manual_seed(self.seed)
        inputs, labels = make_data(samples, self.seed)
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        model = make_mlp(depth, self.width).to(self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        self._warm_up(model, inputs)

        tracker = Tracker(carbon=self.carbon, output_dir=self.out / "runs" / run_id, run_id=run_id, framework="torch")
        with tracker.start(self.meter):  # finished at the end; written up as cut short on an exception
            for epoch in range(epochs):
                with tracker.phase("train", epoch):
                    model.train()
                    order = torch.randperm(samples, device=self.device)
                    for start in range(0, samples, self.batch_size):
                        batch = order[start : start + self.batch_size]
                        optimizer.zero_grad(set_to_none=True)
                        loss = loss_fn(model(inputs[batch]), labels[batch])
                        loss.backward()
                        optimizer.step()
                        tracker.add_samples(len(batch))
            if predict:
                with tracker.phase("predict"):
                    model.eval()
                    with torch.inference_mode():
                        for start in range(0, samples, self.batch_size):
                            model(inputs[start : start + self.batch_size])
                            tracker.add_samples(min(self.batch_size, samples - start))
        return tracker.records

    def _warm_up(self, model, inputs) -> None:
        # Allocator and kernel selection happen on the first batches; keep them out of epoch 0.
        with self.torch.no_grad():
            model(inputs[: self.batch_size])
        if self.sync is not None:
            self.sync()


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares line y = intercept + slope x, and its R²."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - residual / total if total > 0 else 1.0}


def train_energy_j(records) -> float:
    return sum(r.energy_kwh for r in records if r.phase == "train") * J_PER_KWH


def run_study(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    carbon = Carbon(country=args.country, zone=args.zone, intensity=args.intensity)
    study = Study(device=args.device, width=args.width, batch_size=args.batch_size, carbon=carbon, out=args.out, seed=args.seed)
    if study.device.type == "cpu" and args.threads:
        # One thread: the CPU estimate is CPU time, and idle intra-op threads spinning on a busy
        # machine would bill their spinning to training.
        study.torch.set_num_threads(args.threads)
    started = time.monotonic()
    results: dict = {
        "settings": {
            "device": args.device, "depths": args.depths, "width": args.width, "batch_size": args.batch_size,
            "samples": args.samples, "epochs": args.epochs, "sizes": args.sizes, "size_epochs": args.size_epochs,
            "features": FEATURES, "classes": CLASSES, "seed": args.seed, "threads": args.threads,
        },
        "sensors": study.methods(),
        "carbon": carbon.describe(),
        "epochs": [],
        "sizes": [],
        "overhead": [],
    }
    for depth in args.depths:
        # (a) and (c): one run of E epochs, then inference over the training set.
        records = study.train(f"depth{depth}-epochs", depth, args.samples, args.epochs, predict=True)
        per_epoch = sorted((r.epoch, r.energy_kwh * J_PER_KWH) for r in records if r.phase == "train")
        cumulative, running = [], 0.0
        for _, energy in per_epoch:
            running += energy
            cumulative.append(running)
        epochs = list(range(1, len(cumulative) + 1))
        results["epochs"].append({"depth": depth, "epochs": epochs, "train_j": cumulative, "fit": linear_fit(epochs, cumulative)})
        lc = lifecycle(records)
        results["overhead"].append(
            {
                "depth": depth,
                "train_j": lc.training_j,
                "train_j_per_sample": lc.training_j_per_sample,
                "inference_j_per_sample": lc.inference_j_per_sample,
                "overhead_factor": lc.overhead_factor,
                "overhead_share": lc.overhead_share,
                "train_co2eq_g": lc.training_co2eq_g,
            }
        )
        # (b): the same network on data sets of several sizes, a fixed number of epochs each.
        energies = []
        for size in args.sizes:
            size_records = study.train(f"depth{depth}-n{size}", depth, size, args.size_epochs, predict=False)
            energies.append(train_energy_j(size_records))
        results["sizes"].append({"depth": depth, "sizes": list(args.sizes), "train_j": energies, "fit": linear_fit(list(args.sizes), energies)})
    study.meter.close()
    results["wall_s"] = time.monotonic() - started
    estimated = sorted(name for name, method in results["sensors"].items() if method == "estimated")
    results["estimated_components"] = estimated
    return results


def format_tables(results: dict) -> str:
    settings = results["settings"]
    lines = [
        f"## (a) Training energy vs epochs ({settings['samples']} samples, width {settings['width']})",
        "",
        "| hidden layers | " + " | ".join(f"E={e} (J)" for e in results["epochs"][0]["epochs"]) + " | J/epoch (slope) | R² |",
        "|---:|" + "---:|" * (len(results["epochs"][0]["epochs"]) + 2),
    ]
    for row in results["epochs"]:
        values = " | ".join(f"{j:.4g}" for j in row["train_j"])
        lines.append(f"| {row['depth']} | {values} | {row['fit']['slope']:.4g} | {row['fit']['r2']:.4f} |")
    lines += [
        "",
        f"## (b) Training energy vs data-set size ({settings['size_epochs']} epochs)",
        "",
        "| hidden layers | " + " | ".join(f"N={n} (J)" for n in settings["sizes"]) + " | mJ/sample (slope) | R² |",
        "|---:|" + "---:|" * (len(settings["sizes"]) + 2),
    ]
    for row in results["sizes"]:
        values = " | ".join(f"{j:.4g}" for j in row["train_j"])
        lines.append(f"| {row['depth']} | {values} | {row['fit']['slope'] * 1000:.4g} | {row['fit']['r2']:.4f} |")
    lines += [
        "",
        "## (c) Training overhead over inference (a = T / (I x D x E), share = 1 - 1/a)",
        "",
        "| hidden layers | T (J) | T per sample (mJ) | I (mJ/sample) | a | overhead share |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["overhead"]:
        share = "n/a" if row["overhead_share"] is None else f"{row['overhead_share']:.1%}"
        a = "n/a" if row["overhead_factor"] is None else f"{row['overhead_factor']:.2f}"
        inference = "n/a" if row["inference_j_per_sample"] is None else f"{row['inference_j_per_sample'] * 1000:.4g}"
        lines.append(
            f"| {row['depth']} | {row['train_j']:.4g} | {row['train_j_per_sample'] * 1000:.4g} | {inference} | {a} | {share} |"
        )
    lines.append("")
    sensors = ", ".join(f"{name}: {method}" for name, method in results["sensors"].items())
    lines.append(f"Sensors: {sensors}.")
    if results["estimated_components"]:
        lines.append(
            f"Estimated, not measured: {', '.join(results['estimated_components'])} "
            "(CPU from TDP x CPU time, RAM from W/GB), so these energies are proportional to compute time."
        )
    carbon = results["carbon"]
    lines.append(f"Carbon intensity: {carbon['g_per_kwh']:.0f} gCO2eq/kWh ({carbon['source']}); PUE {carbon['pue']:g}.")
    lines.append(f"Wall time: {results['wall_s']:.1f} s.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=110)
    FigureCanvasAgg(figure)
    by_epochs, by_size, overhead = figure.subplots(1, 3)
    for row in results["epochs"]:
        fit = row["fit"]
        by_epochs.plot(row["epochs"], row["train_j"], "o", label=f"{row['depth']} layers (R²={fit['r2']:.3f})")
        by_epochs.plot(row["epochs"], [fit["intercept"] + fit["slope"] * e for e in row["epochs"]], "-", color="grey", lw=0.8)
    by_epochs.set(xlabel="epochs", ylabel="training energy (J)", title="(a) energy vs epochs")
    by_epochs.legend(fontsize="small")
    for row in results["sizes"]:
        fit = row["fit"]
        by_size.plot(row["sizes"], row["train_j"], "o", label=f"{row['depth']} layers (R²={fit['r2']:.3f})")
        by_size.plot(row["sizes"], [fit["intercept"] + fit["slope"] * n for n in row["sizes"]], "-", color="grey", lw=0.8)
    by_size.set(xlabel="training samples", ylabel="training energy (J)", title="(b) energy vs data-set size")
    by_size.legend(fontsize="small")
    depths = [str(row["depth"]) for row in results["overhead"]]
    shares = [100 * (row["overhead_share"] or 0.0) for row in results["overhead"]]
    overhead.bar(depths, shares, color="#4c9a6a")
    overhead.axhline(80, color="grey", ls="--", lw=0.8, label="~80 % (seed paper)")
    overhead.set(xlabel="hidden layers", ylabel="overhead share 1 - 1/a (%)", title="(c) training overhead", ylim=(0, 100))
    overhead.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return values


def _sizes(text: str) -> list[int]:
    values = _int_list(text)
    if len(set(values)) < 2:  # (b) fits a line through them
        raise argparse.ArgumentTypeError(f"must be at least two different data-set sizes (a line is fitted), got {text!r}")
    return values


def _count(least: int, why: str = ""):
    """An integer >= ``least``, else the flag's one-line error (not a traceback once training runs)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}{why}, got {text!r}")
        return value

    return count


def _device(text: str) -> str:
    if re.fullmatch(r"cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:<index>, got {text!r}")
    return text


def _carbon_flag(argument: str):
    """A location checked as ``Carbon`` checks it, so that a wrong one fails before any training."""

    def location(text: str):
        value: str | float = text
        if argument == "intensity":
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a number of gCO2eq/kWh, got {text!r}") from None
        try:
            Carbon(**{argument: value})
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    return location


# Sizes of the full study and of --quick: each applies only to what was not given on the command line.
FULL = {"depths": [2, 4, 8], "width": 256, "samples": 8192, "epochs": 6, "sizes": [2048, 4096, 6144, 8192],
        "size_epochs": 2, "batch_size": 128}
QUICK = {"depths": [2, 4], "width": 128, "samples": 2048, "epochs": 3, "sizes": [512, 1024, 1536, 2048],
         "size_epochs": 1, "batch_size": 128}


def build_parser() -> argparse.ArgumentParser:
    # One line and exit 2 for a bad flag, as the greencallbacks command gives.
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:<index> (default cpu)")
    parser.add_argument("--out", type=Path, default=Path("seed-study-out"), help="output directory")
    parser.add_argument("--depths", type=_int_list, help=f"hidden layers, e.g. 2,4,8 (default {FULL['depths']})")
    parser.add_argument("--width", type=_count(1), help=f"units per hidden layer (default {FULL['width']})")
    parser.add_argument("--samples", type=_count(1), help=f"training samples for (a) and (c) (default {FULL['samples']})")
    parser.add_argument("--epochs", type=_count(2, " (a line is fitted through the epochs)"),
                        help=f"epochs for (a) and (c), at least 2 (default {FULL['epochs']})")
    parser.add_argument("--sizes", type=_sizes, help=f"data-set sizes for (b) (default {FULL['sizes']})")
    parser.add_argument("--size-epochs", type=_count(1), help=f"epochs per run in (b) (default {FULL['size_epochs']})")
    parser.add_argument("--batch-size", type=_count(1), help=f"default {FULL['batch_size']}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_count(0), default=1, help="torch CPU threads (default 1; 0 leaves torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help="a small version that runs in seconds (sizes given on the command line are kept)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--country", type=_carbon_flag("country"), help="grid of this country (ISO code)")
    where.add_argument("--zone", type=_carbon_flag("zone"), help="grid zone, e.g. US-CA (default: world average)")
    where.add_argument("--intensity", type=_carbon_flag("intensity"), help="gCO2eq/kWh")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.country is None and args.zone is None and args.intensity is None:
        args.zone = "world"  # said in the output; the study is about ratios, not a location
    if args.device.startswith("cuda"):
        import torch

        index = int(args.device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            parser.error(f"argument --device: {args.device} asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    results = run_study(args)
    print(format_tables(results))
    (args.out / "seed-study.json").write_text(json.dumps(results, indent=2, default=_json_default), encoding="utf-8")
    plot(results, args.out / "seed-study.png")
    print(f"\nWrote {args.out / 'seed-study.json'}, {args.out / 'seed-study.png'} and records under {args.out / 'runs'}")
    return results


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
