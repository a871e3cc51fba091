"""Exceptions raised by the registry.

Every message names the bad value, the rule it broke and how to fix it, so a CLI user sees one
actionable line. All registry errors derive from :class:`RegistryError`, which the CLI turns into
exit status 2.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class InvalidNameError(RegistryError, ValueError):
    """A model name, alias, version reference or file path breaks the naming rules."""


class NotFoundError(RegistryError, LookupError):
    """A model, version, alias or file does not exist in the store."""


class IntegrityError(RegistryError):
    """Stored bytes do not match the sha256 or size recorded in a manifest."""


class StateError(RegistryError):
    """An operation is not allowed in the current state (e.g. promoting a rejected version)."""


class LockTimeoutError(RegistryError, TimeoutError):
    """An inter-process lock could not be acquired in time."""


class MirrorError(RegistryError):
    """The Hugging Face mirror failed; the local store is unaffected."""


class InvalidInputError(RegistryError, ValueError):
    """An argument has the wrong shape (e.g. evidence that is not JSON, an unknown kind)."""
