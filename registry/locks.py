"""Inter-process locks on real files, through ``filelock`` (Linux, macOS and Windows alike).

Both kinds are released by the operating system when their holder dies, even by SIGKILL or a killed
Windows process, so a crashed publisher or promoter never leaves the store locked:

* **exclusive**: :class:`filelock.FileLock` (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows).
  ``<root>/models/<name>/lock`` serialises alias/state changes of one model; on POSIX it is the same
  ``flock`` earlier versions of this registry took, so old and new processes exclude each other.
  Lock files are kept after release (``preserve_lock_file``): deleting a lock file while another process
  waits on it would let two holders in.
* **shared / exclusive**: :class:`filelock.ReadWriteLock` (an SQLite database: readers share a transaction,
  a writer holds it alone; SQLite's own file locks, which the OS drops with their process).
  ``<root>/gc.rwlock`` is shared by publishers and exclusive for gc, so gc never deletes a blob that a
  publish in progress has written but not yet referenced from a manifest. ``filelock`` has no shared
  mode on its plain file locks, and ``fcntl``'s has no Windows twin; SQLite's reader/writer locking
  works on both and is well kept. (Registries written before kept an empty ``gc.lock`` for the old
  ``flock``; it is unused now. Run gc only once every host writing a shared registry runs this version.)

Every lock object is made per call (never a process-wide singleton), so two threads of one process
exclude each other exactly as two processes do.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, ReadWriteLock, Timeout

from registry.errors import LockTimeoutError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
"""How long an operation waits for a lock before giving up."""

GC_LOCK = "gc.rwlock"
"""The reader/writer lock of a registry root (publishers share it, gc holds it alone)."""


def _timeout(path: Path, timeout_s: float) -> LockTimeoutError:
    return LockTimeoutError(f"lock {path} still held by another process after {timeout_s:.0f} s: wait for the other "
                            "registry command to finish, or raise the timeout")


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold a lock on ``path`` for the duration of the ``with`` block.

    Args:
        path: Lock file (created if missing; its directory must exist). A shared lock needs a file
            used only with ``shared`` locks and the exclusive locks of :func:`rw_lock` (an SQLite
            database): pass :data:`GC_LOCK`-style paths to it, plain lock files to the exclusive mode.
        shared: Take the shared side of a reader/writer lock (see :func:`rw_lock`).
        timeout_s: Give up after this many seconds.

    Raises:
        LockTimeoutError: If the lock could not be taken within ``timeout_s``.
    """
    if shared:
        with rw_lock(path, write=False, timeout_s=timeout_s):
            yield
        return
    lock = FileLock(str(path), timeout=timeout_s, thread_local=False, is_singleton=False, mode=0o644,
                    poll_interval=0.01, preserve_lock_file=True)
    with _held(lock.acquire, lock.release, path, timeout_s):
        yield


@contextlib.contextmanager
def rw_lock(path: Path, *, write: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the shared (``write=False``) or exclusive side of the reader/writer lock at ``path``.

    Raises:
        LockTimeoutError: If the lock could not be taken within ``timeout_s``.
    """
    lock = ReadWriteLock(str(path), timeout=timeout_s, is_singleton=False)
    try:
        with _held(lock.acquire_write if write else lock.acquire_read, lock.release, path, timeout_s):
            yield
    finally:
        lock.close()


@contextlib.contextmanager
def _held(acquire, release, path: Path, timeout_s: float) -> Iterator[None]:  # noqa: ANN001
    """``acquire()``, the block, ``release()``; filelock's Timeout as the registry's one-line error."""
    try:
        acquire()
    except Timeout:
        raise _timeout(path, timeout_s) from None
    try:
        yield
    finally:
        release()
