"""The ``greencallbacks`` command: devices, demo, report, lifecycle, estimate, whatif, zones.

Each sub-command imports what it needs when it runs, so ``greencallbacks --help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

from greencallbacks._version import __version__


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments give one line and exit 2, like every other input error of the command:
    argparse's own usage block would bury the one line that says what is wrong."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_carbon_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("carbon intensity (default: world average, said in every output)")
    group.add_argument("--country", help="ISO 3166 alpha-2 or alpha-3 code, e.g. FR or FRA")
    group.add_argument("--zone", help="sub-national zone: a US state, e.g. US-CA (`greencallbacks zones` lists them)")
    group.add_argument("--region", help="cloud region, e.g. aws:us-east-1, gcp:europe-west1, azure:westeurope")
    group.add_argument("--intensity", type=_number, help="gCO2eq/kWh, a number you know")
    # The range validate_pue accepts (greencallbacks.carbon.pue's MIN_PUE, MAX_PUE), not imported: --help stays instant.
    group.add_argument("--pue", type=float, help="power usage effectiveness of the data centre, from 1 (IT energy "
                                                 "only) to 3")


def _carbon_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("country", "zone", "region", "intensity", "pue") if getattr(args, k) is not None}


def cmd_devices(args: argparse.Namespace) -> int:
    import warnings

    from greencallbacks.meter import EnergyWarning
    from greencallbacks.sensors.discover import discover_sensors

    with warnings.catch_warnings():
        # What discovery would warn about (an apportioned share) is in the listing below.
        warnings.simplefilter("ignore", EnergyWarning)
        discovery = discover_sensors(gpus="auto", host=True)
    found = [
        {**sensor.describe(), **({"note": sensor.note} if getattr(sensor, "note", "") else {})}
        for sensor in discovery.sensors
    ]
    missing = [
        {"name": u.name, "kind": str(u.kind), "reason": u.reason, "fix": u.fix} for u in discovery.unavailable
    ]
    for sensor in discovery.sensors:
        sensor.close()
    if args.json:
        print(json.dumps({"sensors": found, "unavailable": missing}, indent=2))
        return 0
    print("Sensors in use:")
    for s in found:
        note = f"  ({s['note']})" if s.get("note") else ""
        print(f"  {s['name']:<16} {s['kind']:<6} {s['method']:<11} {s['scope']}{note}")
    if not any(s["kind"] == "gpu" for s in found):
        print("  (no GPU: looked for NVIDIA GPUs through NVML and AMD GPUs through amdsmi; why not, below)")
    if missing:
        print("\nNot available:")
        for u in missing:
            print(f"  {u['name']:<16} {u['kind']:<6} {u['reason']}")
            if u["fix"]:
                print(f"  {'':<16} {'':<6} fix: {u['fix']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from greencallbacks.demo import run_demo

    out = Path(args.out)
    _check_writable_directory("--out", out)
    run_demo(out, epochs=args.epochs, **_carbon_kwargs(args))
    return 0


def _check_writable_directory(flag: str, path: Path) -> None:
    """Refuse, naming ``flag``, a directory ``path`` that cannot be written, before any work: by
    trying it (making the directories and a file, then undoing what was made), since permission
    bits do not tell (root passes them, and /sys refuses root). A bare OSError would name no flag."""
    made: list[Path] = []
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {str(path)!r} is a file, not a directory")
        for place in (*reversed(path.parents), path):
            if not place.exists():
                place.mkdir()
                made.append(place)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {error.strerror or error}") from None
    finally:
        for place in reversed(made):
            try:
                place.rmdir()
            except OSError:
                pass


def _comma_list(text: str) -> list[str]:
    """The zones of "FR,DE", each once: zones are read in any case, and "FR,fr" gave two equal rows."""
    items: dict[str, str] = {}
    for item in (item.strip() for item in text.split(",")):
        if item:
            items.setdefault(item.casefold(), item)
    if not items:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of zones, got {text!r}")
    return list(items.values())


def load_records(paths: Sequence[str | os.PathLike], run_id: str | None = None):
    """``runs.load`` for the sub-commands: a path that is neither file nor directory, or files
    without a record (of ``run_id``, when given), are refused. A report of nothing would print
    zeros (or nothing) and exit 0."""
    from greencallbacks.records import run_ids_in_file
    from greencallbacks.runs import load

    # The reader's warnings (a torn line skipped) are held until it is known whether any record
    # was read: where none was, they are the reason, said in the error's one line.
    with warnings.catch_warnings(record=True) as said:
        loaded = load(paths, run_id=run_id)  # a device, or a named pipe in a directory, is refused as what it is
    if loaded.records:
        for warning in said:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if run_id is not None and not loaded.records:
        # Read again for the ids alone, torn lines too; a pipe cannot be read twice (a named one
        # would wait for a writer that has gone).
        ids = {file: run_ids_in_file(file) if file.is_file() else set() for file in loaded.files}
        torn = [str(file) for file, runs in ids.items() if run_id in runs]
        if torn:  # its lines are there, and every one was skipped: a line cut short has no record
            raise ValueError(f"--run-id {run_id!r}: none of its records could be read (its lines in "
                             f"{', '.join(torn)} are torn, skipped)")
        present = sorted(set().union(*ids.values()))
        if present:
            raise ValueError(f"--run-id {run_id!r} is not among the runs found: {', '.join(present)}")
    if not loaded.records:
        skipped = "".join(f" ({warning.message})" for warning in said)
        raise ValueError(f"no records in {', '.join(str(f) for f in loaded.files)}{skipped}")
    return loaded


def _load_runs(paths: Sequence[str | os.PathLike], run_id: str | None):
    """Records under ``paths`` (log roots searched at any depth), the run chosen with --run-id
    (only its lines decoded: one run of a sweep's directory), its runs, and what was loaded (for
    ``_say_runs``)."""
    loaded = load_records(paths, run_id)
    runs = [run_id] if run_id else loaded.runs
    return loaded.records, runs, loaded


def _say_runs(loaded, runs: Sequence[str], command: str) -> None:
    """The runs found, when there are several: said once the command has its output, so that an
    error is the one line it prints."""
    from greencallbacks.runs import describe_runs

    if len(runs) > 1:
        print(f"greencallbacks {command}: {len(runs)} runs found in {len(loaded.files)} records file(s) "
              "(choose one with --run-id):", file=sys.stderr)
        for line in describe_runs(loaded):
            print(f"  {line}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from greencallbacks import report
    from greencallbacks.estimate import intensity_for

    if args.plot is not None:
        from greencallbacks.report.plot import check_plot_path

        check_plot_path(args.plot, "--plot")  # a file that could not be written fails before the report is printed
    if args.format == "csv" and (args.compare_zones or args.equivalents):
        # CSV is the per-epoch table alone: they would be dropped in silence.
        given = [flag for flag, value in (("--compare-zones", args.compare_zones), ("--equivalents", args.equivalents))
                 if value]
        raise ValueError(f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} not in --format csv (the "
                         "table of epochs alone): use md, latex or json")
    for zone in args.compare_zones or ():
        intensity_for(zone)  # an unknown zone is the flag's error, before any records are read
    records, runs, loaded = _load_runs(args.paths, args.run_id)
    text = report.render(records, args.format, with_equivalents=args.equivalents, compare=args.compare_zones or (),
                         run_summaries=loaded.summaries, unfinished=loaded.unfinished)
    if args.plot is not None:
        # Drawn before the report is printed: records with no training epoch to plot printed the whole
        # report, then failed with exit 2 (`report ... --plot f.png > paper.md` kept a report and an error).
        report.plot_epochs(records, args.plot, loaded.unfinished)
    _say_runs(loaded, runs, "report")
    print(text, end="")
    if args.format == "csv":
        # The CSV is the table of epochs: a run that trained none (a validate or predict session)
        # has no row, and its header alone read as nothing measured.
        trained = {r.run_id for r in records if r.phase == "train" and r.epoch is not None}
        untrained = [run for run in runs if run not in trained]
        if untrained:
            print(f"greencallbacks report: run{'s' if len(untrained) > 1 else ''} {', '.join(untrained)} trained no "
                  "epoch, so no row of this table of epochs holds it: --format md or json gives its totals by phase",
                  file=sys.stderr)
    if args.plot is not None:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from greencallbacks.lifecycle import lifecycle
    from greencallbacks.textformat import printable
    from greencallbacks.units import J_PER_KWH

    search = load_records(args.search).records if args.search else []  # a flag's path, before the runs
    records, runs, loaded = _load_runs(args.paths, args.run_id)
    several = len(runs) > 1
    skipped: list[str] = []
    if args.run_id is None:
        # A log root may hold runs that trained nothing (a separate test or evaluate session): they
        # have no life cycle of their own, and must not stop the others'. --run-id naming one still fails.
        trained = {r.run_id for r in records if r.phase == "train"}
        skipped = [run for run in runs if run not in trained]
        if len(skipped) == len(runs):
            raise ValueError(f"no run with training records among {', '.join(skipped)}")
    cycles = [(run, lifecycle(records, search=search, run_id=run, unfinished=run in loaded.unfinished,
                              run_summaries=loaded.summaries))
              for run in runs if run not in skipped]
    for _, lc in cycles:
        totals = (lc.energy_j(args.inferences), lc.co2eq_g(args.inferences), lc.embodied_co2eq_g(args.inferences))
        if not all(math.isfinite(total) for total in totals if total is not None):
            raise ValueError(f"--inferences {args.inferences:g} is too large: the life cycle's energy or CO2eq "
                             "overflows (is past the largest number)")
    _say_runs(loaded, runs, "lifecycle")
    for run in skipped:
        print(f"greencallbacks lifecycle: run {printable(run)} has no training records (no training epoch: evaluation or "
              "prediction alone, or a tuner's trials): skipped", file=sys.stderr)
    if args.json:
        documents = [{"run_id": run, **lc.to_dict(inferences=args.inferences)} for run, lc in cycles]
        print(json.dumps(documents if several else documents[0], indent=2))
        return 0

    def num(value: float | None, unit: str = "") -> str:
        return "unknown" if value is None else f"{value:.4g}{unit}"

    blocks = []
    for run, lc in cycles:
        a, share = lc.overhead_factor, lc.overhead_share
        per_epoch = ", ".join(f"{j:.4g}" for j in lc.training_j_per_epoch)
        per_epoch = f"{per_epoch} J" if per_epoch else "none (no training epoch)"
        lines = [f"run {printable(run)}"] if several else []
        lines += [
            "I  inference:  " + ("unknown" if lc.inference_j_per_sample is None else
                                 f"{num(lc.inference_j_per_sample, ' J/sample')}, "
                                 f"{num(lc.inference_co2eq_g_per_sample, ' gCO2eq/sample')}")
            + (f" (measured in {lc.inference_phase})" if lc.inference_phase else ""),
            f"T  training:   {lc.training_j:.4g} J = {lc.training_j / J_PER_KWH:.4g} kWh, {lc.training_co2eq_g:.4g} gCO2eq "
            + (f"over {lc.epochs} epoch{'s' if lc.epochs != 1 else ''} x {_count_text(lc.samples_per_epoch)} samples"
               if lc.epochs else f"over no epoch ({_count_text(lc.samples_trained)} samples trained)")
            + " (training phases only)",
            f"               per epoch: {per_epoch}; per sample: {num(lc.training_j_per_sample, ' J')}",
            f"               whole run (all phases, T + V): {lc.run_total_j:.4g} J = {lc.run_total_j / J_PER_KWH:.4g} kWh",
            f"V  rest of run: {lc.run_other_j:.4g} J = {lc.run_other_j / J_PER_KWH:.4g} kWh, {lc.run_other_co2eq_g:.4g} gCO2eq "
            "(the trained run's validation, gaps and own test / predict)",
            f"a  overhead:   {num(a)} (training sample / inference); overhead share 1 - 1/a = "
            + ("unknown" if share is None else f"{share:.1%}"),
            f"CT search:     {lc.search_j:.4g} J = {lc.search_j / J_PER_KWH:.4g} kWh, {lc.search_co2eq_g:.4g} gCO2eq "
            f"over {lc.search_trials} trials",
            _lifecycle_line(lc, args.inferences),
            f"break-even e:  {num(lc.break_even_inferences, ' inferences')} (deployment then equals CT + T + V)",
        ]
        embodied = lc.embodied_co2eq_g(args.inferences)
        # Only where the records carry it (the hardware's manufacturing share), and the operational LC is known.
        if embodied is not None and lc.co2eq_g(args.inferences) is not None:
            lines.append(
                f"LC embodied:   {embodied:.4g} gCO2eq (manufacturing, apart from the operational "
                f"{lc.co2eq_g(args.inferences):.4g} g); operational + embodied = {lc.co2eq_g(args.inferences) + embodied:.4g} gCO2eq"
            )
        lines += [f"note: {note}" for note in lc.notes]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def _lifecycle_line(lc, inferences: int) -> str:
    """LC for ``inferences``; unknown where they are priced at an I that was never measured."""
    from greencallbacks.units import J_PER_KWH

    energy_j, co2eq_g = lc.energy_j(inferences), lc.co2eq_g(inferences)
    if energy_j is None or co2eq_g is None:
        return (f"LC for {_count_text(inferences)} inferences: unknown (I is unknown; without deployment, CT + T + V = "
                f"{lc.development_j / J_PER_KWH:.4g} kWh, {lc.co2eq_g(0):.4g} gCO2eq)")
    return (f"LC for {_count_text(inferences)} inferences: {energy_j / J_PER_KWH:.4g} kWh, {co2eq_g:.4g} gCO2eq "
            "(LC = CT + T + V + e x I)")


def _count_text(count: int | None) -> str:
    """A count exactly: ``1e+06`` as given in exponent form where that is exact, else every digit.
    To 4 significant digits, 12345 samples per epoch read "1.234e+04" and 1234567 inferences
    "1.23457e+06": figures a paper would quote rounded as if measured so."""
    if count is None:
        return "unknown"
    short = f"{count:g}"
    return short if float(short) == count else str(int(count))


def cmd_zones(args: argparse.Namespace) -> int:
    from greencallbacks.carbon import tables
    from greencallbacks.carbon.intensity import WORLD_AVERAGE_ZONE, other_country_names, usable, zone_intensity

    world = zone_intensity(WORLD_AVERAGE_ZONE)
    # --zone, not --country: "world" is no country, and --country refuses it.
    rows = [("--zone " + WORLD_AVERAGE_ZONE, "world average", world.g_per_kwh, world.year)]
    rows += [(f"--country {row.alpha2 or row.zone}", f"{row.name} ({row.zone})", row.g_per_kwh, row.year)
             if usable(row) else
             ("--intensity ...", f"{row.name} ({row.zone}): no usable figure ({row.g_per_kwh:g} in the source)", None, row.year)
             for row in sorted(tables.countries(), key=lambda r: r.zone)]
    rows += [(f"--zone {row.zone}", row.name, row.g_per_kwh, row.year) for row in sorted(tables.us_states(), key=lambda r: r.zone)]
    rows += [(f"--region {row.key}", row.location + ("" if row.g_per_kwh is not None else f" (grid of {row.zone})"),
              row.g_per_kwh, row.year) for row in sorted(tables.cloud_regions(), key=lambda r: r.key)]
    if args.search:
        # A country is found by the other names --country takes too ("England", "Burma").
        other_names = {f"--country {row.alpha2 or row.zone}": other_country_names(row) for row in tables.countries()}
        wanted = args.search.lower()
        rows = [row for row in rows if any(wanted in text.lower() for text in (row[0], row[1], *other_names.get(row[0], ())))]
        if not rows:
            raise ValueError(f"no zone matches --search {args.search!r}")
    if args.json:
        print(json.dumps([{"flag": f, "name": n, "g_per_kwh": g, "year": y} for f, n, g, y in rows], indent=2))
        return 0
    for flag, name, g, year in rows:
        value = f"{g:.0f} gCO2eq/kWh" if g is not None else "your grid's value" if flag.startswith("--intensity") else "its grid's value"
        print(f"{flag:<34} {value:>16}  {year or '':<4}  {name}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from greencallbacks.estimate import EstimateOverflowError, estimate, format_estimate

    if args.host_share is not None and args.embodied_host is None:
        # The share divides the host's manufacturing footprint: without it, it would divide nothing.
        raise ValueError("--host-share needs --embodied-host (it is the share of the host server's footprint billed)")
    gpu_only = [flag for flag, value in (("--gpus", args.gpus), ("--usage", args.usage)) if value is not None]
    if gpu_only and args.gpu is None and args.gpu_tdp is None:
        # They describe the GPUs: without one they were ignored, and the estimate said nothing of it.
        raise ValueError(f"{' and '.join(gpu_only)} need{'s' if len(gpu_only) == 1 else ''} --gpu or --gpu-tdp "
                         "(they describe the GPUs)")
    try:
        result = estimate(
            hours=args.hours,
            gpu=args.gpu,
            gpus=1 if args.gpus is None else args.gpus,
            gpu_tdp_w=args.gpu_tdp,
            usage=1.0 if args.usage is None else args.usage,
            cpu_cores=args.cpu_cores,
            cpu_w_per_core=args.cpu_w_per_core,
            cpu_tdp_w=args.cpu_tdp,
            memory_gb=args.memory_gb,
            compare=args.compare or (),
            embodied_host=args.embodied_host,
            host_share=1.0 if args.host_share is None else args.host_share,
            **_carbon_kwargs(args),
        )
    except EstimateOverflowError as error:
        raise ValueError(error.saying([_FLAGS.get(name, name) for name in error.arguments])) from None
    print(json.dumps(result, indent=2) if args.json else format_estimate(result))
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from greencallbacks.whatif import main as whatif_main

    return whatif_main(args.whatif_args)  # its own parser: `greencallbacks whatif --help`


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="greencallbacks",
        description="Energy and CO2eq of neural-network training, per epoch.",
    )
    parser.add_argument("--version", action="version", version=f"greencallbacks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    devices = sub.add_parser("devices", help="list the energy sensors found here, and why others are not usable")
    devices.add_argument("--json", action="store_true", help="machine-readable output")
    devices.set_defaults(func=cmd_devices)

    demo = sub.add_parser("demo", help="train a small model on synthetic data with the Lightning callback and report")
    demo.add_argument("--out", type=path_argument, default="greencallbacks-out", help="output directory (default greencallbacks-out)")
    demo.add_argument("--epochs", type=_positive_int, default=5, help="epochs to train (default 5)")
    _add_carbon_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser("report", help="per-epoch table and totals of recorded runs")
    rep.add_argument("paths", nargs="+", type=path_argument,
                     help="energy-records.jsonl files, or directories (log roots) searched for them at any depth")
    rep.add_argument("--run-id", help="report this run alone (default: every run found, grouped by configuration)")
    rep.add_argument("--format", choices=("md", "latex", "json", "csv"), default="md")
    # Kept as written: Path would drop the trailing slash of "dir.png/", which names a directory.
    rep.add_argument("--plot", metavar="FILE", type=path_argument,
                     help="also write a plot of energy per epoch and cumulative CO2eq (.png, .pdf or .svg)")
    rep.add_argument("--equivalents", action="store_true", help="add everyday equivalents (with their source)")
    rep.add_argument("--compare-zones", type=_comma_list, metavar="FR,DE,US-CA",
                     help="price the same energy at other zones or cloud regions")
    rep.set_defaults(func=cmd_report)

    life = sub.add_parser("lifecycle", help="life-cycle model: I, T, a, CT, LC and the break-even number of inferences")
    life.add_argument("paths", nargs="+", type=path_argument, help="records of the trained model (files or directories)")
    life.add_argument("--inferences", type=_whole_number, required=True, metavar="N",
                      help="expected inferences in deployment (e), a count: 1000000 or 1e6")
    life.add_argument("--search", nargs="+", type=path_argument, metavar="PATH", help="records of the search trials (CT)")
    life.add_argument("--run-id", help="which run in the records is the trained model (default: each run found)")
    life.add_argument("--json", action="store_true", help="machine-readable output")
    life.set_defaults(func=cmd_lifecycle)

    est = sub.add_parser("estimate", help="ex-ante estimate from hardware and hours (nothing is measured)")
    est.add_argument("--gpu", help="GPU model, e.g. 'H100 SXM', 'A100 PCIe 40GB', T4 (datasheet TDP)")
    est.add_argument("--gpu-tdp", type=_watts("MAX_DECLARED_W"), metavar="W",
                     help="GPU power in watts, for a GPU not in the table (up to 1,000,000)")
    est.add_argument("--gpus", type=_positive_int,
                     help="number of GPU devices as nvidia-smi / rocm-smi list them (a two-die MI250X or K80 board "
                          "is two), up to 1,000,000 (default 1)")
    est.add_argument("--hours", type=_positive_float, required=True, help="wall-clock hours")
    cpu = est.add_mutually_exclusive_group()
    cpu.add_argument("--cpu-tdp", type=_watts("MAX_CPU_TDP_W"), metavar="W",
                     help="CPU TDP in watts (all sockets, up to 10,000)")
    cpu.add_argument("--cpu-cores", type=_positive_int, help="CPU cores used")
    est.add_argument("--cpu-w-per-core", type=_positive_float, metavar="W", help="watts per core (default 10)")
    est.add_argument("--memory-gb", type=_non_negative_float, default=0.0, help="memory in GB, at 0.37 W/GB")
    est.add_argument("--usage", type=float, help="mean share of GPU TDP drawn, in (0, 1] (default 1)")
    est.add_argument("--compare", type=_comma_list, metavar="FR,DE,...",
                     help="the same energy at other zones or cloud regions")
    est.add_argument("--embodied-host", choices=["server"], help="also bill the host server's manufacturing footprint")
    est.add_argument("--host-share", type=_positive_float, metavar="SHARE",
                     help="with --embodied-host: share of the host the job occupies, in (0, 1] (default 1)")
    est.add_argument("--json", action="store_true", help="machine-readable output")
    _add_carbon_arguments(est)
    est.set_defaults(func=cmd_estimate)
    whatif = sub.add_parser(
        "whatif",
        add_help=False,
        help="what a recorded run would have emitted with a delayed start, pauses or in other regions",
    )
    whatif.add_argument("whatif_args", nargs=argparse.REMAINDER)
    whatif.set_defaults(func=cmd_whatif)

    zones = sub.add_parser("zones", help="the countries, US states and cloud regions with a shipped intensity")
    zones.add_argument("--search", metavar="TEXT", help="only those whose flag or name contains TEXT (any case)")
    zones.add_argument("--json", action="store_true", help="machine-readable output")
    zones.set_defaults(func=cmd_zones)
    return parser


# Python argument names that library messages use, as the flags that set them here.
_FLAGS = {
    "hours": "--hours", "gpu": "--gpu", "gpus": "--gpus", "gpu_tdp_w": "--gpu-tdp", "usage": "--usage",
    "cpu_cores": "--cpu-cores", "cpu_w_per_core": "--cpu-w-per-core", "cpu_tdp_w": "--cpu-tdp",
    "memory_gb": "--memory-gb", "country": "--country", "zone": "--zone", "region": "--region",
    "intensity": "--intensity", "pue": "--pue", "run_id": "--run-id", "inferences": "--inferences",
    "host_share": "--host-share", "embodied_host": "--embodied-host",
}


def cli_message(text: str, flags: dict[str, str] | None = None) -> str:
    """A library message in the command line's words: ``flags`` (default: this parser's) for
    argument names, the zones command for the Python function that lists zones."""
    flags = _FLAGS if flags is None else flags
    text = text.replace("greencallbacks.carbon.list_zones() lists them all", "`greencallbacks zones --search TEXT` lists them")
    text = text.replace("gpu_tdp_w= / --gpu-tdp", "--gpu-tdp")
    text = re.sub(r"(?<=got )(\w+(?: and \w+)+)",  # "got country and zone": flags given together
                  lambda m: " and ".join(flags.get(w, w) for w in m.group(1).split(" and ")), text)
    text = re.sub(r"\b(\w+)='([^']*)'", lambda m: f"{flags[m.group(1)]} {m.group(2)}" if m.group(1) in flags else m.group(0), text)
    text = re.sub(r"\b(\w+)=(\.\.\.)?", lambda m: flags.get(m.group(1), m.group(0)), text)
    text = re.sub(r"(?<![-\w'])(\w+)(?= must\b| needs\b| \(or\b)", lambda m: flags.get(m.group(1), m.group(0)), text)
    # Not a quoted name: "field 'run_id' is missing" is about a record's field, not a flag.
    return re.sub(r"(?<![-\w'])(gpu_tdp_w|cpu_tdp_w|cpu_cores|cpu_w_per_core|memory_gb|run_id|host_share)\b(?!')",
                  lambda m: flags.get(m.group(1), m.group(0)), text)


def path_argument(text: str) -> str:
    """A path argument, kept as written (a trailing slash names a directory): the empty one is
    refused, as Path("") is Path("."), and `report ""` would read the current directory, `demo --out ""`
    write into it."""
    if not text:
        raise argparse.ArgumentTypeError("must be a path, got '' (an empty path)")
    return text


def _number(text: str) -> float:
    """A number as float reads it, -0 as 0: "-0 gCO2eq/kWh" is no intensity anyone means. Its range
    is the library's to check (Carbon says it); what is no number is said here, or argparse would
    name this function ("invalid _number value")."""
    try:
        return float(text) + 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of gCO2eq/kWh, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _watts(bound: str):
    """A positive number of watts up to ``greencallbacks.sensors.estimate``'s ``bound``, the
    callbacks' own cap (looked up when the flag is given, so that --help imports nothing)."""

    def watts(text: str) -> float:
        import greencallbacks.sensors.estimate as sensor_estimates

        value, at_most = _positive_float(text), getattr(sensor_estimates, bound)
        if value > at_most:
            raise argparse.ArgumentTypeError(f"must be a positive number of watts up to {at_most:,.0f}, got {text!r}")
        return value

    return watts


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    # Compared as a number, so 0.00 and 0e0 are zero too; NaN fails both comparisons.
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value + 0.0  # -0.0 reads as 0


def _whole_number(text: str) -> int:
    """A count >= 0, written as an integer or in exponent form (1e6): a fractional one counts nothing."""
    value = _non_negative_float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (a count), got {text!r}")
    return int(value)


# The exit status of a command killed by SIGPIPE, as a shell reports it (128 + 13): what `cat` or
# `grep` give when the reader of their output goes away (`greencallbacks report ... | head`).
EXIT_BROKEN_PIPE = 141


class _ClosedStdout:
    """Standard output when it was closed (`greencallbacks report ... >&-`): Python then makes
    ``sys.stdout`` None and print() writes nowhere, so the output vanished with exit 0. Writing to
    this fails instead, said in one line as any error of writing it (a full disk) is, as cat does."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed: nowhere to write the output")

    def flush(self) -> None:
        pass


class _NoStderr:
    """Standard error when it was closed (`2>&-`): Python then makes ``sys.stderr`` None, and
    print(file=None) writes to stdout, so the notes went into a report's JSON or CSV. They are
    dropped instead: stdout carries the output alone."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    from greencallbacks.textformat import plain_where_needed

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    closed, no_stderr = sys.stdout is None, sys.stderr is None
    if closed:
        sys.stdout = _ClosedStdout()
    if no_stderr:
        sys.stderr = _NoStderr()
    try:
        # An ASCII stdout (PYTHONIOENCODING=ascii) writes "±" as "+/-": not an encoding error
        # once the work is done.
        with warnings.catch_warnings(), plain_where_needed(sys.stdout), plain_where_needed(sys.stderr):
            # A warning (a torn last line, records given twice) as one line, like the errors.
            warnings.showwarning = _one_line_warning(command)
            return _main(argv)
    except BrokenPipeError:
        # The reader of our output has gone (`| head`): stop quietly, as cat and grep do. Python
        # would report the pipe again when it flushes stdout at exit, so stdout goes to devnull.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real stdout (a captured one): nothing to flush
            pass
        return EXIT_BROKEN_PIPE
    finally:
        if closed:
            sys.stdout = None
        if no_stderr:
            sys.stderr = None


def _main(argv: list[str]) -> int:
    if argv[:1] == ["whatif"]:  # its own parser, options and help
        command, call = "whatif", lambda: cmd_whatif(argparse.Namespace(whatif_args=argv[1:]))
    else:
        args = build_parser().parse_args(argv)
        command, call = args.command, lambda: args.func(args)
    try:
        return call()
    except BrokenPipeError:
        raise  # not bad input: main stops quietly
    except (ValueError, OSError) as error:  # bad input or configuration: one line, no traceback
        _exit(2, f"greencallbacks {command}: error: {cli_message(str(error))}")
    except ModuleNotFoundError as error:  # an optional dependency (extras.missing says which)
        _exit(1, f"greencallbacks {command}: error: {error}")
    except Exception as error:  # noqa: BLE001 - a bug of ours: one line too, exit 1, not a traceback
        _exit(1, f"greencallbacks {command}: internal error: {type(error).__name__}: {error} "
                 "(a bug in greencallbacks; please report it with the command that gave it)")


def _exit(status: int, message: str) -> None:
    """Say ``message`` on stderr, in one line (a dependency's message may span several: matplotlib's
    parse errors point at a column on a line of their own), and exit with ``status``, as argparse's
    ``parser.exit`` does."""
    print(" ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
    raise SystemExit(status)


# What a dependency says of its own future (deprecations): addressed to whoever writes code
# against it, here the command's own code, so nothing a user of the command can act on.
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_ours(message, category: type, filename: str) -> bool:
    """A warning of greencallbacks: its own category, its own words, or raised at its own line
    (a deprecation raised there is a dependency's, about the dependency)."""
    return (
        category.__module__.split(".")[0] == "greencallbacks"
        or str(message).startswith("greencallbacks: ")
        or (os.path.abspath(filename).startswith(_PACKAGE_DIR) and not issubclass(category, _DEPRECATIONS))
    )


def _origin(filename: str) -> str:
    """The top-level package whose code raised a warning (``lightning``, ``torch``), else its file's name."""
    path = os.path.abspath(filename)
    for name, module in list(sys.modules.items()):
        module_file = getattr(module, "__file__", None)
        if module_file and os.path.abspath(module_file) == path:
            return name.split(".")[0]
    return os.path.basename(filename)


def _flags_of(command: str) -> dict[str, str]:
    """The long flags of ``command`` (a subcommand of ``build_parser``), by argument name; none where
    argparse's parsers no longer list their actions as they have since Python 2.7 (the warning is then
    shown as the library wrote it)."""
    try:
        commands = next((a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)), {})
        actions = commands[command]._actions if command in commands else []
    except AttributeError:
        return {}
    return {action.dest: flag for action in actions for flag in action.option_strings[-1:]
            if flag.startswith("--") and action.dest != "help"}


def _one_line_warning(command: str):
    """``warnings.showwarning`` for the command line: ``greencallbacks report: warning: ...``, one line.

    Only greencallbacks' own warnings speak as greencallbacks; another library's name it
    (``lightning: UserWarning: ...``). Its deprecations are left out unless warnings were asked
    for (``python -W``, ``PYTHONWARNINGS``).
    """
    prefix = f"greencallbacks {command}: " if command else "greencallbacks: "

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if _is_ours(message, category, filename):
            if text.startswith("greencallbacks: "):  # the library's own warnings already say who speaks
                text = text[len("greencallbacks: "):]
            # In this command's words, as its errors are: the demo's "Pass country=, zone=, ..."
            # names its --country, --zone, ...; a name it has no flag for stays as written.
            said = f"{prefix}warning: {cli_message(text, _flags_of(command))}"
        elif issubclass(category, _DEPRECATIONS) and not sys.warnoptions:
            return
        else:
            said = f"{_origin(filename)}: {category.__name__}: {text}"
        try:
            print(said, file=file or sys.stderr)
        except OSError:
            pass

    return show


if __name__ == "__main__":
    raise SystemExit(main())
