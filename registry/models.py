"""Schemas of the registry: version manifests, alias state and history entries.

All models are frozen pydantic models with ``extra="forbid"``; what is written to disk is exactly
``model_dump_json()`` of one of them. This module also holds the naming rules (model names, aliases,
version references, file paths) because every schema and every API call checks them.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path, PurePosixPath

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from registry.errors import IntegrityError, InvalidInputError, InvalidNameError

SCHEMA_VERSION = 1
"""Version of the on-disk manifest format; bump it when a field changes meaning."""

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_PATH = 1024

PRODUCTION = "production"
CANDIDATE = "candidate"


class ArtifactKind(str, Enum):
    """What a file in a version is; used for export and for the Hub model card."""

    HF_MODEL = "hf-model"
    ADAPTER = "adapter"
    GGUF = "gguf"
    CALIBRATION = "calibration"
    REPORT = "report"
    MODELFILE = "modelfile"
    TOKENIZER = "tokenizer"
    CONFIG = "config"
    OTHER = "other"


def infer_kind(path: str) -> ArtifactKind:
    """Guess the kind of a file from its path (override with ``kinds=`` when publishing).

    Rules, first match wins: ``*.gguf`` gguf; ``Modelfile``/``*.modelfile`` modelfile;
    ``adapter_*`` adapter; ``*calibration*`` calibration; ``tokenizer*``, ``vocab.*``,
    ``merges.txt``, ``special_tokens_map.json`` tokenizer; ``*.safetensors``, ``*.bin``, ``*.pt``
    hf-model; ``*config.json`` config; ``*.md``, ``*report*``, ``*.html`` report; else other.
    """
    base = PurePosixPath(path).name.lower()
    if base.endswith(".gguf"):
        return ArtifactKind.GGUF
    if base == "modelfile" or base.endswith(".modelfile"):
        return ArtifactKind.MODELFILE
    if base.startswith("adapter_"):
        return ArtifactKind.ADAPTER
    if "calibration" in base:
        return ArtifactKind.CALIBRATION
    if base.startswith(("tokenizer", "vocab.")) or base in ("merges.txt", "special_tokens_map.json"):
        return ArtifactKind.TOKENIZER
    if base.endswith((".safetensors", ".bin", ".pt")):
        return ArtifactKind.HF_MODEL
    if base.endswith("config.json"):
        return ArtifactKind.CONFIG
    if base.endswith((".md", ".html")) or "report" in base:
        return ArtifactKind.REPORT
    return ArtifactKind.OTHER


class VersionState(str, Enum):
    """Lifecycle state of a version. New versions are candidates."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    REJECTED = "rejected"
    ARCHIVED = "archived"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def check_model_name(name: object) -> str:
    """Validate a model name (one directory in the store).

    Args:
        name: Candidate name.

    Returns:
        The name unchanged.

    Raises:
        InvalidNameError: If the name could escape the store or is not portable.
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"model name {name!r} is invalid: use 1-100 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..' or '/' (e.g. 'so8t-smollm2')"
        )
    return name


def check_alias(alias: object) -> str:
    """Validate an alias name such as ``production`` or ``candidate``.

    Raises:
        InvalidNameError: If the alias is malformed or looks like a version (``v3``).
    """
    if not isinstance(alias, str) or not _ALIAS.match(alias) or _VERSION.match(alias):
        raise InvalidNameError(
            f"alias {alias!r} is invalid: use 1-64 characters from a-z 0-9 _ -, starting with a "
            "letter, and not of the form v<N> (reserved for versions), e.g. 'production'"
        )
    return alias


def check_version(version: object) -> str:
    """Validate a version label such as ``v3``.

    Raises:
        InvalidNameError: If the label is not ``v`` followed by a positive integer.
    """
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidNameError(
            f"version {version!r} is invalid: versions are 'v' followed by a positive integer "
            "without leading zeros, e.g. 'v3'"
        )
    return version


def version_number(version: str) -> int:
    """Return N for ``vN`` (validating it first)."""
    return int(check_version(version)[1:])


def is_version(ref: str) -> bool:
    """Tell whether a reference names a version (``vN``) rather than an alias."""
    return bool(_VERSION.match(ref))


def check_sha256(digest: object) -> str:
    """Validate a lower-case hex sha256 digest.

    Raises:
        InvalidNameError: If the digest is not 64 lower-case hex characters.
    """
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidNameError(
            f"sha256 {digest!r} is invalid: expected 64 lower-case hex characters"
        )
    return digest


def check_relpath(path: object) -> str:
    """Validate a file path inside a version and return its normal form.

    The path must be relative, use ``/`` as separator and stay inside the version: no empty
    components, no ``.`` or ``..``, no NUL, no backslash, no drive letter.

    Args:
        path: Candidate path, e.g. ``"gguf/model.Q4_K_M.gguf"``.

    Returns:
        The path as given (it is already normal when valid).

    Raises:
        InvalidNameError: If the path could escape the version directory.
    """
    rule = (
        "file paths must be relative POSIX paths inside the version (e.g. 'gguf/model.gguf'): "
        "no leading '/', no '..' or '.' components, no empty components, no NUL or backslash"
    )
    if not isinstance(path, str) or not path:
        raise InvalidNameError(f"file path {path!r} is invalid: it is empty; {rule}")
    if "\x00" in path or "\\" in path or len(path) > _MAX_PATH:
        raise InvalidNameError(f"file path {path!r} is invalid: {rule} (max {_MAX_PATH} chars)")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidNameError(f"file path {path!r} is absolute; {rule}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidNameError(f"file path {path!r} is invalid: {rule}")
    if any(ord(c) < 32 for c in path):
        raise InvalidNameError(f"file path {path!r} contains control characters; {rule}")
    return str(PurePosixPath(path))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Frozen):
    """One file of a version: where it goes, what it is and its content hash."""

    path: str = Field(description="Relative POSIX path of the file inside the version.")
    sha256: str = Field(description="Lower-case hex sha256 of the content; also the blob name.")
    size: int = Field(ge=0, description="Size of the content in bytes.")
    kind: ArtifactKind = Field(description="What the file is (gguf, adapter, modelfile, ...).")

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return check_relpath(v)

    @field_validator("sha256")
    @classmethod
    def _sha_ok(cls, v: str) -> str:
        return check_sha256(v)


class Lineage(_Frozen):
    """Where a version came from."""

    parents: tuple[str, ...] = Field(
        default=(),
        description="Parent versions, 'vN' in the same model or '<model>:vN' in another model.",
    )
    base_model: str | None = Field(
        default=None, description="Hub id or path of the base model, e.g. 'HuggingFaceTB/...'."
    )
    dataset_hashes: dict[str, str] = Field(
        default_factory=dict, description="Dataset name -> sha256 of the data used for training."
    )
    code_revision: str | None = Field(
        default=None, description="Git revision of the code that produced the version."
    )


class VersionManifest(_Frozen):
    """Immutable description of one published version; written once, never changed."""

    schema_version: int = Field(default=SCHEMA_VERSION, description="On-disk format version.")
    name: str = Field(description="Model name the version belongs to.")
    version: str = Field(description="Version label, 'v' + number, unique per model.")
    created_at: datetime = Field(default_factory=_utcnow, description="UTC publish time.")
    files: tuple[FileEntry, ...] = Field(description="Files of the version, sorted by path.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics.")
    parameters: dict[str, JsonValue] = Field(
        default_factory=dict, description="Training/conversion parameters (JSON values)."
    )
    lineage: Lineage = Field(default_factory=Lineage, description="Parents, base, data, code.")
    flow_run_id: str | None = Field(
        default=None, description="Prefect flow-run id that published the version, if any."
    )
    description: str = Field(default="", description="Free-text note shown in listings.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return check_model_name(v)

    @field_validator("metrics")
    @classmethod
    def _metrics_finite(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, x in v.items() if not math.isfinite(x))
        if bad:
            raise ValueError(f"metrics {bad} are not finite numbers: JSON cannot store NaN or infinity; leave them out")
        return v

    @field_validator("version")
    @classmethod
    def _version_ok(cls, v: str) -> str:
        return check_version(v)

    @field_validator("files")
    @classmethod
    def _files_ok(cls, v: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        paths = [f.path for f in v]
        if len(set(paths)) != len(paths):
            dup = sorted({p for p in paths if paths.count(p) > 1})
            raise ValueError(f"duplicate file paths {dup}: each path may appear once per version")
        folded = {p.lower() for p in paths}
        if len(folded) != len(paths):
            raise ValueError("file paths differ only by case: exports to case-insensitive disks break")
        return tuple(sorted(v, key=lambda f: f.path))

    @property
    def number(self) -> int:
        """The N of ``vN``."""
        return int(self.version[1:])

    @property
    def total_size(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        """Return the entry for ``path``.

        Raises:
            KeyError: If the version has no such file.
        """
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


class HistoryEntry(_Frozen):
    """One change of an alias or of a version state; history.jsonl holds one per line."""

    seq: int = Field(ge=1, description="Position in the model's history, 1, 2, 3, ...")
    time: datetime = Field(default_factory=_utcnow, description="UTC time of the change.")
    action: str = Field(description="promote, rollback, reject or unalias.")
    alias: str | None = Field(default=None, description="Alias that moved; None for state-only.")
    from_version: str | None = Field(default=None, description="Alias value before the change.")
    to_version: str | None = Field(default=None, description="Alias value after the change.")
    version: str = Field(description="Version the operation was about.")
    state_changes: dict[str, VersionState] = Field(
        default_factory=dict, description="Version -> new state set by this change."
    )
    reason: str = Field(default="", description="Why (free text from the caller).")
    evidence: dict[str, JsonValue] = Field(
        default_factory=dict, description="Gate evidence: metrics, thresholds, report refs."
    )
    actor: str = Field(default="", description="user@host that made the change.")
    flow_run_id: str | None = Field(default=None, description="Prefect flow-run id, if any.")


class ModelState(_Frozen):
    """Mutable head of one model, replaced atomically as a whole (state.json).

    It is small and does not grow with the number of versions unless versions change state, so
    alias changes never scan versions.
    """

    seq: int = Field(default=0, ge=0, description="seq of the last committed history entry.")
    aliases: dict[str, str] = Field(default_factory=dict, description="Alias -> version.")
    states: dict[str, VersionState] = Field(
        default_factory=dict, description="Version -> state, only for versions not 'candidate'."
    )
    undo: dict[str, tuple[str | None, ...]] = Field(
        default_factory=dict,
        description="Alias -> previous values, newest last; rollback pops from here.",
    )
    last_entries: tuple[HistoryEntry, ...] = Field(
        default=(), description="History entries of the last operation (crash recovery)."
    )

    def state_of(self, version: str) -> VersionState:
        """Return the state of ``version`` (candidate unless recorded otherwise)."""
        return self.states.get(version, VersionState.CANDIDATE)


class VerifyReport(_Frozen):
    """Result of :meth:`registry.store.Registry.verify`."""

    ok: bool = Field(description="True when no problem was found.")
    problems: tuple[str, ...] = Field(default=(), description="One line per problem found.")
    versions_checked: int = Field(default=0, description="Manifests read.")
    blobs_checked: int = Field(default=0, description="Distinct blobs re-hashed.")
    bytes_checked: int = Field(default=0, description="Bytes re-hashed.")


class GcReport(_Frozen):
    """Result of :meth:`registry.store.Registry.gc`."""

    removed_blobs: tuple[str, ...] = Field(default=(), description="sha256 of removed blobs.")
    removed_tmp: int = Field(default=0, description="Leftover temporary files removed.")
    freed_bytes: int = Field(default=0, description="Bytes freed.")
    dry_run: bool = Field(default=False, description="True when nothing was deleted.")


class VersionSummary(_Frozen):
    """One row of :meth:`registry.store.Registry.list_versions`."""

    version: str = Field(description="Version label.")
    state: VersionState = Field(description="Lifecycle state.")
    aliases: tuple[str, ...] = Field(default=(), description="Aliases pointing at this version.")
    created_at: datetime = Field(description="UTC publish time.")
    files: int = Field(description="Number of files.")
    size: int = Field(description="Total size in bytes.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Metrics of the version.")
    description: str = Field(default="", description="Free-text note.")


class ResolvedVersion(_Frozen):
    """A version looked up by :meth:`registry.store.Registry.get`: manifest plus blob paths.

    The paths point into the store and are read-only; use ``Registry.export`` to get a plain
    writable directory.
    """

    manifest: VersionManifest = Field(description="The version's manifest.")
    state: VersionState = Field(description="Lifecycle state at lookup time.")
    paths: dict[str, Path] = Field(description="File path in the version -> blob path on disk.")
    verified: bool = Field(description="True when every blob was re-hashed by this lookup.")

    @property
    def version(self) -> str:
        """Shortcut for ``manifest.version``."""
        return self.manifest.version

    def path(self, relpath: str) -> Path:
        """Blob path of one file of the version.

        Raises:
            KeyError: If the version has no such file.
        """
        return self.paths[relpath]

    def paths_of_kind(self, kind: ArtifactKind | str) -> list[Path]:
        """Blob paths of every file of the given kind, sorted by file path."""
        k = ArtifactKind(kind)
        return [self.paths[f.path] for f in self.manifest.files if f.kind == k]


#: Bounds on JSON carried in manifests and history (evidence, metrics, parameters): deeper nesting
#: than this cannot be read back by Python's json module in every setting, and larger payloads
#: belong in a file of the version, referenced from the evidence.
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 1_000_000


def check_json_payload(value: object, field: str) -> None:
    """Refuse JSON that the registry could write but not safely read back.

    Raises:
        InvalidInputError: nesting deeper than :data:`MAX_JSON_DEPTH`, a non-finite number (JSON
            has no NaN or Infinity), a non-string key, or more than :data:`MAX_JSON_BYTES` encoded.
    """
    import json

    stack: list[tuple[object, int, str]] = [(value, 0, field)]
    while stack:
        v, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInputError(f"{field} is nested deeper than {MAX_JSON_DEPTH} levels (at {where[:80]}...): "
                                    "flatten it or store it as a file of the version")
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidInputError(f"{where}: {v} is not finite (JSON has no NaN or Infinity): "
                                    "record a finite value or null explicitly")
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise InvalidInputError(f"{where}: key {k!r} is not a string")
                stack.append((item, depth + 1, f"{where}.{k}"))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(v))
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{field} is not JSON: {e}") from None
    if size > MAX_JSON_BYTES:
        raise InvalidInputError(f"{field} is {size} bytes of JSON, over the {MAX_JSON_BYTES} limit: "
                                "store it as a file of the version and reference it")


_M = TypeVar("_M", bound=BaseModel)


def parse_stored(cls: type[_M], raw: bytes | str, where: str) -> _M:
    """A registry record read back from disk; a corrupt one is an IntegrityError naming ``where``
    (``path`` or ``path:line``) instead of pydantic's multi-line report.

    Raises:
        IntegrityError: the bytes are not valid JSON or not a valid ``cls``.
    """
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        what = err["msg"] if err["type"] == "json_invalid" else f"field '{loc}': {err['msg']}"
        raise IntegrityError(f"{where}: corrupt {cls.__name__} ({what}): restore it from a backup, or run "
                             "`so8t registry verify` to see what else is damaged") from None


def parse_parent(ref: str, name: str) -> tuple[str, str]:
    """``vN`` (a version of ``name``) or ``<model>:vN`` as ``(model, version)``.

    Raises:
        InvalidInputError: any other form.
    """
    model, sep, version = ref.rpartition(":")
    model = model if sep else name
    try:
        check_model_name(model)
    except InvalidNameError:
        raise InvalidInputError(f"parent {ref!r}: {model!r} is not a model name: use vN or <model>:vN") from None
    if not is_version(version):
        raise InvalidInputError(f"parent {ref!r}: {version!r} is not a version: use vN or <model>:vN, e.g. v3")
    return model, version
