"""User-facing errors: one line that names the bad value, the rule and the fix.

The CLI prints them as ``so8t: error: <message>`` and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class So8tError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code = 2


class ConfigError(So8tError, ValueError):
    """Invalid flags or configuration (all problems gathered into one message)."""


class DataError(So8tError, ValueError):
    """Invalid dataset: names the file, line and field."""


class ModelError(So8tError, ValueError):
    """Missing or unsupported model, or a model that fails a check."""
