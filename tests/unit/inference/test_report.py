"""`fusionrec report` on run folders written here with a TensorBoard SummaryWriter (no training): the best step by
the monitored metric and its mode, a comparison of several runs, popularity bias against hand-computed values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trainer.cli import main as cli
from trainer.inference.run_data import find_runs, labels, popularity, read_run

pytestmark = pytest.mark.unit


def write_run(folder: Path, val: dict[int, dict[str, float]], test: dict[str, float] | None = None,
              monitor: str | None = "val/ndcg@10", mode: str = "max") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    w = SummaryWriter(str(folder))
    for step in range(10):
        w.add_scalar("train/loss", 5.0 - 0.3 * step, step)
        w.add_scalar("perf/examples_per_s", 1000.0 + step, step)
    for step, metrics in val.items():
        for k, v in metrics.items():
            w.add_scalar(f"val/{k}", v, step)
        w.add_scalar("gates/user_id", 0.4, step)
        w.add_scalar("gates/user_text", 0.6, step)
    for k, v in (test or {}).items():
        w.add_scalar(f"test/{k}", v, 10)
    w.close()
    if monitor:
        cb = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"monitor": monitor, "mode": mode}}
        (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [cb]}, "data": {"dataset_dir": "nowhere"}}))
    return folder


VAL = {3: {"ndcg@10": 0.20, "recall@10": 0.30}, 6: {"ndcg@10": 0.25, "recall@10": 0.28}, 9: {"ndcg@10": 0.22, "recall@10": 0.35}}


def test_best_step_follows_the_monitor_and_its_mode(tmp_path):
    r = read_run(write_run(tmp_path / "a" / "version_0", VAL), "a")
    assert (r.monitor, r.mode, r.best_step) == ("val/ndcg@10", "max", 6)
    assert r.valid == pytest.approx({"ndcg@10": 0.25, "recall@10": 0.28})  # every metric at the best step
    r = read_run(write_run(tmp_path / "b" / "version_0", VAL, monitor="val/recall@10", mode="min"), "b")
    assert r.best_step == 6 and r.valid["recall@10"] == pytest.approx(0.28)
    r = read_run(write_run(tmp_path / "c" / "version_0", VAL, monitor=None), "c")
    # no config: val/ndcg (max) assumed; not logged here, so the last validation is shown, and the page says both
    assert r.best_step == 9 and r.valid["ndcg@10"] == pytest.approx(0.22)
    assert any("no config.yaml" in n for n in r.notes) and any("val/ndcg was not logged" in n for n in r.notes)


def test_comparison_page_has_the_bar_chart_a_row_per_metric_and_the_best_in_bold(tmp_path, capsys):
    a = write_run(tmp_path / "runs" / "a" / "version_0", VAL, {"ndcg@10": 0.21, "recall@10": 0.33})
    write_run(tmp_path / "runs" / "b" / "version_0", {3: {"ndcg@10": 0.30, "recall@10": 0.25}}, {"ndcg@10": 0.18})
    assert find_runs([tmp_path / "runs"]) == [a, tmp_path / "runs" / "b" / "version_0"]  # a folder above runs
    assert labels(find_runs([tmp_path / "runs"])) == ["a/version_0", "b/version_0"]
    assert cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert f"report: {tmp_path / 'out' / 'index.html'}" in capsys.readouterr().out
    assert [alt for alt in re.findall(r'alt="([^"]+)"', page)] == ["curves.png", "comparison.png", "gates.png"]
    rows = dict(re.findall(r"<tr><td>(ndcg@10|recall@10)</td>(.*?)</tr>", page))
    # columns: a val, a test, b val, b test; the best run per metric and split in bold, a missing value as "-"
    assert rows["ndcg@10"] == ("<td>0.2500</td><td class=best>0.2100</td><td class=best>0.3000</td><td>0.1800</td>")
    assert rows["recall@10"] == ("<td class=best>0.2800</td><td class=best>0.3300</td><td>0.2500</td><td>-</td>")
    assert "no predictions/rank-*.parquet" in page  # says what popularity bias needs
    assert "Popularity bias" not in page


def test_popularity_bias_against_hand_computed_values():
    pop = np.array([5, 50, 0, 7, 30, 1, 2, 9, 3, 4])  # training interactions per dense index, 10 items
    item_ids = np.array([f"i{i}" for i in range(10)], dtype=object)
    # most popular first: 1 (50), 4 (30) are the head (20% of 10 items); the rest is the long tail
    frame = pd.DataFrame({"user": ["u1"] * 3 + ["u2"] * 3, "rank": [1, 2, 3] * 2,
                          "item": ["i1", "i4", "i7", "i1", "i0", "i2"]})
    p = popularity(frame, pop, item_ids)
    assert (p.k, p.users, p.n_items) == (3, 2, 10)
    assert p.coverage == pytest.approx(5 / 10)  # i1 i4 i7 i0 i2
    assert p.tail_share == pytest.approx(3 / 6)  # i7 i0 i2
    assert p.catalog_tail_share == pytest.approx(31 / 111)
    assert p.mean_rec_popularity == pytest.approx((50 + 30 + 9 + 50 + 5 + 0) / 6)
    # 10 items: one per decile, in popularity order 1, 4, 7, 3, 0, 9, 8, 6, 5, 2
    assert p.decile_share.tolist() == pytest.approx([2 / 6, 1 / 6, 1 / 6, 0, 1 / 6, 0, 0, 0, 0, 1 / 6])
    assert p.train_decile_share.tolist() == pytest.approx([x / 111 for x in (50, 30, 9, 7, 5, 4, 3, 2, 1, 0)])
    with pytest.raises(KeyError, match="nope"):
        popularity(frame.assign(item="nope"), pop, item_ids)


def test_a_folder_without_event_files_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs([tmp_path / "missing"])
