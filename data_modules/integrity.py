"""Check a prepared dataset's files against its manifest when they are opened, not only by `inspect --verify`.

Every shard and side array is listed in `manifest.json` with its size and sha256. Whoever opens one (the
training stream, the evaluation sets, `SideData` for the model's feature tables and export) calls
`check_shard` / `check_side` first:

* the size is compared every time (one `stat`): a truncated or half-copied file is refused before pyarrow or
  numpy reads it, with an error naming the file, instead of an `ArrowInvalid` or mmap `ValueError` that does not;
* the sha256 is computed at most once per process and file: the result is cached under the file's (path, inode,
  size, mtime), so a data module that verified everything at setup does not hash again when its loaders open the
  same files, and a file rewritten since is hashed again. `hash=False` (the data module's `verify: false`) skips
  hashing; the size is still checked.

Manifests written before side arrays carried `bytes` are checked against the size their `.npy` header implies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules import layout
from data_modules.errors import DataError
from data_modules.prepare.write import sha256_file

_HASHED: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256, this process


def check_shard(root: str | Path, split: str, entry: dict[str, Any], hash: bool = True) -> Path:
    """The path of shard `entry` (a manifest `shards[split]` item) after checking its size and sha256."""
    path = Path(root) / entry["path"]
    _check(path, f"{split} shard", entry.get("bytes"), entry.get("sha256") if hash else None)
    return path


def check_side(root: str | Path, name: str, info: dict[str, Any], hash: bool = True) -> Path:
    """The path of side array `name` (manifest `side[name]`) after checking its size and sha256."""
    path = Path(root) / layout.SIDE / f"{name}.npy"
    size = info.get("bytes")
    if size is None and path.is_file():
        size = npy_bytes(path, info)
    _check(path, f"side array {name!r}", size, info.get("sha256") if hash else None)
    return path


def npy_bytes(path: Path, info: dict[str, Any]) -> int:
    """The file size a `.npy` of the manifest's shape and dtype has with this file's header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as e:
        raise DataError(f"side array header is damaged ({e}); re-run `fusionrec data prepare`", path=path) from None
    if list(shape) != list(info.get("shape", shape)) or str(dtype) != str(info.get("dtype", dtype)):
        raise DataError(f"side array is {dtype}{list(shape)} but the manifest lists {info.get('dtype')}"
                        f"{info.get('shape')}; re-run `fusionrec data prepare`", path=path)
    return offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _check(path: Path, what: str, size: int | None, sha256: str | None) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{what} listed in the manifest is missing; re-run `fusionrec data prepare`", path=path) from None
    if size is not None and st.st_size != size:
        raise DataError(f"{what} is {st.st_size} bytes but the manifest lists {size}: the file is truncated or was "
                        "replaced after preparation; re-run `fusionrec data prepare`", path=path)
    if sha256 is None:
        return
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if _HASHED.get(key) != sha256:
        digest = sha256_file(path)
        if digest != sha256:
            raise DataError(f"{what} checksum does not match the manifest (expected sha256 {sha256[:16]}…, got "
                            f"{digest[:16]}…): the file changed after preparation; re-run `fusionrec data prepare`",
                            path=path)
        _HASHED[key] = digest


def load_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """`np.load(path, mmap_mode="r")` (or read whole); a damaged file is a DataError naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"side array cannot be read ({e}): damaged or truncated; re-run `fusionrec data prepare`",
                        path=path) from None


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """`pq.ParquetFile(path)`; a damaged file (footer, metadata) is a DataError naming it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"parquet shard cannot be read ({e}): damaged or truncated; re-run `fusionrec data prepare`",
                        path=path) from None


def read_parquet(path: str | Path, **kwargs: Any) -> pa.Table:
    """`pq.read_table(path, **kwargs)`; a damaged file is a DataError naming it."""
    try:
        return pq.read_table(path, **kwargs)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"parquet shard cannot be read ({e}): damaged or truncated; re-run `fusionrec data prepare`",
                        path=path) from None
