"""Content digests: one file's sha256, and one hash over a directory's files.

The directory hash is what decides whether a GGUF conversion is current (the HF model directory,
the converter's sources) and what keys Prefect's task cache (:mod:`tasks.caching`), so its byte
format is fixed: for every file, in sorted path order, the line ``"<relative posix path>\\0<sha256>\\n"``,
all fed to one sha256. Changing it would invalidate every recorded provenance and cache key.

Standard library only: every layer (so8t, tasks, flows) can import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["digest_files", "directory_digest", "sha256_file", "visible_files"]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def visible_files(root: Path) -> list[Path]:
    """Regular files below ``root``, sorted, without any path whose part relative to ``root`` starts with '.'.

    Hidden entries are locks, cache records, ``.git`` and the like: they are not the content.
    """
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return out


def digest_files(root: Path, files: Iterable[Path], file_digest: Callable[[Path], str] = sha256_file) -> str:
    """sha256 over ``"<path relative to root>\\0<file digest>\\n"`` of each file, in the order given.

    Args:
        root: What the recorded paths are relative to (every file must lie below it).
        files: The files, already in the order that defines the hash.
        file_digest: The hex digest of one file (a memoised one may stand in; it must give sha256).
    """
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def directory_digest(root: Path, file_digest: Callable[[Path], str] = sha256_file) -> str:
    """:func:`digest_files` over :func:`visible_files`: renaming, adding or editing any visible file changes it."""
    return digest_files(root, visible_files(root), file_digest)
