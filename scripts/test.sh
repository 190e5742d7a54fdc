#!/usr/bin/env bash
# Set up, then run the whole test suite (no GPU, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1
exec python3 -m pytest -q "$@"
