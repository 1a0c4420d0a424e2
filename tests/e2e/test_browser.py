"""What a user sees in a browser after a real tiny run (configs/tiny.yaml: fit + test, then predict logged into the
same version folder): the `fusionrec report` page, and TensorBoard itself, both opened in headless Chromium.

The page checks parse the HTML and need no browser; the screenshot and TensorBoard checks skip without Chromium.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.browser import CHROMIUM_MISSING, chromium, dump_dom, pixel_spread, screenshot, visible_text
from tests.helpers.env import child_env
from trainer.inference.run_data import read_scalars

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def fusionrec(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=180)
    log = p.stdout + p.stderr
    assert p.returncode == 0, f"fusionrec {' '.join(args)} failed:\n{log[-5000:]}"
    return log


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("browser")
    common = ["--config", str(TINY), "--data.dataset_dir", str(root / "data"), "--trainer.default_root_dir",
              str(root / "root"), "--trainer.logger.init_args.save_dir", str(root / "runs")]  # fmt: skip
    fusionrec("fit", *common, "--test_after_fit", "true")
    version = root / "runs" / "tiny" / "version_0"
    fusionrec("predict", *common, "--trainer.logger.init_args.version", "0", "--ckpt_path",
              str(version / "checkpoints" / "last.ckpt"))
    assert (version / "predictions" / "rank-0.parquet").is_file()
    out = root / "report"
    log = fusionrec("report", str(version), "--out", str(out))
    return {"root": root, "version": version, "out": out, "page": out / "index.html", "log": log,
            "scalars": read_scalars(version)}


# -- fusionrec report -----------------------------------------------------------------------------------------------
def _metric_rows(page: str) -> dict[str, list[str]]:
    """metric -> the cells of its row in the page's metric table (val at the best epoch, test)."""
    table = page.split("<table class=metrics>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)[2:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr)
        rows[cells[0]] = cells[1:]
    return rows


def test_report_page_names_every_logged_metric_with_its_value(run):
    s = run["scalars"]
    page = run["page"].read_text()
    assert f"report: {run['page']}" in run["log"]
    val = {t.removeprefix("val/"): df for t, df in s.items() if t.startswith("val/")}
    test = {t.removeprefix("test/"): df for t, df in s.items() if t.startswith("test/")}
    assert val and test and set(val) == set(test), sorted(s)
    rows = _metric_rows(page)
    assert set(rows) == set(val), (sorted(rows), sorted(val))
    # validation at the best epoch by the monitored metric (tiny: val/ndcg, max), test as logged
    mon = s["val/ndcg"]
    best = int(mon["step"][mon["value"].idxmax()])
    for m, (v, t) in rows.items():
        assert v == f"{float(val[m].loc[val[m]['step'] == best, 'value'].iloc[-1]):.4f}", m
        assert t == f"{float(test[m]['value'].iloc[-1]):.4f}", m
    text = visible_text(page)
    for m in val:  # every metric named in the page's text, as a table row and as a learning-curve panel
        assert f" {m} " in f" {text} " and f"val/{m}" in page, m
    assert f"step {best} (epoch" in text


def test_report_figures_are_embedded_pngs_and_popularity_is_computed_from_predictions(run):
    page = run["page"].read_text()
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    assert [alt for _, alt in imgs] == ["curves.png", "gates.png", "popularity.png"]
    for data, alt in imgs:  # self-contained: the embedded bytes are the PNG written beside the page
        assert base64.b64decode(data) == (run["out"] / alt).read_bytes()
        assert (run["out"] / alt).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # popularity bias, recomputed here from the parquet and the prepared dataset
    preds = pd.read_parquet(run["version"] / "predictions" / "rank-0.parquet")
    pop = np.load(run["root"] / "data" / "side" / "item_popularity.npy")
    ids = pd.read_parquet(run["root"] / "data" / "id_maps" / "items.parquet")
    idx = preds["item"].astype(str).map(dict(zip(ids["id"].astype(str), ids["index"]))).to_numpy()
    order = np.lexsort((np.arange(len(pop)), -pop))
    head = set(order[: round(0.2 * len(pop))].tolist())
    coverage = len(set(idx.tolist())) / len(pop)
    tail = np.mean([i not in head for i in idx])
    text = visible_text(page)
    assert f"{coverage:.1%} ({len(set(idx.tolist()))} / {len(pop)})" in text, text
    assert f" {tail:.1%} " in text
    assert "Per-source gates" in text and "gates.png" in text and "Popularity bias" in text and "Throughput" in text


@pytest.mark.skipif(chromium() is None, reason=CHROMIUM_MISSING)
def test_report_renders_in_chromium(run):
    shot = screenshot(run["page"].as_uri(), run["out"] / "screenshot.png", size=(1280, 2000))
    spread, inked = pixel_spread(shot)
    # a blank page is (0, 0); the report's tables and charts ink a good part of the first 2000 px
    assert spread > 30 and inked > 0.05, (spread, inked, shot)


# -- TensorBoard ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(run):
    port = _free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen([str(exe), "--logdir", str(run["version"]), "--port", str(port), "--host", "localhost"],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://localhost:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/data/runs", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.5)
        else:
            pytest.fail("tensorboard did not answer in 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


WANTED = {  # what a user looks for in TensorBoard after a run, each as the tags that must be listed
    "loss": lambda t: t == "train/loss",
    "validation metrics": lambda t: t.startswith("val/"),
    "examples/s": lambda t: t == "perf/examples_per_s",
    "data stall": lambda t: t == "perf/data_stall_fraction",
    "gates": lambda t: t.startswith("gates/"),
}


def test_tensorboard_data_api_lists_the_run_scalars(run, tensorboard):
    tags = json.loads(urllib.request.urlopen(f"{tensorboard}/data/plugin/scalars/tags", timeout=10).read())
    listed = set(tags["."])
    for what, match in WANTED.items():
        logged = {t for t in run["scalars"] if match(t)}
        assert logged and logged <= listed, (what, sorted(logged - listed))
    assert any(t.startswith("gates/user_") for t in listed) and any(t.startswith("gates/item_") for t in listed)


@pytest.mark.skipif(chromium() is None, reason=CHROMIUM_MISSING)
def test_tensorboard_in_chromium_shows_a_card_per_scalar(run, tensorboard):
    """The Time Series dashboard renders scalar cards lazily and 12 to a page: each check filters the tags (the
    page's own `tagFilter`) to at most 12, and reads the card titles ("gates /user_id") from the rendered DOM."""
    wanted = sorted(t for t in run["scalars"] if any(m(t) for m in WANTED.values()))
    val = [t for t in wanted if t.startswith("val/")]
    rest = [t for t in wanted if not t.startswith("val/")]
    assert len(val) <= 12 and len(rest) <= 12, wanted
    for group in (val, rest):
        pattern = "^(" + "|".join(re.escape(t) for t in group) + ")$"
        url = f"{tensorboard}/?tagFilter={urllib.parse.quote(pattern, safe='')}#timeseries"
        for _attempt in range(3):  # a dump taken before the cards drew has the filter count but no titles
            text = visible_text(dump_dom(url))
            shown = {g + "/" + n for g, n in re.findall(r"\b([\w-]+) /(\S+)", text)}
            if set(group) <= shown:
                break
        assert f"Tags matching filter {len(group)} cards" in text, text[:2000]
        assert set(group) <= shown, (sorted(set(group) - shown), text[:3000])
    shot = screenshot(f"{tensorboard}/#timeseries", run["root"] / "tensorboard.png", size=(1280, 1200), budget_ms=15000)
    spread, inked = pixel_spread(shot)
    assert spread > 20 and inked > 0.02, (spread, inked)
