"""A checkpoint knows the prepared dataset it was trained on, and refuses another one.

Every checkpoint carries `fusionrec_dataset`: the prepared dataset's fingerprint (sha256 of its inputs and
preparation options, data_modules/prepare/pipeline.py), its folder, name and counts. Resuming (`fit
--ckpt_path`), evaluating (`test` / `validate`), predicting or exporting against a dataset with a different
fingerprint — a changed split, filter or input file — is refused: a resumed run on a re-split dataset would train
on the old run's test items, and a test score would not be the number it claims. `--model.allow_dataset_change
true` (export: `--allow-dataset-change`) overrides it, say for a fine-tune on new data, and the log says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("fusionrec.dataset_guard")
KEY = "fusionrec_dataset"


class DatasetMismatchError(ValueError):
    """The checkpoint was trained on a different prepared dataset than the one given."""


def dataset_identity(manifest: dict[str, Any], dataset_dir: str | Path) -> dict[str, Any]:
    """What a checkpoint stores about its dataset (plain types: it loads with weights_only)."""
    return {"fingerprint": str(manifest.get("fingerprint")), "dir": str(Path(dataset_dir).resolve()),
            "name": manifest.get("name"), "counts": dict(manifest.get("counts") or {})}


def check_dataset(stored: dict[str, Any] | None, current: dict[str, Any], checkpoint: str, allow_change: bool,
                  override: str = "--model.allow_dataset_change true") -> None:
    """Raise DatasetMismatchError when `stored` (from the checkpoint) and `current` differ in fingerprint."""
    if stored is None:
        log.warning("checkpoint %s records no prepared-dataset fingerprint (written by an older fusionrec): "
                    "cannot check that it was trained on %s", checkpoint, current["dir"])
        return
    if stored.get("fingerprint") == current["fingerprint"]:
        return
    what = (f"checkpoint {checkpoint} was trained on the prepared dataset {stored.get('dir')} (fingerprint "
            f"{str(stored.get('fingerprint'))[:16]}…, counts {stored.get('counts')}), but the dataset given is "
            f"{current['dir']} (fingerprint {current['fingerprint'][:16]}…, counts {current['counts']})")
    if allow_change:
        log.warning("%s; continuing because the dataset change is allowed explicitly", what)
        return
    raise DatasetMismatchError(f"{what}. A different split or preparation can leak the checkpoint's test items into "
                               f"training or evaluation; use the dataset it was trained on, or pass {override} "
                               "if the change is intended")
