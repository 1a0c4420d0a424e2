"""One builder per prepared folder: several ranks or nodes preparing into the same output wait for each other.

`build_lock(out)` holds an exclusive `flock` on `.<name>.lock` beside the output folder. Whoever gets it first
builds; the others block until it is released and then find the finished folder (the fingerprint check makes
that re-run free). The kernel drops a `flock` when its holder dies, SIGKILL included, so a crashed builder never
leaves a lock behind: there is no stale-lock rule to get wrong (a killed holder's lock file stays, unlocked, and
the next builder takes it). The holder removes the file before it unlocks; a waiter that then gets the lock on
the removed file sees that it is no longer the one at the path and locks the current one, so two builders never
hold different files. The file records the holder's host, pid and start time, which a waiting process logs.

Shared filesystems: Linux maps `flock` onto NFS byte-range locks (NFSv3 with lockd, NFSv4), Lustre needs the
`-o flock` mount option, and a filesystem without locking answers ENOLCK / EOPNOTSUPP: then preparation logs a
warning and goes on unlocked (what it did before), so prepare once before launching many ranks there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("fusionrec.prepare")

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(out: Path) -> Path:
    """The lock file of prepared folder `out`: `.<name>.lock` in the same parent folder."""
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def build_lock(out: Path, timeout: float | None = None, poll: float = 0.2) -> Iterator[bool]:
    """Hold the build lock of `out` for the `with` body; yields True when it waited for another builder.

    Raises TimeoutError naming the holder when `timeout` seconds pass without getting it (None: wait forever,
    logging the holder every minute)."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            got = _acquire(fd, path, out, None if timeout is None else timeout - (time.monotonic() - t0), poll)
        except BaseException:
            os.close(fd)
            raise
        if got is None:  # no locking on this filesystem
            os.close(fd)
            yield False
            return
        waited = waited or got
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder before us removed the file we locked: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
                  .encode(), 0)
        yield waited
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a process that locks the removed file sees it and retries
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(fd: int, path: Path, out: Path, timeout: float | None, poll: float) -> bool | None:
    """Block until the lock is ours: False at once, True after waiting, None where the filesystem has no locks."""
    t0 = last_log = time.monotonic()
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if waited:
                log.info("got the build lock %s after %.1fs", path, time.monotonic() - t0)
            return waited
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            log.warning("%s: this filesystem does not support flock (%s): preparing %s without a lock; "
                        "concurrent preparations into it are not serialised", path, e, out)
            return None
        now = time.monotonic()
        if not waited or now - last_log >= 60:
            log.info("%s is being prepared by another process (%s): waiting for it to finish", out, _holder(path))
            last_log = now
        waited = True
        if timeout is not None and now - t0 >= timeout:
            raise TimeoutError(f"{out}: another process ({_holder(path)}) has held the build lock {path} for more "
                               f"than {timeout:.0f}s")
        time.sleep(poll)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "holder unknown"
    except OSError:
        return "holder unknown"
