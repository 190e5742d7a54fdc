#!/usr/bin/env bash
# The main job: set up, then train a small model with the Lightning callback and print the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
exec "$GC_PYTHON" -m greencallbacks demo "$@"
