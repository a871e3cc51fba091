"""Checks that an output location can be written, made before any work (and creating nothing).

``os.access`` answers from permission bits, which say nothing to root and nothing about a
read-only or special file system (``/proc``, a read-only mount): a command would pass the check
and fail with a traceback after minutes of work. The probe here creates and removes a temporary
file in the nearest directory that exists, which is what writing the outputs will need.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from so8t.errors import ConfigError


def check_output_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """``path`` as a Path when it is, or can be created as, a writable directory; nothing is left behind.

    Raises:
        ConfigError: one line naming ``flag``: the path is a file, lies under a file, or the nearest
            existing directory cannot be written.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a directory: pass a directory path")
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {out}: {probe} is a file, so the directory cannot be created: pass a directory path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".so8t-write-probe-", dir=probe)
    except OSError as e:
        where = "" if probe == out.absolute() else f" ({probe} is not writable)"
        raise ConfigError(f"{flag} {out}: cannot write there{where}: {e.strerror or e}: pass a directory you can "
                          "write to") from None
    os.close(fd)
    os.unlink(tmp)
    return out


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """``path`` as a Path when a file can be written there (its directory exists or can be created, and is
    writable); nothing is left behind.

    Raises:
        ConfigError: one line naming ``flag``: the path is a directory, its parent is a file, or the directory
            cannot be written.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"{flag} {out}: is a directory: pass a file path inside it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"{flag} {out}: {out.parent} is a file, not a directory: pass a path in a directory")
    check_output_dir(out.parent, f"{flag} {out}: directory")
    return out
