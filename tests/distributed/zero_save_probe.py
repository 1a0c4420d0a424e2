"""Save a real DeepSpeed ZeRO checkpoint folder from a tiny model, for tests/distributed/test_zero_consolidation.py.

    torchrun --standalone --nproc_per_node 2 zero_save_probe.py STAGE OUT

One optimizer step of a small embedding + linear model under ZeRO-STAGE over gloo, then `save_checkpoint` with
Lightning's tag (`checkpoint`) and a client state like Lightning's (`epoch`, `fusionrec_dataset`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from trainer.engine.strategies import _without_shm_comm_op  # noqa: E402


def main(stage: int, out: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 5))
    with _without_shm_comm_op():
        deepspeed.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.1),
                                      config=config)
    rank = int(os.environ.get("RANK", 0))
    loss = engine(torch.tensor([rank, rank + 3])).pow(2).sum()
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(out, tag="checkpoint", client_state={"epoch": 1, "fusionrec_dataset": {"fingerprint": "f"}})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
