#!/usr/bin/env python3
"""Rebuild src/greencallbacks/data/cpu_tdp.csv (CPU TDP per socket) from CodeCarbon's table.

Upstream: codecarbon/data/hardware/cpu_power.csv in the codecarbon wheel (MIT licence,
Copyright (c) 2019 Mila, BCG Gamma, CometML, Haverford College). Downloaded with pip into a
temporary folder; nothing is installed. Pin the version below to refresh the numbers on purpose:

    python scripts/build_cpu_tdp.py                          # download and write the table
    python scripts/build_cpu_tdp.py --wheel codecarbon.whl   # use a wheel you already have

Derivation: names with their whitespace collapsed, rows with a non-positive or unreadable TDP
dropped, duplicate names kept once (the first), CORRECTED's figures put in (an upstream turbo power
where the rest of the table gives base power), then the rows of ADDED (custom cloud SKUs CodeCarbon
lacks), sorted by name. THREADS gives the hardware threads per socket of server parts whose names
carry no core count, so that a VM can be billed its vCPUs' share of its host's socket. Columns:
model, tdp_w, tdp_source (blank: CodeCarbon's), threads (blank: unknown), threads_source;
data/SOURCES.md cites each added fact. Line 1 is a '#' comment with the source, version, licence and build date.
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

INTEL_ARK = "Intel ARK"  # Intel's product specification pages, ark.intel.com
RETAIL_8480 = f"as Xeon Platinum 8480+ ({INTEL_ARK}: 56 cores, 112 threads, 2.0/3.8 GHz, 350 W)"
# Custom SKUs CodeCarbon lacks, given the figures of the retail part whose cores and clocks they
# have: (TDP per socket in watts, its source, hardware threads per socket, their source).
ADDED = {
    "Intel Xeon Platinum 8480C": (
        350.0, f"{RETAIL_8480}, whose cores and clocks the NVIDIA DGX H100 User Guide gives it",
        112, f"as Xeon Platinum 8480+ ({INTEL_ARK})",
    ),
    "Intel Xeon Platinum 8480CL": (
        350.0, f"{RETAIL_8480}, whose cores and clocks NVIDIA's DGX Cloud Benchmarking README gives it",
        112, f"as Xeon Platinum 8480+ ({INTEL_ARK})",
    ),
}
# Upstream figures that are not the part's base power, the rule of the rest of the table (TDP, or
# Intel's Processor Base Power since 12th-generation Core): (TDP per socket in watts, its source).
CORRECTED = {
    "Intel Core i5-1335U": (
        15.0, f"{INTEL_ARK}: Processor Base Power 15 W (CodeCarbon gives 55 W, its Maximum Turbo Power)",
    ),
    "Intel Core i7-12700K": (
        125.0, f"{INTEL_ARK}: Processor Base Power 125 W (CodeCarbon gives 190 W, its Maximum Turbo Power)",
    ),
    "Intel Core i7-1270P": (
        28.0, f"{INTEL_ARK}: Processor Base Power 28 W (CodeCarbon gives 64 W, its Maximum Turbo Power)",
    ),
}
# Hardware threads per socket (Intel ARK) of GPU-server parts whose names carry no core count.
THREADS = {
    "Intel Xeon Platinum 8358": 64,
    "Intel Xeon Platinum 8380": 80,
    "Intel Xeon Platinum 8462Y+": 64,
    "Intel Xeon Platinum 8468": 96,
    "Intel Xeon Platinum 8470": 104,
    "Intel Xeon Platinum 8480+": 112,
}


def download_wheel(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"codecarbon=={CODECARBON_VERSION}", "--no-deps", "-d", str(work)],
        check=True,
    )
    return next(work.glob("codecarbon-*.whl"))


def derive_rows(upstream_csv: str) -> list[tuple[str, float, str, int | None, str]]:
    """(model, TDP per socket, its source if not CodeCarbon's, threads per socket or None, their source)."""
    rows: dict[str, tuple[float, str, int | None, str]] = {}
    for record in csv.DictReader(io.StringIO(upstream_csv)):
        name = " ".join((record.get("Name") or "").split())
        try:
            tdp_w = float(record.get("TDP") or "")
        except ValueError:
            continue
        if name and tdp_w > 0 and name not in rows:
            threads = THREADS.get(name)
            rows[name] = (tdp_w, "", threads, INTEL_ARK if threads else "")
    for name, (tdp_w, tdp_source) in CORRECTED.items():
        if name not in rows or rows[name][0] == tdp_w:
            raise SystemExit(f"{name} is no longer in CodeCarbon's table, or corrected there: drop it from CORRECTED")
        rows[name] = (tdp_w, tdp_source, *rows[name][2:])
    for name, row in ADDED.items():
        if name in rows:
            raise SystemExit(f"{name} is in CodeCarbon's table now: drop it from ADDED")
        rows[name] = row
    missing = set(THREADS) - set(rows)
    if missing:
        raise SystemExit(f"THREADS names CPUs CodeCarbon's table lacks: {sorted(missing)}")
    return [(name, *row) for name, row in sorted(rows.items())]


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
            f"CometML, Haverford College; with {len(ADDED)} custom cloud SKUs, {len(CORRECTED)} figure(s) corrected to "
            f"base power and the threads per socket of "
            f"{len(THREADS)} server parts added (their source columns; data/SOURCES.md); built "
            f"{date.today().isoformat()} by scripts/build_cpu_tdp.py\n"
        )
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["model", "tdp_w", "tdp_source", "threads", "threads_source"])
        for name, tdp_w, tdp_source, threads, threads_source in rows:
            writer.writerow([name, f"{tdp_w:g}", tdp_source, threads or "", threads_source])
    print(f"wrote {len(rows)} CPUs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
