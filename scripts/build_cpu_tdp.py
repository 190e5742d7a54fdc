#!/usr/bin/env python3
"""Rebuild src/greencallbacks/data/cpu_tdp.csv (CPU TDP per socket) from CodeCarbon's table.

Upstream: codecarbon/data/hardware/cpu_power.csv in the codecarbon wheel (MIT licence,
Copyright (c) 2019 Mila, BCG Gamma, CometML, Haverford College). Downloaded with pip into a
temporary folder; nothing is installed. Pin the version below to refresh the numbers on purpose:

    python scripts/build_cpu_tdp.py                          # download and write the table
    python scripts/build_cpu_tdp.py --wheel codecarbon.whl   # use a wheel you already have

Derivation: names with their whitespace collapsed, rows with a non-positive or unreadable TDP
dropped, duplicate names kept once (the first), sorted by name. Line 1 is a '#' comment with the
source, version, licence and build date.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import zipfile
from datetime import date
from pathlib import Path

CODECARBON_VERSION = "3.3.2"
UPSTREAM_PATH = "codecarbon/data/hardware/cpu_power.csv"
OUTPUT = Path(__file__).resolve().parent.parent / "src" / "greencallbacks" / "data" / "cpu_tdp.csv"


def download_wheel(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"codecarbon=={CODECARBON_VERSION}", "--no-deps", "-d", str(work)],
        check=True,
    )
    return next(work.glob("codecarbon-*.whl"))


def derive_rows(upstream_csv: str) -> list[tuple[str, float]]:
    rows: dict[str, float] = {}
    for record in csv.DictReader(io.StringIO(upstream_csv)):
        name = " ".join((record.get("Name") or "").split())
        try:
            tdp_w = float(record.get("TDP") or "")
        except ValueError:
            continue
        if name and tdp_w > 0 and name not in rows:
            rows[name] = tdp_w
    return sorted(rows.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a codecarbon wheel already downloaded")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        version = wheel.name.split("-")[1]
        with zipfile.ZipFile(wheel) as archive:
            upstream = archive.read(UPSTREAM_PATH).decode("utf-8")
    rows = derive_rows(upstream)
    with open(args.output, "w", newline="", encoding="utf-8") as out:
        out.write(
            f"# CPU thermal design power per socket, watts; from CodeCarbon {version} {UPSTREAM_PATH} "
            "(https://github.com/mlco2/codecarbon), MIT licence, Copyright (c) 2019 Mila, BCG Gamma, "
            f"CometML, Haverford College; built {date.today().isoformat()} by scripts/build_cpu_tdp.py\n"
        )
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["model", "tdp_w"])
        for name, tdp_w in rows:
            writer.writerow([name, f"{tdp_w:g}"])
    print(f"wrote {len(rows)} CPUs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
