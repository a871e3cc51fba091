"""Inter-process locks on real files (``fcntl.flock``).

The kernel drops a ``flock`` when its holder dies, even by SIGKILL, so a crashed publisher or
promoter never leaves the store locked. Lock files are created once and never deleted (deleting a
lock file while another process waits on it would let two holders in).

Two locks are used by the store:

* ``<root>/models/<name>/lock`` (exclusive): serialises alias/state changes of one model.
* ``<root>/gc.lock`` (shared for publishers, exclusive for gc): gc never deletes a blob that a
  publish in progress has written but not yet referenced from a manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from registry.errors import LockTimeoutError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
"""How long an operation waits for a lock before giving up."""


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold an flock on ``path`` for the duration of the ``with`` block.

    Args:
        path: Lock file; created (empty) if missing, its directory must exist.
        shared: Take a shared lock instead of an exclusive one.
        timeout_s: Give up after this many seconds.

    Yields:
        Nothing; the lock is held inside the block.

    Raises:
        LockTimeoutError: If the lock could not be taken within ``timeout_s``.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"lock {path} still held by another process after {timeout_s:.0f} s: "
                        "wait for the other registry command to finish, or raise the timeout"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
