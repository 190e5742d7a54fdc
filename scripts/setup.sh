#!/usr/bin/env bash
# All set-up on a fresh machine, into the active virtual environment or the project's `.venv`
# (scripts/env.sh): the pinned CPU build of torch first (a plain `torch` requirement would download
# GBs of CUDA packages), then the package with every adapter, test and benchmark extra.
# Idempotent: a second run installs nothing new. The package is installed editable, so only a
# change to what is installed (pyproject.toml, this script) needs pip again: a stamp in the
# environment records what the last successful set-up installed, and pip's own check of a
# satisfied environment (minutes, with several indexes to ask) is skipped when it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
stamp="$GC_VENV/.greencallbacks-setup"
wanted="$(cat pyproject.toml scripts/setup.sh | "$GC_PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest(), sys.version.split()[0])') $(pwd)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -z "${GC_SETUP_FORCE:-}" ]; then
  echo "greencallbacks: using the virtual environment $GC_VENV (set up already; GC_SETUP_FORCE=1 reinstalls)" >&2
  exit 0
fi
echo "greencallbacks: setting up in the virtual environment $GC_VENV" >&2
rm -f "$stamp"
# -qq: errors still show; warnings (one per package for each configured index that lacks it)
# would bury them.
"$GC_PYTHON" -m pip install --quiet --quiet --disable-pip-version-check torch==2.13.0
"$GC_PYTHON" -m pip install --quiet --quiet --disable-pip-version-check -e ".[all,test,bench]"
# AMD SMI's Python binding, as source for the tests that hold the fake amdsmi to its names and
# checks (tests/test_sensors_amd.py): kept apart, as importing it needs ROCm's library.
"$GC_PYTHON" -m pip install --quiet --quiet --disable-pip-version-check --no-deps --upgrade \
  --target "$GC_VENV/reference/amdsmi" "amdsmi==7.0.2"
echo "$wanted" > "$stamp"
