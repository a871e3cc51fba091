"""Export of a version to a plain directory (for llama.cpp, Ollama or anything expecting files).

Files are copied (or hard-linked) out of the blob store and re-hashed on the way, so a corrupted
blob never reaches the export. Each file lands through a temporary name and a rename.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from registry.blobs import BlobStore, _copy_and_hash
from registry.errors import IntegrityError, InvalidInputError, NotFoundError
from registry.fsio import OPEN_FLAGS, durable_tmp, fsync_dir, replace
from registry.models import FileEntry, VersionManifest

logger = logging.getLogger(__name__)


def export_version(
    blobs: BlobStore, m: VersionManifest, dest: Path, *, link: bool = False, with_manifest: bool = False
) -> Path:
    """Write the files of ``m`` under ``dest`` (see :meth:`registry.store.Registry.export`).

    Raises:
        InvalidInputError: If ``dest`` exists and is not an empty directory.
        IntegrityError: If a blob does not match the manifest.
        NotFoundError: If a blob is missing.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(
            f"export destination {dest} exists and is not an empty directory: choose a new path"
        )
    above = next((p for p in dest.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InvalidInputError(f"export destination {dest}: {above} is a file: choose a path in a directory")
    # Atomic: everything lands in a hidden sibling, renamed to dest only when complete; a failure
    # (corrupt blob, full disk) leaves no partial dest, so the retry is not refused.
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
    try:
        _export_into(blobs, m, staging, link=link, with_manifest=with_manifest)
        if dest.is_dir():
            dest.rmdir()  # the empty directory the caller made: replaced by the complete export
        os.rename(staging, dest)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise InvalidInputError(f"export to {dest}: {e.strerror}: free space and retry (nothing was left "
                                    "behind)") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    logger.info("exported %s %s to %s", m.name, m.version, dest)
    return dest


def _export_into(blobs: BlobStore, m: VersionManifest, dest: Path, *, link: bool, with_manifest: bool) -> None:
    for f in m.files:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = blobs.path(f.sha256)
        if link:
            blobs.verify(f.sha256, f.size)
            try:
                os.link(blob, target)
                continue
            except OSError:
                pass  # another file system: copy instead
        _copy_verified(blob, target, f)
    if with_manifest:
        (dest / "registry-manifest.json").write_text(m.model_dump_json(indent=1))
    fsync_dir(dest)


def _copy_verified(blob: Path, target: Path, f: FileEntry) -> None:
    with durable_tmp(target.parent, ".export-", mode=0o644) as (fd, tmp):
        try:
            src_fd = os.open(blob, os.O_RDONLY | OPEN_FLAGS)
        except FileNotFoundError:
            raise NotFoundError(f"blob {f.sha256} of {f.path} is missing: run `so8t registry verify`") from None
        try:
            digest = _copy_and_hash(src_fd, fd, f.size)
        except IntegrityError:
            digest = "a truncated blob"
        finally:
            os.close(src_fd)
        if digest != f.sha256:
            raise IntegrityError(
                f"blob of {f.path} is corrupted (content is {digest}, manifest says {f.sha256}): "
                "export refused; restore the blob or re-publish"
            )
    replace(tmp, target)
