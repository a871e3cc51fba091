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
from pathlib import Path

logger = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so renames and creations inside it are durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without O_DIRECTORY
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_tmp(tmp_dir: Path, prefix: str = "tmp-") -> tuple[int, Path]:
    """Create a unique temporary file in ``tmp_dir`` and return ``(fd, path)``."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=tmp_dir)
    return fd, Path(name)


def _durable_tmp(tmp_dir: Path, data: bytes, mode: int) -> Path:
    """A fsynced temporary file in ``tmp_dir`` holding ``data`` with permission bits ``mode``."""
    fd, tmp = make_tmp(tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        tmp.unlink(missing_ok=True)
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size != good_size:
            logger.warning("dropping torn tail of %s after byte %d", path, good_size)
            os.ftruncate(fd, good_size)
        os.lseek(fd, good_size, os.SEEK_SET)
        payload = b"".join(ln + b"\n" for ln in lines)
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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
