#!/usr/bin/env bash
# Run `fusionrec` under torchrun: one node, or several nodes joined by a c10d rendezvous.
#
#   bash launch/torchrun.sh fit --config configs/ml100k.yaml --strategy_name ddp
#   NPROC_PER_NODE=4 bash launch/torchrun.sh fit --config configs/ml100k.yaml --strategy_name deepspeed_stage_2
#   # two nodes: run this on each node, same RDZV_ENDPOINT (a host:port node 1 can reach, e.g. node 0's)
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29400 RDZV_ID=exp1 bash launch/torchrun.sh fit --config ...
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29400 RDZV_ID=exp1 bash launch/torchrun.sh fit --config ...
#
# Environment (all optional):
#   NPROC_PER_NODE  processes on this node           [number of GPUs; 2 on a machine without CUDA]
#   NNODES          nodes in the job                  [1]
#   NODE_RANK       this node's rank, 0..NNODES-1     [0] (the c10d rendezvous may order nodes itself; global
#                   rank 0, which writes checkpoints and logs, is whichever node the rendezvous makes it)
#   RDZV_ENDPOINT   host:port of the c10d rendezvous  [one node: torchrun --standalone picks a free port;
#                   several nodes: required]
#   RDZV_ID         job id shared by all nodes        [fusionrec]
#   MAX_RESTARTS    restarts of the whole worker group after a failure [0]; add --ckpt_path last to the
#                   arguments so a restarted group resumes instead of starting over
#   LOCAL_ADDR      address other nodes reach this node by [looked up from the hostname]
#   ACCELERATOR     trainer.accelerator               [gpu with CUDA, else cpu]
#   PYTHON          interpreter                       [the repo's .venv/bin/python, else python3]
# Arguments go to `fusionrec` (python -m trainer.cli) unchanged, followed by --trainer.accelerator $ACCELERATOR
# --trainer.devices $NPROC_PER_NODE --trainer.num_nodes $NNODES, which keep Lightning's view equal to torchrun's
# (Lightning reads torchrun's env through TorchElasticEnvironment and refuses a mismatch); they come last because
# a --config after them would override them. Relative paths are taken from the current folder, as with
# `fusionrec` itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then
  NPROC_PER_NODE="${NPROC_PER_NODE:-$GPUS}"; ACCELERATOR="${ACCELERATOR:-gpu}"
else
  NPROC_PER_NODE="${NPROC_PER_NODE:-2}"; ACCELERATOR="${ACCELERATOR:-cpu}"
fi
NNODES="${NNODES:-1}"
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  RDZV=(--nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --rdzv_backend c10d
        --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-fusionrec}")
elif [ "$NNODES" = 1 ]; then
  RDZV=(--standalone --nnodes 1)
else
  echo "torchrun.sh: NNODES=$NNODES needs RDZV_ENDPOINT=host:port (reachable from every node)" >&2; exit 2
fi
if [ -n "${LOCAL_ADDR:-}" ]; then RDZV+=(--local_addr "$LOCAL_ADDR"); fi
# CPU ranks share the cores: one intra-op thread each instead of oversubscribing
if [ "$ACCELERATOR" = cpu ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

SUBCOMMAND="$1"; shift
set -x
exec "$PY" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node "$NPROC_PER_NODE" \
  --max_restarts "${MAX_RESTARTS:-0}" \
  -m trainer.cli "$SUBCOMMAND" "$@" \
  --trainer.accelerator "$ACCELERATOR" --trainer.devices "$NPROC_PER_NODE" --trainer.num_nodes "$NNODES"
