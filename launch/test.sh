#!/usr/bin/env bash
# Install everything (Python packages; as root also Slurm + munge + Chromium from Debian: launch/system_deps.sh),
# then run the whole test suite: unit, distributed (2 gloo CPU ranks) and e2e tiers, as CI does.
#   bash launch/test.sh            # extra pytest arguments pass through, e.g. -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/system_deps.sh
bash launch/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check trainer data_modules tests
exec .venv/bin/python -m pytest "$@"
