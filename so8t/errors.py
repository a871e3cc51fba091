"""User-facing errors: one line that names the bad value, the rule and the fix.

The CLI prints them as ``so8t: error: <message>`` and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os


class So8tError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code = 2


class ConfigError(So8tError, ValueError):
    """Invalid flags or configuration (all problems gathered into one message)."""


class DataError(So8tError, ValueError):
    """Invalid dataset: names the file, line and field."""


class ModelError(So8tError, ValueError):
    """Missing or unsupported model, or a model that fails a check."""


def storage_problem(e: BaseException | None, path: str | os.PathLike | None = None) -> str | None:
    """What went wrong when ``e`` (or what it wraps) is the storage refusing a write: a full disk, a
    quota, a read-only file system; None for anything else (a bug keeps its traceback).

    safetensors and other native writers report ENOSPC in their own exception types ("os error 28"),
    so the text is checked too. torch.save's C++ writer loses the errno altogether ("basic_ios::clear:
    iostream error", "unexpected pos"): for an OSError or RuntimeError while writing under ``path``,
    a file system with under 1 MiB left is taken as the cause.
    """
    import errno

    if path is not None and isinstance(e, (OSError, RuntimeError)):
        try:
            st = os.statvfs(path)
            if st.f_bavail * st.f_frsize < (1 << 20):
                return "no space left on device"
        except (OSError, AttributeError):  # gone, or no statvfs (Windows)
            pass
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror or e)
        text = str(e)
        for needle, what in (("No space left on device", "no space left on device"), ("os error 28", "no space left on device"),
                             ("Disk quota exceeded", "disk quota exceeded"), ("Read-only file system", "read-only file system")):
            if needle in text:
                return what
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None
