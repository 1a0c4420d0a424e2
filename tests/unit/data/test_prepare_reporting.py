"""What preparation says about itself: one log line per stage with rows/s, and a split recorded as it was done
(a leave-one-out split has no ratios, no seed and is in time order, not random)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data_modules.manifest import format_manifest
from data_modules.prepare.config import PrepareConfig, SplitConfig
from data_modules.prepare.pipeline import prepare

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


def test_each_protocol_records_only_what_it_used():
    assert SplitConfig(protocol="leave_one_out").effective() == {"protocol": "leave_one_out", "order": "time"}
    assert SplitConfig(protocol="temporal").effective() == {"protocol": "temporal", "ratios": [0.8, 0.1, 0.1], "order": "time"}
    assert SplitConfig(protocol="ratio", order="time").effective() == {"protocol": "ratio", "ratios": [0.8, 0.1, 0.1], "order": "time"}
    assert SplitConfig(protocol="recbole", seed=7).effective() == {"protocol": "recbole", "ratios": [0.8, 0.1, 0.1],
                                                                   "order": "random", "seed": 7}
    assert SplitConfig(protocol="presplit").effective() == {"protocol": "presplit"}


def test_leave_one_out_preparation_logs_each_stage_and_no_ratios(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(REPO)  # the config's input path is relative to the repository
    cfg = PrepareConfig.from_yaml(REPO / "configs" / "data" / "tiny.yaml")
    cfg.split = SplitConfig(protocol="leave_one_out")
    cfg.output.dir = str(tmp_path / "loo")
    with caplog.at_level(logging.INFO, logger="fusionrec.prepare"):
        res = prepare(cfg)
    stages = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("stage ")]
    assert stages == ["read", "clean", "filter", "split", "index", "tokenize", "write"], caplog.text
    assert all("/s)" in r.getMessage() for r in caplog.records if r.getMessage().startswith("stage "))
    m = res.manifest
    assert m["split"]["protocol"] == "leave_one_out" and m["split"]["order"] == "time"
    assert "ratios" not in m["split"] and "seed" not in m["split"]
    assert m["config"]["split"] == {"protocol": "leave_one_out", "order": "time"}
    (line,) = [ln for ln in format_manifest(m, res.path).splitlines() if ln.startswith("split")]
    assert "ratios" not in line and "seed" not in line and "order=time" in line, line
