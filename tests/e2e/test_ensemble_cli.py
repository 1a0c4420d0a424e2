"""`fusionrec ensemble` on two real tiny checkpoints: each member scored by the ensemble equals `fusionrec test` of
that checkpoint, the weights fitted on validation are never worse there than the best member, and bad input is a
clear error."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.e2e.test_export import ENV, REPO, TINY

pytestmark = pytest.mark.e2e


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=200)
    if ok:
        assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return p


def _printed(log: str, split: str) -> dict[str, float]:
    return {m: float(v) for m, v in re.findall(rf"{split}/(\w+@\d+)\s+([0-9.]+)", log)}


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    common = ["--config", str(TINY), "--data.dataset_dir", str(root / "data"), "--trainer.max_epochs", "2"]
    out = {}
    for name, extra in (("fused", []), ("id_only", ["--model.model.sources", "[id]"])):
        d = root / name
        log = _run("fit", *common, *extra, "--test_after_fit", "true", "--trainer.default_root_dir", str(d),
                   "--trainer.logger.init_args.save_dir", str(d))
        (ckpt,) = sorted(d.rglob("best-*.ckpt"))  # what test_after_fit evaluated
        out[name] = (ckpt, _printed(log.stdout + log.stderr, "test"))
    return root, out


def test_members_match_fusionrec_test_and_weights_fit_validation(members):
    root, out = members
    (fused, fused_test), (ids, ids_test) = out["fused"], out["id_only"]
    assert fused_test and ids_test, "fusionrec test printed no metrics"
    p = _run("ensemble", str(fused), str(ids), "--name", "fused", "--name", "id_only", "--out", str(root / "ens"))
    assert f"wrote {root / 'ens' / 'ensemble.json'}" in p.stdout
    assert "| ensemble (weighted) |" in p.stdout and "| ensemble (rrf) |" in p.stdout
    res = json.loads((root / "ens" / "ensemble.json").read_text())
    rows = {(r["model"], r["split"]): r for r in res["rows"]}
    for name, printed in (("fused", fused_test), ("id_only", ids_test)):
        for metric, value in printed.items():  # printed with 4 decimals
            assert rows[(name, "test")][metric] == pytest.approx(value, abs=6e-5), (name, metric)
    weights = [m["weight"] for m in res["members"]]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    assert res["metric"] == "ndcg@10" and res["fit_on"] == "valid" and res["ks"] == [5, 10]
    best_member = max(rows[(n, "valid")]["ndcg@10"] for n in ("fused", "id_only"))
    assert rows[("ensemble (weighted)", "valid")]["ndcg@10"] >= best_member - 1e-9  # one-hot weights are candidates


def test_bad_input_is_a_clear_error(members, tmp_path):
    root, out = members
    ckpt = out["fused"][0]
    p = _run("ensemble", str(ckpt), ok=False)
    assert p.returncode == 2 and "expected 2 or more" in p.stderr
    p = _run("ensemble", str(ckpt), str(ckpt), "--name", "a", ok=False)
    assert p.returncode == 2 and "--name given 1 times for 2 checkpoints" in p.stderr
    p = _run("ensemble", str(ckpt), str(tmp_path / "missing.ckpt"), ok=False)
    assert p.returncode == 2 and "missing.ckpt" in p.stderr and "Traceback" not in p.stderr
