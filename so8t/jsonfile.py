"""One reader for the JSON files users hand us (decision prompts, calibration results, release parameters).

Every failure is one line that names the file and, for malformed JSON, the line and column:
``{path}: {what} not found``, ``{path}: cannot read the {what}: ...``,
``{path}:{line}: malformed JSON at column {col}: ...``, ``{path}: the {what} holds a list, expected a JSON object``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from so8t.errors import DataError

__all__ = ["read_json_object"]


def read_json_object(path: str | Path, what: str, *, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``.

    Args:
        path: The file.
        what: What the file is, for the message ("decision prompt file", "calibration file", ...).
        hint: Appended to every message (e.g. ``": pass the calibration_results.json of so8t calibrate"``).

    Raises:
        DataError: Missing or unreadable file, malformed JSON, or JSON that is not an object.
    """
    p = Path(path).expanduser()
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read the {what} ({e}){hint}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON at column {e.colno}: {e.msg}{hint}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p}: the {what} holds a {type(obj).__name__}, expected a JSON object{hint}")
    return obj
