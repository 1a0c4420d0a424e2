#!/usr/bin/env bash
# TensorBoard over a runs folder (the configs' TensorBoardLogger save_dir; `fusionrec fit` prints the exact one).
#   bash launch/tensorboard.sh [LOGDIR]          # LOGDIR [runs], PORT [6006], served on all interfaces
#   HOST=127.0.0.1 PORT=6007 bash launch/tensorboard.sh runs/ml100k
# On a cluster node, forward the port: ssh -L 6006:NODE:6006 LOGIN_HOST, then open http://localhost:6006.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TB="${TENSORBOARD:-$( [ -x "$ROOT/.venv/bin/tensorboard" ] && echo "$ROOT/.venv/bin/tensorboard" || echo tensorboard )}"
LOGDIR="${1:-runs}"
[ -d "$LOGDIR" ] || { echo "tensorboard.sh: no such folder: $LOGDIR (train first: fusionrec fit --config ...)" >&2; exit 2; }
if [ -n "${HOST:-}" ]; then BIND=(--host "$HOST"); else BIND=(--bind_all); fi
exec "$TB" --logdir "$LOGDIR" --port "${PORT:-6006}" "${BIND[@]}"
