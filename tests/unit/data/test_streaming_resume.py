"""ResumableLoader: exact mid-epoch resume, also at another world size or worker count; epoch rules."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from data_modules.resumable import ResumableLoader
from data_modules.streaming import TrainStream
from tests.helpers.tiny_dataset import TinyDataset, write_tiny_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TinyDataset:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def loader(
    data: TinyDataset, *, rank: int = 0, world_size: int = 1, num_workers: int = 0, **kw
) -> ResumableLoader:
    args = (
        dict(
            global_batch_size=60,
            history_len=5,
            num_negatives=3,
            negative_sampler="popularity",
            seed=11,
            buffer_blocks=3,
        )
        | kw
    )
    stream = TrainStream(data.root, rank=rank, world_size=world_size, **args)
    return ResumableLoader(DataLoader(stream, batch_size=None, num_workers=num_workers))


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) or torch.allclose(x[k], y[k], equal_nan=True), k


def merge_ranks(per_rank: list[list[dict[str, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
    """Global batches from per-rank batches: rank 0's rows, then rank 1's."""
    return [{k: torch.cat([b[k] for b in group]) for k in group[0]} for group in zip(*per_rank)]


def take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("k", [1, 7, 15])  # 16 global batches of 60; windows hold 150 rows
def test_resume_at_another_world_size_and_worker_count_is_exact(data, k):
    full = list(loader(data))
    first = loader(data)
    head = take(iter(first), k)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["batches_done"] == k
    rest = []
    for rank in (0, 1):
        resumed = loader(data, rank=rank, world_size=2, num_workers=2)
        resumed.load_state_dict(state)
        rest.append(list(resumed))
        assert resumed.state_dict()["batches_done"] == len(resumed) == 16
    assert_same(head + merge_ranks(rest), full)


def test_resume_from_two_ranks_with_workers_to_one_process(data):
    full = list(loader(data))
    states, heads = [], []
    for rank in (0, 1):
        part = loader(data, rank=rank, world_size=2, num_workers=2)
        heads.append(take(iter(part), 5))
        states.append(part.state_dict())
    assert states[0]["batches_done"] == states[1]["batches_done"] == 5
    resumed = loader(data, num_workers=2)
    resumed.load_state_dict(states[0])
    assert_same(merge_ranks(heads) + list(resumed), full)


def test_each_iter_after_a_completed_epoch_starts_the_next(data):
    one = loader(data)
    epoch0, epoch1 = list(one), list(one)
    assert one.epoch == 1 and one.batches_done == len(one)
    stream = TrainStream(
        data.root,
        global_batch_size=60,
        history_len=5,
        num_negatives=3,
        negative_sampler="popularity",
        seed=11,
        buffer_blocks=3,
    )
    stream.set_epoch(1)
    assert_same(epoch1, list(stream))
    assert not torch.equal(epoch0[0]["user"], epoch1[0]["user"])


def test_an_abandoned_iteration_is_continued_and_set_epoch_keeps_a_loaded_position(data):
    full = list(loader(data))
    one = loader(data)
    head = take(iter(one), 4)
    assert_same(head + list(one), full)  # the second iter() continues at batch 4
    two = loader(data)
    two.load_state_dict({**one.state_dict(), "epoch": 0, "batches_done": 9})
    two.set_epoch(0)  # same epoch: keeps batches_done
    assert_same(list(two), full[9:])
    two.set_epoch(3)
    assert (two.epoch, two.batches_done) == (3, 0)


def test_a_state_with_other_batch_size_or_seed_is_refused(data):
    state = loader(data).state_dict()
    with pytest.raises(ValueError, match="global_batch_size=60"):
        loader(data, global_batch_size=30).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=11"):
        loader(data, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="persistent_workers"):
        stream = TrainStream(data.root, global_batch_size=60)
        ResumableLoader(DataLoader(stream, batch_size=None, num_workers=1, persistent_workers=True))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_checkpoints_the_position_and_resumes_exactly(data, tmp_path):
    """Lightning finds state_dict/load_state_dict by duck typing; a mid-epoch checkpoint taken with no
    workers resumes with 2 workers and the trained batches are those of an uninterrupted run."""
    pl = pytest.importorskip("pytorch_lightning")

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(60, 2)
            self.seen: list[tuple[int, list[int]]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["user"].tolist()))
            return self.emb(batch["item"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(model, num_workers, ckpt_path=None, **kw):
        trainer = pl.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **kw,
        )
        train = loader(data, global_batch_size=100, num_workers=num_workers)
        trainer.fit(model, train_dataloaders=train, ckpt_path=ckpt_path)

    full, head, tail = Recorder(), Recorder(), Recorder()
    fit(full, 0, enable_checkpointing=False)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=13, save_top_k=-1)
    fit(head, 0, max_steps=13, callbacks=[checkpoint])
    (path,) = tmp_path.glob("*.ckpt")
    state = torch.load(path, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["epoch"] == 1 and state[0]["batches_done"] == 3
    fit(tail, 2, enable_checkpointing=False, ckpt_path=path)
    assert len(full.seen) == 20 and head.seen + tail.seen == full.seen
