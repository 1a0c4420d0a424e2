"""Checksums for DeepSpeed checkpoint folders: written last at save, verified before resume, test and export.

A ZeRO checkpoint is a folder (`last.ckpt/`: `latest`, `checkpoint/*_model_states.pt`, `*_optim_states.pt`, ...)
that DeepSpeed writes in place, file by file, from every rank. Lightning saves `last.ckpt` into the same folder
each time, so a rank killed mid-save leaves new shards beside old ones under an old `latest`: a folder that looks
complete and resumes a mix of two steps (or fails deep in DeepSpeed's loader naming no file). So:

- before a save, rank 0 removes the folder's manifest (`fusionrec-checksums.sha256`), then all ranks write;
- after DeepSpeed's closing barrier, rank 0 hashes every file and writes the manifest (temp file + fsync +
  rename, last of all): a folder is complete exactly when its manifest exists and every file matches it;
- before loading a folder, `verify_checksums` raises `CheckpointCorruptError` naming the missing, truncated or
  changed file, or the missing manifest (an interrupted save).

The manifest is in `sha256sum` format (`<hex>  <path relative to the folder>`), so the launchers (and a user)
check a folder with `sha256sum --strict -c fusionrec-checksums.sha256` run inside it. Assumes the folder is on a
filesystem every rank shares (as DeepSpeed's own loader does). For a folder saved before fusionrec wrote
checksums: `python -m trainer.engine.checkpoint_checksums write FOLDER` after checking it by other means.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

from trainer.engine.checkpointing import CheckpointCorruptError

MANIFEST = "fusionrec-checksums.sha256"
_CHUNK = 1 << 20
log = logging.getLogger("fusionrec.checkpointing")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Every regular file under `folder` (relative, `/`-separated, sorted) except the manifest and its temp files."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not p.is_symlink() and rel != MANIFEST and not rel.startswith(f".{MANIFEST}.tmp-"):
            out.append(rel)
    return sorted(out)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def invalidate_checksums(folder: str | Path) -> None:
    """Remove `folder`'s manifest before its files are overwritten: until the next manifest it is incomplete."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists():
        manifest.unlink()
        _fsync_dir(folder)


def write_checksums(folder: str | Path) -> Path:
    """Hash every file of `folder` and write the manifest atomically; returns its path."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / rel)}  {rel}\n" for rel in _listed_files(folder)]
    manifest = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(folder)
    return manifest


def verify_checksums(folder: str | Path) -> None:
    """Raise CheckpointCorruptError naming the first file of `folder` that is missing or differs from the manifest
    (size in the message), or naming the manifest when it is absent or unreadable. Reads the folder once."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    advice = "resume from another checkpoint (an earlier s*.ckpt / best-*.ckpt folder) or re-run training"
    if not manifest.is_file():
        raise CheckpointCorruptError(
            f"DeepSpeed checkpoint folder {folder} has no {MANIFEST}: fusionrec writes it after every file of a "
            f"save, so the save did not finish (a rank was killed or the disk filled) and the folder may mix two "
            f"steps; {advice}")
    listed: list[tuple[str, str]] = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel or rel.startswith("/") or ".." in Path(rel).parts:
            raise CheckpointCorruptError(f"{manifest}, line {n}: not '<sha256>  <relative path>' ({line[:80]!r}): "
                                         f"the manifest is damaged; {advice}")
        listed.append((digest, rel))
    for digest, rel in listed:
        path = folder / rel
        if not path.is_file():
            raise CheckpointCorruptError(f"DeepSpeed checkpoint folder {folder}: {rel} is missing (listed in "
                                         f"{MANIFEST}); {advice}")
        if sha256_file(path) != digest:
            raise CheckpointCorruptError(f"DeepSpeed checkpoint folder {folder}: {rel} ({path.stat().st_size} bytes) "
                                         f"fails its sha256 check: the file is truncated or damaged; {advice}")
    unlisted = sorted(set(_listed_files(folder)) - {rel for _, rel in listed})
    if unlisted:
        log.warning("%s: files not in %s (added after the save; DeepSpeed ignores them): %s", folder, MANIFEST,
                    unlisted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write or verify a DeepSpeed checkpoint folder's checksums")
    parser.add_argument("action", choices=("write", "verify"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.action == "write":
        print(write_checksums(args.folder))
        return
    try:
        verify_checksums(args.folder)
    except CheckpointCorruptError as e:
        raise SystemExit(str(e)) from None
    print(f"{args.folder}: every file matches {MANIFEST}")


if __name__ == "__main__":
    main()
