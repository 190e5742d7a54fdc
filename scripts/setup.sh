#!/usr/bin/env bash
# All set-up on a fresh machine, into the active virtual environment or the project's `.venv`
# (scripts/env.sh): the pinned CPU build of torch first (a plain `torch` requirement would download
# GBs of CUDA packages), then the package with every adapter, test and benchmark extra.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
"$GC_PYTHON" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$GC_PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[all,test,bench]"
