"""The ``greencallbacks`` command: devices, demo, report.

Each sub-command imports what it needs when it runs, so ``greencallbacks --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from greencallbacks._version import __version__


def _add_carbon_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("carbon intensity (default: world average, said in every output)")
    group.add_argument("--country", help="ISO 3166 alpha-2 or alpha-3 code, e.g. FR or FRA")
    group.add_argument("--zone", help="sub-national zone: US state (US-CA) or eGRID subregion (CAMX)")
    group.add_argument("--region", help="cloud region, e.g. aws:us-east-1, gcp:europe-west1, azure:westeurope")
    group.add_argument("--intensity", type=float, help="gCO2eq/kWh, a number you know")
    group.add_argument("--pue", type=float, help="power usage effectiveness of the data centre (>= 1)")


def _carbon_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("country", "zone", "region", "intensity", "pue") if getattr(args, k) is not None}


def cmd_devices(args: argparse.Namespace) -> int:
    from greencallbacks.sensors.discover import discover_sensors

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
        print(f"  {s['name']:<16} {s['kind']:<6} {s['method']:<10} {s['scope']}{note}")
    if missing:
        print("\nNot available:")
        for u in missing:
            print(f"  {u['name']:<16} {u['kind']:<6} {u['reason']}")
            if u["fix"]:
                print(f"  {'':<16} {'':<6} fix: {u['fix']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from greencallbacks.demo import run_demo

    run_demo(args.out, epochs=args.epochs, **_carbon_kwargs(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from greencallbacks import report
    from greencallbacks.records import read_records

    records = read_records(args.paths)
    if not records:
        print("no records found", file=sys.stderr)
        return 1
    print(report.render(records, args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greencallbacks",
        description="Energy and CO2eq of neural-network training, per epoch.",
    )
    parser.add_argument("--version", action="version", version=f"greencallbacks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    devices = sub.add_parser("devices", help="list the energy sensors found here, and why others are not usable")
    devices.add_argument("--json", action="store_true", help="machine-readable output")
    devices.set_defaults(func=cmd_devices)

    demo = sub.add_parser("demo", help="train a small model on synthetic data with the Lightning callback and report")
    demo.add_argument("--out", type=Path, default=Path("greencallbacks-out"), help="output directory")
    demo.add_argument("--epochs", type=_positive_int, default=5, help="epochs to train (default 5)")
    _add_carbon_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser("report", help="per-epoch table and totals of recorded runs")
    rep.add_argument("paths", nargs="+", type=Path, help="energy-records.jsonl files or directories holding them")
    rep.add_argument("--format", choices=("md", "json", "csv"), default="md")
    rep.set_defaults(func=cmd_report)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # bad configuration: say what is valid, no traceback
        parser.exit(2, f"greencallbacks {args.command}: error: {error}\n")
    except FileNotFoundError as error:
        parser.exit(2, f"greencallbacks {args.command}: error: {error}\n")


if __name__ == "__main__":
    raise SystemExit(main())
