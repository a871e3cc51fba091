"""Content digests: one file's sha256, and one hash over a directory's files.

The directory hash is what decides whether a GGUF conversion is current (the HF model directory,
the converter's sources) and what keys Prefect's task cache (:mod:`tasks.caching`), so its byte
format is fixed: for every file, in sorted path order, the line ``"<relative posix path>\\0<sha256>\\n"``,
all fed to one sha256. Changing it would invalidate every recorded provenance and cache key.

Standard library only: every layer (so8t, tasks, flows) can import it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["count_records", "digest_files", "directory_digest", "file_digest", "maybe_path", "path_digest", "sha256_file",
           "split_paths", "visible_files"]


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


# (device, inode, size, mtime_ns, ctime_ns) -> sha256: a file is hashed once per process, however
# often a run asks (the run plan, each stage's cache key, the idempotency check before publishing,
# the A/B check), under whatever path (a hard link is the same inode). A file rewritten in place
# gets a new mtime and ctime (also when a copy restores the old mtime); a replaced one a new inode.
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised on (device, inode, size, mtime_ns, ctime_ns)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = sha256_file(path)
    return digest


def path_digest(path: str | Path) -> str:
    """Content digest of a file or a directory tree (hidden entries skipped), or 'missing'.

    A directory's digest covers every relative path and file content below it, so renaming or
    editing any file changes it; entries starting with '.' (locks, cache records) are ignored.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        return "dir:" + directory_digest(p, file_digest)
    return f"missing:{p}"


def split_paths(spec: str) -> list[str]:
    """The files of a comma-separated path list (training datasets are given that way)."""
    return [s.strip() for s in spec.split(",") if s.strip()]


def count_records(spec: str) -> int:
    """Non-blank lines of the comma-separated JSONL files (missing files count 0)."""
    n = 0
    for f in split_paths(spec):
        if Path(f).is_file():
            with open(f, encoding="utf-8") as fh:
                n += sum(1 for ln in fh if ln.strip())
    return n


def maybe_path(spec: str | None) -> str | None:
    """``spec`` when it names an existing file or directory (a base model may be a name instead)."""
    return spec if spec and os.path.exists(os.path.expanduser(spec)) else None
