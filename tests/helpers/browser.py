"""Headless Chromium (Debian's `chromium` package) for tests that check what a page really shows.

`.ci/run` installs it when run as root; without it the browser tests skip with the reason `CHROMIUM_MISSING`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_MISSING = "headless Chromium not installed (as root: apt-get install -y chromium; .ci/run does it)"
# --run-all-compositor-stages-before-draw: without it, pages that render on IntersectionObserver (TensorBoard's
# cards) were often dumped before any card was drawn under --virtual-time-budget
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--run-all-compositor-stages-before-draw",
         "--disable-dev-shm-usage", "--no-first-run"]  # fmt: skip


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(url: str, out: Path, size: tuple[int, int] = (1280, 2000), budget_ms: int | None = None) -> Path:
    """A PNG of `url` at `size`; `budget_ms` of virtual time lets a script-driven page load its data first."""
    cmd = [chromium() or "chromium", *FLAGS, f"--window-size={size[0]},{size[1]}", f"--screenshot={out}"]
    if budget_ms:
        cmd.append(f"--virtual-time-budget={budget_ms}")
    p = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot (rc {p.returncode}):\n{p.stderr[-3000:]}"
    return out


def dump_dom(url: str, budget_ms: int = 20000, size: tuple[int, int] = (1600, 6000)) -> str:
    """The DOM of `url` after `budget_ms` of virtual time, serialised (shadow roots are not included)."""
    cmd = [chromium() or "chromium", *FLAGS, f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
           "--dump-dom", url]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The text a reader sees (no script or style), whitespace collapsed to single spaces."""
    p = _Text()
    p.feed(html)
    return re.sub(r"\s+", " ", " ".join(p.parts)).strip()


def pixel_spread(png: Path) -> tuple[float, float]:
    """(grey-level standard deviation, share of pixels that are not near-white) of a screenshot: a blank page
    gives (0, 0)."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return float(grey.std()), float((grey < 230).mean())
