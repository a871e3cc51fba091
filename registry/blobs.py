"""Content-addressed blob storage: ``<root>/blobs/sha256/<2 hex>/<64 hex>``.

A blob is written to a temporary file in ``<root>/tmp``, hashed *from the bytes written*,
fsynced, made read-only and renamed to its hash. A blob that already exists is not written twice.
Large files are copied in the kernel (``copy_file_range``) while a second thread hashes the chunks
already copied, so publishing costs about max(copy, sha256) instead of their sum.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from registry.errors import IntegrityError, NotFoundError
from registry.fsio import OPEN_FLAGS, durable_tmp, fsync_dir, remove, replace, write_all
from registry.models import check_sha256

logger = logging.getLogger(__name__)

_CHUNK = 16 << 20  # bytes per copy/hash step; a multiple of mmap.ALLOCATIONGRANULARITY
_READ_BUF = 4 << 20


def hash_file(path: Path) -> tuple[str, int]:
    """Return ``(sha256 hex, size)`` of a file."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_READ_BUF)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


class BlobStore:
    """The blob half of the store. Holds no state besides its paths."""

    def __init__(self, root: Path) -> None:
        """Args:
        root: Registry root; blobs live in ``root/blobs/sha256`` and temporaries in ``root/tmp``.
        """
        self.dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"

    def ensure(self) -> None:
        """Create the directories if missing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Path of the blob named ``sha256`` (it may not exist)."""
        check_sha256(sha256)
        return self.dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Tell whether the blob is stored."""
        return self.path(sha256).is_file()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` and return ``(sha256, size)``."""
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest, len(data)
        with durable_tmp(self.tmp_dir, "blob-") as (fd, tmp):
            write_all(fd, data)
        self._install(tmp, digest)
        return digest, len(data)

    def put_file(self, src: Path) -> tuple[str, int]:
        """Copy the file ``src`` into the store and return ``(sha256, size)``.

        Raises:
            IntegrityError: If ``src`` changed size or mtime while it was being copied.
        """
        src_fd = os.open(src, os.O_RDONLY | OPEN_FLAGS)
        try:
            before = os.fstat(src_fd)
            with durable_tmp(self.tmp_dir, "blob-") as (fd, tmp):
                digest = _copy_and_hash(src_fd, fd, before.st_size)
                after = os.fstat(src_fd)
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    raise IntegrityError(
                        f"{src} changed while it was being published (size {before.st_size} -> "
                        f"{after.st_size}): publish only finished files"
                    )
        finally:
            os.close(src_fd)
        self._install(tmp, digest)
        return digest, before.st_size

    def _install(self, tmp: Path, digest: str) -> None:
        final = self.path(digest)
        if final.exists():  # deduplicated: identical content already stored
            remove(tmp)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        try:
            replace(tmp, final)  # identical content if two publishers race: either wins
        except PermissionError:
            if not final.exists():  # Windows: the racing publisher's read-only blob is the same content
                raise
            remove(tmp)
        fsync_dir(final.parent)

    def adopt_file(self, tmp: Path, sha256: str, size: int) -> None:
        """Install the file ``tmp`` (in :attr:`tmp_dir`, made by someone else, e.g. a download) as blob ``sha256``.

        The file is re-hashed first; it is moved into place (no copy) only when its content hashes to
        ``sha256`` and has ``size`` bytes, else it is deleted. A blob already stored under that name (a
        corrupted one included) is replaced.

        Raises:
            IntegrityError: The content is not what ``sha256``/``size`` say (one line: expected and actual).
        """
        try:
            actual, actual_size = hash_file(tmp)
            if (actual, actual_size) != (sha256, size):
                raise IntegrityError(f"expected sha256 {sha256} ({size} bytes), got {actual} ({actual_size} bytes)")
            fd = os.open(tmp, os.O_RDONLY | OPEN_FLAGS)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = self.path(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            replace(tmp, final)
        except BaseException:
            remove(tmp)
            raise
        fsync_dir(final.parent)

    def verify(self, sha256: str, size: int | None = None) -> None:
        """Re-hash one blob.

        Raises:
            NotFoundError: If the blob is missing.
            IntegrityError: If its content no longer hashes to its name (or has the wrong size).
        """
        path = self.path(sha256)
        try:
            actual, actual_size = hash_file(path)
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {sha256} is missing from {self.dir}: the store was damaged outside the "
                "registry; re-publish the version or restore the blob from a backup"
            ) from None
        if actual != sha256 or (size is not None and actual_size != size):
            raise IntegrityError(
                f"blob {path} is corrupted: content hashes to {actual} ({actual_size} bytes) but "
                f"must hash to {sha256}" + (f" ({size} bytes)" if size is not None else "")
                + "; re-publish the version or restore the blob from a backup"
            )

    def iter_blobs(self) -> Iterator[str]:
        """Yield the sha256 of every stored blob (files named and placed as blobs; see :meth:`strays`)."""
        if not self.dir.is_dir():
            return
        for sub in sorted(self.dir.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if f.is_file() and _is_blob_name(f.name) and f.name[:2] == sub.name:
                        yield f.name

    def strays(self) -> list[Path]:
        """Entries under the blob directory that are not blobs (someone else's files): never touched."""
        if not self.dir.is_dir():
            return []
        out = []
        for sub in sorted(self.dir.iterdir()):
            if not sub.is_dir():
                out.append(sub)
                continue
            out.extend(f for f in sorted(sub.iterdir())
                       if not (f.is_file() and _is_blob_name(f.name) and f.name[:2] == sub.name))
        return out

    def remove(self, sha256: str) -> int:
        """Delete a blob and return the bytes freed (0 if it was already gone)."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            remove(path, missing_ok=False)  # read-only: made writable first on Windows
        except FileNotFoundError:
            return 0
        return size


def _copy_and_hash(src_fd: int, dst_fd: int, size: int) -> str:
    """Copy ``size`` bytes from ``src_fd`` to ``dst_fd`` and return the sha256 of ``dst_fd``."""
    if size == 0:
        return hashlib.sha256().hexdigest()
    try:
        return _copy_and_hash_kernel(src_fd, dst_fd, size)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise
        logger.debug("copy_file_range unavailable (%s); using read/write", e)
    os.lseek(src_fd, 0, os.SEEK_SET)
    os.ftruncate(dst_fd, 0)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    return _copy_and_hash_userspace(src_fd, dst_fd, size)


def _copy_and_hash_userspace(src_fd: int, dst_fd: int, size: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(_READ_BUF)
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.readv(src_fd, [view[: min(_READ_BUF, size - done)]])
        if n == 0:
            break
        h.update(view[:n])
        out = view[:n]
        while out:
            out = out[os.write(dst_fd, out):]
        done += n
    if done != size:
        raise IntegrityError(f"source shrank from {size} to {done} bytes while being published")
    return h.hexdigest()


def _copy_and_hash_kernel(src_fd: int, dst_fd: int, size: int) -> str:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range not available")
    h = hashlib.sha256()
    todo: queue.Queue[tuple[int, int] | None] = queue.Queue()
    failure: list[BaseException] = []

    def hasher() -> None:
        try:
            while (item := todo.get()) is not None:
                start, end = item
                with mmap.mmap(dst_fd, end - start, prot=mmap.PROT_READ, offset=start) as mm:
                    h.update(mm)
                # Start writeback now so the final fsync has little left to do.
                os.posix_fadvise(dst_fd, start, end - start, os.POSIX_FADV_DONTNEED)
        except BaseException as e:  # pragma: no cover - surfaced below
            failure.append(e)
            while todo.get() is not None:
                pass

    worker = threading.Thread(target=hasher, name="registry-hash", daemon=True)
    worker.start()
    copied = 0
    try:
        while copied < size:
            start, end = copied, min(size, copied + _CHUNK)
            while copied < end:
                n = os.copy_file_range(src_fd, dst_fd, end - copied, copied, copied)
                if n == 0:
                    raise IntegrityError(
                        f"source shrank from {size} to {copied} bytes while being published"
                    )
                copied += n
            todo.put((start, end))
    finally:
        todo.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return h.hexdigest()


def _is_blob_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
