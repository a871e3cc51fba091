"""Atomic writes: a temporary sibling, then a rename; nothing half-written on failure.

:func:`atomic_write_bytes` for one file; :func:`atomic_directory` for a directory built by many
writes (a baked model, a prepared base model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Build a directory in a hidden temporary sibling; it replaces ``target`` only when the block succeeds.

    ``with atomic_directory(out) as tmp:`` yields an empty directory ``.<name>-XXXX`` beside ``out``
    (same file system, so the final rename is atomic). When the block returns, an existing ``target``
    is removed and the temporary directory renamed onto it; when it raises (anything, a
    KeyboardInterrupt included), the temporary directory is removed and ``target`` is left as it was.

    Yields:
        The temporary directory to fill.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
