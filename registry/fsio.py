"""Crash-safe file primitives: atomic replace, exclusive create, durable append.

Every durable write in the registry goes through here: write a temporary file in the same file
system, ``fsync`` it, ``rename`` (or ``link`` for create-only) it into place, then ``fsync`` the
directory so the new name survives a power cut. A process killed at any instant leaves either the
old file or the new one, plus at most a stray temporary file that ``gc`` removes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

WINDOWS = os.name == "nt"
"""Windows rules (read at call time, so the tests can run these paths on Linux): no directory fsync (a
directory cannot be opened there; NTFS journals its metadata), permissions set by path after closing, a
replace retried while another process has the target open, read-only files made writable to be removed."""

#: Flags of every ``os.open`` here: binary (Windows would translate newlines otherwise), not inherited.
OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)

#: How long a replace is retried on Windows while a reader holds the target open.
REPLACE_RETRY_S = 5.0


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so renames and creations inside it are durable (not on Windows)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if WINDOWS or flag is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:  # pragma: no cover - file systems that refuse it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: Path, dst: Path) -> None:
    """``os.replace``; on Windows retried (up to :data:`REPLACE_RETRY_S`) while ``dst`` is open elsewhere.

    Windows refuses to replace a file another process has open without delete sharing (which Python's
    ``open`` does not ask for): a reader of ``state.json`` would otherwise fail a promotion. Readers keep
    files open for milliseconds, so a short retry is enough; a read-only target is made writable first.
    """
    if not WINDOWS:
        os.replace(src, dst)
        return
    deadline, delay = time.monotonic() + REPLACE_RETRY_S, 0.005
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if time.monotonic() >= deadline:
                raise
            _make_writable(dst)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def remove(path: Path, *, missing_ok: bool = True) -> None:
    """Delete a file; on Windows a read-only one (a blob, a 0o444 temporary) is made writable first."""
    try:
        path.unlink(missing_ok=missing_ok)
    except PermissionError:
        if not WINDOWS:
            raise
        _make_writable(path)
        path.unlink(missing_ok=missing_ok)


def _make_writable(path: Path) -> None:
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def make_tmp(tmp_dir: Path, prefix: str = "tmp-") -> tuple[int, Path]:
    """Create a unique temporary file in ``tmp_dir`` and return ``(fd, path)``."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=tmp_dir)
    return fd, Path(name)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def durable_tmp(tmp_dir: Path, prefix: str = "tmp-", *, mode: int | None = None) -> Iterator[tuple[int, Path]]:
    """A new temporary file in ``tmp_dir``, complete on disk when the block ends, or gone.

    ``with durable_tmp(d) as (fd, tmp):`` yields the raw descriptor (open for writing) and the path.
    When the block returns, the file is fsynced, given ``mode`` (if any) and closed; the caller then
    renames or links it into place. When the block raises, the file is closed and removed.
    """
    fd, tmp = make_tmp(tmp_dir, prefix)
    try:
        yield fd, tmp
        os.fsync(fd)
        if mode is not None and not WINDOWS:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        remove(tmp)
        raise
    os.close(fd)
    if mode is not None and WINDOWS:  # no fchmod there before Python 3.13
        os.chmod(tmp, mode)


def _durable_tmp(tmp_dir: Path, data: bytes, mode: int) -> Path:
    """A fsynced temporary file in ``tmp_dir`` holding ``data`` with permission bits ``mode``."""
    with durable_tmp(tmp_dir, mode=mode) as (fd, tmp):
        write_all(fd, data)
    return tmp


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (readers see old or new, never a mix).

    Args:
        path: Destination file.
        data: Full new content.
        tmp_dir: Directory for the temporary file; must be on the same file system as ``path``.
        mode: Permission bits of the new file.
    """
    tmp = _durable_tmp(tmp_dir, data, mode)
    try:
        replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, *, tmp_dir: Path, mode: int = 0o444) -> bool:
    """Create ``path`` with ``data`` only if it does not exist yet, atomically.

    The file appears complete or not at all (``link`` of a fsynced temporary file).

    Returns:
        True if this call created the file, False if ``path`` already existed.
    """
    tmp = _durable_tmp(tmp_dir, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        remove(tmp)
    fsync_dir(path.parent)
    return True


def read_complete_lines(path: Path) -> tuple[list[bytes], int]:
    """Read the newline-terminated lines of an append-only file.

    A last line without its newline is a torn write from a killed process: it is ignored.

    Returns:
        ``(lines, good_size)``: the complete lines (without newlines) and the byte length they
        occupy, i.e. where the torn tail (if any) begins.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    lines = [ln for ln in data[:end].split(b"\n") if ln]
    return lines, end


def append_lines(path: Path, lines: list[bytes], *, good_size: int) -> None:
    """Append lines durably after truncating a torn tail beyond ``good_size``.

    Only call with the owning lock held.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, 0o644)
    try:
        if os.fstat(fd).st_size != good_size:
            logger.warning("dropping torn tail of %s after byte %d", path, good_size)
            os.ftruncate(fd, good_size)
        os.lseek(fd, good_size, os.SEEK_SET)
        write_all(fd, b"".join(ln + b"\n" for ln in lines))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_last_line(path: Path, block: int = 64 << 10) -> tuple[bytes | None, int]:
    """Return the last complete line of an append-only file without reading all of it.

    Args:
        path: The file (missing means empty).
        block: Initial number of bytes read from the end; doubled until a whole line fits.

    Returns:
        ``(line, good_size)``: the last newline-terminated line (without newline, None when the
        file has none) and the offset just after it (where a torn tail, if any, begins).
    """
    try:
        fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
    except FileNotFoundError:
        return None, 0
    try:
        size = os.fstat(fd).st_size
        while True:
            start = max(0, size - block)
            data = os.pread(fd, size - start, start)
            last_nl = data.rfind(b"\n")
            if last_nl < 0:
                if start == 0:
                    return None, 0
                block *= 2
                continue
            prev_nl = data.rfind(b"\n", 0, last_nl)
            if prev_nl < 0 and start > 0:
                block *= 2
                continue
            return data[prev_nl + 1 : last_nl], start + last_nl + 1
    finally:
        os.close(fd)
