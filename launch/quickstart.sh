#!/usr/bin/env bash
# The newcomer's first command: install, prepare MovieLens-100K (all five sources; offline from the recbole
# wheel), train the fused model on CPU with early stopping on validation NDCG@10, then evaluate the best
# checkpoint once on the test split and print the metrics, the TensorBoard folder and the checkpoint.
#   bash launch/quickstart.sh                 # extra arguments go to `fusionrec fit`, e.g. --trainer.max_epochs 5
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
.venv/bin/fusionrec data prepare configs/data/ml100k.yaml
exec .venv/bin/fusionrec fit --config configs/ml100k.yaml --test_after_fit true "$@"
