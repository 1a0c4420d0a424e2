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
#   MAX_RESTARTS    restarts of the whole worker group after a failure [0]; a restarted `fit` resumes (below)
#   RUN_DIR         where a restarted `fit` looks for checkpoints [--trainer.default_root_dir from the arguments,
#                   else runs/<stem of the last --config>, the configs' TensorBoardLogger folder]
#   LOCAL_ADDR      address other nodes reach this node by [looked up from the hostname]
#   ACCELERATOR     trainer.accelerator               [gpu with CUDA, else cpu]
#   PYTHON          interpreter                       [the repo's .venv/bin/python, else python3]
# Arguments go to `fusionrec` (python -m trainer.cli) unchanged, followed by --trainer.accelerator $ACCELERATOR
# --trainer.devices $NPROC_PER_NODE --trainer.num_nodes $NNODES, which keep Lightning's view equal to torchrun's
# (Lightning reads torchrun's env through TorchElasticEnvironment and refuses a mismatch); they come last because
# a --config after them would override them. Relative paths are taken from the current folder, as with
# `fusionrec` itself.
#
# Elastic restarts: when a worker fails, torchrun kills the others and starts the whole group again with the same
# command, so that command must decide to resume, not this script's first run. torchrun therefore runs this very
# script once per rank (`--no-python bash torchrun.sh --worker ...`), which execs `python -m trainer.cli`. On a
# restart (TORCHELASTIC_RESTART_COUNT > 0) of `fit`, it appends --ckpt_path with the newest last*.ckpt under
# RUN_DIR written since this launch, a file or a DeepSpeed checkpoint folder (an explicit path: `--ckpt_path last`
# only looks in the new logger version's folder); appended last, it supersedes a --ckpt_path in the arguments,
# which would replay the progress since.
# Only on restarts, and only this launch's checkpoints: a fresh launch does what its arguments say (resubmission
# resumes with launch/slurm.sbatch, or pass --ckpt_path), and a run dir reused from an older job is never resumed.
# Needs a ModelCheckpoint with save_last (the configs have one); all ranks read the same file, as nothing writes
# while the group is down (several nodes: RUN_DIR on a shared filesystem).
set -euo pipefail
# The newest complete checkpoint under $1 (optionally only those completed after unix time $2): a Lightning
# checkpoint file, or a DeepSpeed checkpoint folder (ZeRO saves `last.ckpt` / `hpc_ckpt_N.ckpt` as a folder). fusionrec
# writes a folder's fusionrec-checksums.sha256 after all its files, so its time is when the checkpoint was complete; a
# folder without one (a save cut short) or with a file failing its checksum (truncated, damaged) is skipped, with a
# line on stderr, and the next newest is taken.
newest_checkpoint() {
  local newer=() p stamp t
  if [ -n "${2:-}" ]; then newer=(-newermt "@$2"); fi
  find "$1" \( -type f -o -type d \) \( -name 'last*.ckpt' -o -name 'hpc_ckpt_*.ckpt' \) -prune -print 2>/dev/null \
    | while read -r p; do
        stamp="$p"; if [ -d "$p" ]; then stamp="$p/fusionrec-checksums.sha256"; fi
        if [ ! -f "$stamp" ]; then echo "skipping $p: no fusionrec-checksums.sha256 (its save did not finish)" >&2; continue; fi
        t=$(find "$stamp" ${newer[@]+"${newer[@]}"} -printf '%T@')
        if [ -n "$t" ]; then echo "$t $p"; fi
      done | sort -rn | while read -r t p; do
        if [ -d "$p" ] && ! (cd "$p" && sha256sum --status --strict -c fusionrec-checksums.sha256 2>/dev/null); then
          echo "skipping $p: a file in it fails its checksum (truncated or damaged)" >&2; continue
        fi
        echo "$p"; break
      done
}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

if [ "$1" = --worker ]; then  # one rank, started (or restarted) by torchrun; see "Elastic restarts" above
  shift; prev="" CONFIG="" ARG_ROOT=""
  for a in "$@"; do
    case "$prev" in --config) CONFIG="$a" ;; --trainer.default_root_dir) ARG_ROOT="$a" ;; esac
    case "$a" in --config=*) CONFIG="${a#*=}" ;; --trainer.default_root_dir=*) ARG_ROOT="${a#*=}" ;; esac
    prev="$a"
  done
  RUN_DIR="${RUN_DIR:-${ARG_ROOT:-runs/$(basename "${CONFIG%.*}")}}"
  if [ "$1" = fit ] && [ "${TORCHELASTIC_RESTART_COUNT:-0}" -gt 0 ]; then
    RESUME=$(newest_checkpoint "$RUN_DIR" "${FUSIONREC_LAUNCHED:-0}") || true
    MSG="torchrun.sh: rank ${RANK:-?}, restart $TORCHELASTIC_RESTART_COUNT:"
    if [ -n "$RESUME" ]; then echo "$MSG resuming with --ckpt_path $RESUME" >&2; set -- "$@" --ckpt_path "$RESUME"
    else echo "$MSG no checkpoint of this launch in $RUN_DIR; starting over" >&2; fi
  fi
  exec "$PY" -m trainer.cli "$@"
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

export FUSIONREC_LAUNCHED="$(date +%s.%N)"  # restarts resume only checkpoints newer than this
# by default the agent's rendezvous TCPStore outlives a restart and the new workers' process group reads the dead
# ones' keys: a restart then hangs in gloo's connect or fails (pytorch/pytorch#135712); a fresh store each round
if [ "${MAX_RESTARTS:-0}" -gt 0 ]; then export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"; fi
SUBCOMMAND="$1"; shift
set -x
exec "$PY" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node "$NPROC_PER_NODE" \
  --max_restarts "${MAX_RESTARTS:-0}" \
  --no-python "$BASH" "$ROOT/launch/torchrun.sh" --worker "$SUBCOMMAND" "$@" \
  --trainer.accelerator "$ACCELERATOR" --trainer.devices "$NPROC_PER_NODE" --trainer.num_nodes "$NNODES"
