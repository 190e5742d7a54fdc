#!/usr/bin/env bash
# Set up, then run the test suite (no GPU, no network needed) with the project's interpreter
# (scripts/env.sh: the active virtual environment or `.venv`). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
export WANDB_MODE=offline WANDB_SILENT=true TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1
exec "$GC_PYTHON" -m pytest -q "$@"
