"""Versioned artifact registry for so8t: content-addressed store, aliases, history, Hub mirror.

Import the store with ``from registry import Registry``; the Hugging Face mirror lives in
``registry.hub`` (imported on demand, it pulls in huggingface_hub). This package never imports
torch, transformers or prefect.
"""

from registry.errors import (
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    LockTimeoutError,
    MirrorError,
    NotFoundError,
    RegistryError,
    StateError,
)
from registry.models import (
    CANDIDATE,
    PRODUCTION,
    ArtifactKind,
    FileEntry,
    HistoryEntry,
    Lineage,
    ResolvedVersion,
    VersionManifest,
    VersionState,
    VersionSummary,
)
from registry.store import Registry, default_root

__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "ArtifactKind",
    "FileEntry",
    "HistoryEntry",
    "IntegrityError",
    "InvalidInputError",
    "InvalidNameError",
    "Lineage",
    "LockTimeoutError",
    "MirrorError",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "ResolvedVersion",
    "StateError",
    "VersionManifest",
    "VersionState",
    "VersionSummary",
    "default_root",
]
