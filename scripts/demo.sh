#!/usr/bin/env bash
# The main job: set up, then train a small model with the Lightning callback and print the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec greencallbacks demo "$@"
