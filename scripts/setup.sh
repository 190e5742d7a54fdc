#!/usr/bin/env bash
# All set-up on a fresh machine: the pinned CPU build of torch first (a plain `torch` requirement
# would download GBs of CUDA packages), then the package with every adapter, test and benchmark extra.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e ".[all,test,bench]"
