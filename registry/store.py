"""The local artifact store: publish, look up, promote, reject, roll back, verify, gc, export.

Layout under the root (``$SO8T_REGISTRY``, default ``~/.cache/so8t/registry``)::

    blobs/sha256/ab/ab12...      content-addressed, read-only, deduplicated
    tmp/                         temporaries (same file system, so renames are atomic)
    gc.rwlock                    shared by publishers, exclusive for gc (SQLite reader/writer lock)
    models/<name>/versions/vN.json   immutable manifests (created with link(): all or nothing)
    models/<name>/state.json     aliases + version states (atomic replace, the commit point)
    models/<name>/history.jsonl  append-only alias/state history
    models/<name>/lock           file lock serialising alias changes
    mirror/                      Hub mirror bookkeeping (registry.hub), never needed locally

A version becomes visible only when its manifest is linked into ``versions/``, after all its blobs
are durable, so no reader ever sees a partial version, whatever instant a process is killed at.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import JsonValue, ValidationError

from registry import aliases as al
from registry.blobs import BlobStore
from registry.checks import verify_store
from registry.errors import IntegrityError, InvalidInputError, NotFoundError, RegistryError, StateError
from registry.fsio import create_exclusive, remove
from registry.locks import DEFAULT_TIMEOUT_S, GC_LOCK, rw_lock
from registry.modelcard import RESERVED_PATHS
from registry.models import (
    PRODUCTION,
    ArtifactKind,
    FileEntry,
    GcReport,
    HistoryEntry,
    Lineage,
    ModelState,
    ResolvedVersion,
    VerifyReport,
    VersionManifest,
    check_json_payload,
    VersionSummary,
    check_alias,
    check_model_name,
    check_relpath,
    infer_kind,
    is_version,
    parse_parent,
    parse_stored,
)

logger = logging.getLogger(__name__)

ENV_ROOT = "SO8T_REGISTRY"
DEFAULT_ROOT = Path("~/.cache/so8t/registry")

FileSource = Path | str | bytes
STALE_TMP_S = 600.0
"""gc removes non-blob temporary files older than this (a live write takes milliseconds)."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def default_root() -> Path:
    """The registry root: ``$SO8T_REGISTRY`` if set, else ``~/.cache/so8t/registry``."""
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser()


class Registry:
    """A versioned artifact store rooted at one directory. Safe across processes."""

    def __init__(self, root: Path | str | None = None, *, lock_timeout_s: float = DEFAULT_TIMEOUT_S):
        """Args:
        root: Store directory; defaults to :func:`default_root`. Created on first write.
        lock_timeout_s: How long operations wait for inter-process locks.
        """
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.blobs = BlobStore(self.root)
        self.lock_timeout_s = lock_timeout_s

    # ------------------------------------------------------------------ paths
    def _model_dir(self, name: str) -> Path:
        return self.root / "models" / check_model_name(name)

    def _manifest_path(self, name: str, version: str) -> Path:
        return self._model_dir(name) / "versions" / f"{version}.json"

    def _log(self, name: str) -> al.AliasLog:
        return al.AliasLog(self._model_dir(name), self.blobs.tmp_dir, self.lock_timeout_s)

    # ---------------------------------------------------------------- publish
    def publish(
        self,
        name: str,
        source: Path | str | Mapping[str, FileSource],
        *,
        kinds: Mapping[str, ArtifactKind | str] | None = None,
        metrics: Mapping[str, float] | None = None,
        parameters: Mapping[str, JsonValue] | None = None,
        lineage: Lineage | Mapping[str, Any] | None = None,
        flow_run_id: str | None = None,
        description: str = "",
        min_version: int = 1,
    ) -> VersionManifest:
        """Store files as the next version (v1, v2, ...) of ``name``.

        Args:
            name: Model name, e.g. ``"so8t-smollm2"``.
            source: A directory (all regular files below it, recursively) or a mapping of
                relative path -> source file path or bytes.
            kinds: Relative path -> kind, overriding :func:`registry.models.infer_kind`.
            metrics: Evaluation metrics (name -> number).
            parameters: Parameters that produced the artifacts (JSON values).
            lineage: Parents, base model, dataset hashes, code revision.
            flow_run_id: Prefect flow-run id, when published from a flow.
            description: Free-text note.
            min_version: The lowest number the new version may take: when several registries publish one
                model through a shared Hub mirror, the Hub's highest tag + 1 (``registry.hub.HubMirror.
                next_version``), so a number is never given to two different versions.

        Returns:
            The manifest of the new version (state: candidate).

        Raises:
            InvalidNameError: If the name or a file path is invalid.
            InvalidInputError: If the source is empty, a kind is unknown or metadata is not JSON.
        """
        check_model_name(name)
        files = self._collect(source)
        kinds = dict(kinds or {})
        unknown = sorted(set(kinds) - set(files))
        if unknown:
            raise InvalidInputError(
                f"kinds given for files not in the source: {unknown}; kinds keys must be relative "
                f"paths among {sorted(files)[:10]}"
            )
        self.blobs.ensure()
        versions_dir = self._model_dir(name) / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        with rw_lock(self.root / GC_LOCK, write=False, timeout_s=self.lock_timeout_s):
            entries = self._store_files(files, kinds)
            draft = self._checked_draft(name, entries, metrics, parameters, lineage, flow_run_id, description)
            manifest = self._claim_next_version(name, versions_dir, draft, min_version)
        logger.info("published %s %s (%d files, %d bytes)", name, manifest.version,
                    len(manifest.files), manifest.total_size)
        return manifest

    def adopt(self, manifest: VersionManifest, fetch: Callable[[FileEntry], Path]) -> tuple[bool, tuple[str, ...]]:
        """Make a version built in another registry visible here under its own number (``registry.hub`` pull).

        Under the shared gc lock, every file whose blob is missing (or no longer re-hashes to its name) is
        obtained with ``fetch(entry)``, which returns a file in :attr:`BlobStore.tmp_dir` (same file system);
        it becomes a blob only if it hashes to the manifest's sha256 and size. The manifest is linked last, so
        the version appears complete or not at all; blobs of an interrupted adopt stay (a rerun skips them)
        until it completes or gc collects them. Lineage parents are not required to be here.

        Returns:
            ``(linked, fetched)``: whether the manifest was linked now (False: an identical one was already
            there) and the paths ``fetch`` was called for.

        Raises:
            IntegrityError: A fetched file does not match the manifest (nothing is published).
            StateError: This registry already has ``manifest.version`` with different content.
        """
        name, version = manifest.name, manifest.version
        check_model_name(name)
        if self.local_copy(manifest) is not None:
            return False, ()
        self.blobs.ensure()
        fetched: list[str] = []
        with rw_lock(self.root / GC_LOCK, write=False, timeout_s=self.lock_timeout_s):
            for f in manifest.files:
                if self.blobs.exists(f.sha256):
                    try:
                        self.blobs.verify(f.sha256, f.size)
                        continue
                    except IntegrityError as e:
                        logger.warning("%s %s: local blob of %s is damaged (%s): fetching it again", name, version,
                                       f.path, e)
                tmp = fetch(f)
                try:
                    self.blobs.adopt_file(Path(tmp), f.sha256, f.size)
                except IntegrityError as e:
                    raise IntegrityError(f"{name} {version}: {f.path} refused: {e}; nothing published") from None
                fetched.append(f.path)
            path = self._manifest_path(name, version)
            path.parent.mkdir(parents=True, exist_ok=True)
            linked = create_exclusive(path, manifest.model_dump_json(indent=1).encode(), tmp_dir=self.blobs.tmp_dir)
        if not linked:
            self.local_copy(manifest)  # another process linked it first: the same, or refuse
        logger.info("adopted %s %s (%d files, %d fetched)", name, version, len(manifest.files), len(fetched))
        return linked, tuple(fetched)

    def local_copy(self, manifest: VersionManifest) -> VersionManifest | None:
        """This registry's manifest of ``manifest.version`` if it is identical to ``manifest``, None if the
        version is not here.

        Raises:
            StateError: The version exists here with different content (files or metadata).
        """
        path = self._manifest_path(manifest.name, manifest.version)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        local = parse_stored(VersionManifest, raw, str(path))
        if local != manifest:
            ours = {f.path: f.sha256 for f in local.files}
            theirs = {f.path: f.sha256 for f in manifest.files}
            diff = sorted(p for p in ours.keys() | theirs.keys() if ours.get(p) != theirs.get(p))
            what = f"files {diff[:5]} differ" if diff else "same files, different metadata (created_at/metrics/parameters)"
            raise StateError(
                f"{manifest.name} {manifest.version} already exists in {self.root} with different content ({what}): "
                "versions are numbered per registry, so this one was built here independently; pull into an empty "
                "registry, or use this registry's own version")
        return local

    def _store_files(self, files: Mapping[str, FileSource], kinds: Mapping[str, ArtifactKind | str]) -> list[FileEntry]:
        """Each file into the blob store (under the gc lock, held by the caller), as a manifest entry."""
        entries = []
        for rel, src in sorted(files.items()):
            digest, size = (
                self.blobs.put_bytes(src) if isinstance(src, bytes) else self.blobs.put_file(Path(src))
            )
            try:
                kind = ArtifactKind(kinds[rel]) if rel in kinds else infer_kind(rel)
            except ValueError:
                raise InvalidInputError(
                    f"kind {kinds[rel]!r} of {rel} is unknown: use one of "
                    f"{[k.value for k in ArtifactKind]}"
                ) from None
            entries.append(FileEntry(path=rel, sha256=digest, size=size, kind=kind))
        return entries

    def _checked_draft(self, name: str, entries: list[FileEntry], metrics: Mapping[str, float] | None,
                       parameters: Mapping[str, JsonValue] | None, lineage: Lineage | Mapping[str, Any] | None,
                       flow_run_id: str | None, description: str) -> dict[str, Any]:
        """The new version's manifest fields, validated (a manifest without its number) with every parent
        present in the store, before a version number is claimed."""
        check_json_payload(dict(metrics or {}), "metrics")
        check_json_payload(dict(parameters or {}), "parameters")
        try:
            lin = lineage if isinstance(lineage, Lineage) else Lineage(**(lineage or {}))
            draft = dict(
                name=name, files=tuple(entries), metrics=dict(metrics or {}),
                parameters=dict(parameters or {}), lineage=lin, flow_run_id=flow_run_id,
                description=description,
            )
            VersionManifest(version="v1", **draft)  # validate before claiming a number
            for parent in lin.parents:
                pmodel, pversion = parse_parent(parent, name)
                if not self._manifest_path(pmodel, pversion).is_file():
                    raise InvalidInputError(f"parent {parent!r}: model {pmodel!r} has no version {pversion} in "
                                            f"{self.root}: see `so8t registry list {pmodel}`")
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidInputError(
                f"version metadata rejected: {err['msg']} at {'.'.join(map(str, err['loc']))}; "
                "metrics must be numbers, parameters/evidence JSON values"
            ) from None
        return draft

    def _claim_next_version(self, name: str, versions_dir: Path, draft: dict[str, Any],
                            min_version: int = 1) -> VersionManifest:
        """Write the manifest as the next free vN (at least ``min_version``): each number claimed with an exclusive
        link (another publisher may win a number; then the next one is tried)."""
        number = max(self._max_version(name) + 1, min_version)
        while True:
            manifest = VersionManifest(version=f"v{number}", **draft)
            path = versions_dir / f"{manifest.version}.json"
            if create_exclusive(path, manifest.model_dump_json(indent=1).encode(), tmp_dir=self.blobs.tmp_dir):
                return manifest
            number += 1

    def _collect(self, source: Path | str | Mapping[str, FileSource]) -> dict[str, FileSource]:
        if isinstance(source, Mapping):
            files: dict[str, FileSource] = {}
            for rel, src in source.items():
                files[check_relpath(rel)] = src
                if not isinstance(src, bytes) and not Path(src).is_file():
                    raise InvalidInputError(
                        f"source of {rel!r} is {src!r}, which is not a regular file: pass an "
                        "existing file path or bytes"
                    )
        else:
            base = Path(source)
            if not base.is_dir():
                raise InvalidInputError(
                    f"publish source {base} is not a directory: pass a directory or a mapping of "
                    "relative path -> file"
                )
            files = {
                check_relpath(p.relative_to(base).as_posix()): p
                for p in sorted(base.rglob("*")) if p.is_file()
            }
            if ".gitattributes" in files:  # git metadata of a Hugging Face checkout, not model content
                logger.info("publish: skipping %s (git metadata; the Hub mirror writes its own)", base / ".gitattributes")
                del files[".gitattributes"]
        clash = sorted(set(files) & RESERVED_PATHS)
        if clash:
            raise InvalidInputError(
                f"a version may not contain {', '.join(clash)}: the Hub mirror writes these paths itself, so the "
                "version could never be mirrored; rename or drop the file(s)")
        if not files:
            raise InvalidInputError(f"nothing to publish from {source!r}: it contains no files")
        return files

    def _max_version(self, name: str) -> int:
        vdir = self._model_dir(name) / "versions"
        best = 0
        if vdir.is_dir():
            for entry in os.scandir(vdir):
                stem = entry.name[:-5] if entry.name.endswith(".json") else ""
                if is_version(stem):
                    best = max(best, int(stem[1:]))
        return best

    # ----------------------------------------------------------------- lookup
    def list_models(self) -> list[str]:
        """Names of the models that have at least one version."""
        mdir = self.root / "models"
        if not mdir.is_dir():
            return []
        return sorted(d.name for d in mdir.iterdir() if (d / "versions").is_dir())

    def resolve(self, name: str, ref: str = PRODUCTION) -> str:
        """Turn a reference (``v3``, ``3`` or an alias) into a version label.

        Raises:
            NotFoundError: If the version does not exist or the alias is not set.
        """
        if isinstance(ref, str) and re.fullmatch(r"[0-9]+", ref):  # ASCII only: str.isdigit() takes '١' as 1
            ref = f"v{int(ref)}"
        if isinstance(ref, str) and is_version(ref):
            if not self._manifest_path(name, ref).is_file():
                raise NotFoundError(
                    f"version {ref} of model {name!r} does not exist in {self.root}: "
                    "see `so8t registry list " + name + "`"
                )
            return ref
        alias = check_alias(ref)
        version = self._log(name).read_state().aliases.get(alias)
        if version is None:
            raise NotFoundError(
                f"alias {alias!r} of model {name!r} is not set: promote a version first "
                f"(so8t registry promote {name} vN --alias {alias})"
            )
        return version

    def manifest(self, name: str, ref: str = PRODUCTION) -> VersionManifest:
        """Read a manifest without touching blobs."""
        version = self.resolve(name, ref)
        path = self._manifest_path(name, version)
        return parse_stored(VersionManifest, path.read_bytes(), str(path))

    def state(self, name: str) -> ModelState:
        """Aliases and version states of ``name`` (one small file read)."""
        check_model_name(name)
        return self._log(name).read_state()

    def state_file(self, name: str) -> Path:
        """The file whose replacement commits every alias change of ``name`` (``state.json``): a watcher
        that ``os.stat``s it sees each change as a new inode, mtime or size, without reading it."""
        check_model_name(name)
        return self._model_dir(name) / "state.json"

    def get(self, name: str, ref: str = PRODUCTION, *, verify: bool = True) -> ResolvedVersion:
        """Look up a version and (by default) re-hash its blobs.

        Raises:
            NotFoundError: If the version, alias or a blob is missing.
            IntegrityError: If a blob does not match its manifest; the version is refused.
        """
        m = self.manifest(name, ref)
        if verify:
            for f in m.files:
                self.blobs.verify(f.sha256, f.size)
        return ResolvedVersion(
            manifest=m, state=self.state(name).state_of(m.version), verified=verify,
            paths={f.path: self.blobs.path(f.sha256) for f in m.files},
        )

    def list_versions(self, name: str) -> list[VersionSummary]:
        """Every version of ``name`` with its state and aliases, oldest first."""
        state = self.state(name)
        vdir = self._model_dir(name) / "versions"
        if not vdir.is_dir():
            raise NotFoundError(f"model {name!r} has no versions in {self.root}: publish one first")
        labels = sorted((p.stem for p in vdir.glob("v*.json") if is_version(p.stem)),
                        key=lambda v: int(v[1:]))
        rows = []
        for v in labels:
            m = parse_stored(VersionManifest, (vdir / f"{v}.json").read_bytes(), str(vdir / f"{v}.json"))
            rows.append(VersionSummary(
                version=v, state=state.state_of(v), created_at=m.created_at, files=len(m.files),
                size=m.total_size, metrics=m.metrics, description=m.description,
                aliases=tuple(sorted(a for a, t in state.aliases.items() if t == v)),
            ))
        return rows

    def history(self, name: str, alias: str | None = None) -> list[HistoryEntry]:
        """Alias and state changes of ``name``, oldest first (optionally of one alias).

        Raises:
            NotFoundError: ``name`` has never been published here.
        """
        check_model_name(name)
        if not self._model_dir(name).is_dir():
            raise NotFoundError(f"model {name!r} not found in {self.root}: see `so8t registry list`")
        entries = self._log(name).history()
        return [e for e in entries if alias is None or e.alias == check_alias(alias)]

    # ---------------------------------------------------------- alias changes
    @staticmethod
    def _common(reason: str, evidence: Mapping[str, Any] | None, flow_run_id: str | None) -> dict:
        check_json_payload(dict(evidence or {}), "evidence")
        return {"reason": reason, "evidence": dict(evidence or {}), "flow_run_id": flow_run_id}

    def promote(
        self, name: str, ref: str, alias: str = PRODUCTION, *, evidence: Mapping[str, Any] | None = None,
        reason: str = "", force: bool = False, flow_run_id: str | None = None,
    ) -> HistoryEntry | None:
        """Point ``alias`` at a version, recording gate evidence.

        Promoting to ``production`` marks the version production and the previous one archived.

        Returns:
            The history entry, or None when the alias already pointed there.

        Raises:
            StateError: If the version is rejected (unless ``force``).
        """
        check_alias(alias)
        version = self.resolve(name, ref)
        out = self._log(name).change(
            al.promote_change(version, alias, force=force, common=self._common(reason, evidence, flow_run_id))
        )
        return out[0] if out else None

    def reject(
        self, name: str, ref: str, *, reason: str = "", evidence: Mapping[str, Any] | None = None,
        flow_run_id: str | None = None,
    ) -> list[HistoryEntry]:
        """Mark a version rejected and drop every alias pointing at it.

        Raises:
            StateError: If the version is production (roll back first).
        """
        version = self.resolve(name, ref)
        return self._log(name).change(
            al.reject_change(version, common=self._common(reason, evidence, flow_run_id))
        )

    def rollback(
        self, name: str, alias: str = PRODUCTION, *, to: str | None = None, reason: str = "",
        evidence: Mapping[str, Any] | None = None, force: bool = False, flow_run_id: str | None = None,
    ) -> HistoryEntry | None:
        """Move ``alias`` back to its previous value, or to the version ``to``.

        Repeated rollbacks walk further back (an undo stack); versions rejected in the meantime
        are skipped.

        Raises:
            StateError: If there is no earlier value, or ``to`` is rejected (unless ``force``).
        """
        check_alias(alias)
        if not (self._model_dir(name) / "versions").is_dir():  # before the alias log takes a lock there
            raise NotFoundError(f"model {name!r} has no versions in {self.root}: nothing to roll back")
        target = self.resolve(name, to) if to is not None else None
        out = self._log(name).change(
            al.rollback_change(alias, target, force=force, common=self._common(reason, evidence, flow_run_id))
        )
        return out[0] if out else None

    # ------------------------------------------------------ maintenance
    def verify(self, name: str | None = None) -> VerifyReport:
        """Re-hash every blob and check manifests, aliases and history agree.

        Args:
            name: Check one model (and only its blobs); None checks the whole store.
        """
        return verify_store(self, name)

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Delete blobs no manifest references, and leftover temporaries.

        Runs under the exclusive gc lock, so a publish in progress keeps its blobs.

        Raises:
            RegistryError: If a manifest cannot be read (gc refuses to guess what it references).
        """
        self.blobs.ensure()
        with rw_lock(self.root / GC_LOCK, write=True, timeout_s=self.lock_timeout_s):
            referenced: set[str] = set()
            for name in self.list_models():
                for p in (self._model_dir(name) / "versions").glob("v*.json"):
                    try:
                        m = VersionManifest.model_validate_json(p.read_bytes())
                    except (ValidationError, OSError) as e:
                        raise RegistryError(
                            f"gc stopped: manifest {p} is unreadable ({type(e).__name__}); run "
                            "`so8t registry verify` and repair it before collecting garbage"
                        ) from None
                    referenced.update(f.sha256 for f in m.files)
            removed, freed = [], 0
            strays = self.blobs.strays()
            if strays:
                logger.warning("gc: %d entr%s under %s %s not a blob and %s left alone: %s", len(strays),
                               "y" if len(strays) == 1 else "ies", self.blobs.dir, "is" if len(strays) == 1 else "are",
                               "is" if len(strays) == 1 else "are", ", ".join(str(p) for p in strays[:5]))
            for digest in list(self.blobs.iter_blobs()):
                if digest not in referenced:
                    removed.append(digest)
                    if not dry_run:
                        freed += self.blobs.remove(digest)
                    else:
                        freed += self.blobs.path(digest).stat().st_size
            # Blob temporaries belong to publishers, all excluded by the lock: any left is dead.
            # Other temporaries (alias state, mirror state) are written without the gc lock, so
            # only old ones are known dead.
            cutoff = time.time() - STALE_TMP_S
            tmps = [t for t in self.blobs.tmp_dir.iterdir()
                    if t.name.startswith("blob-") or _mtime(t) < cutoff]
            if not dry_run:
                for t in tmps:
                    if t.is_dir() and not t.is_symlink():  # an interrupted Hub pull's download folder
                        shutil.rmtree(t, ignore_errors=True)
                    else:
                        remove(t)
        logger.info("gc: %d blobs (%d bytes), %d temporaries%s", len(removed), freed, len(tmps),
                    " (dry run)" if dry_run else "")
        return GcReport(removed_blobs=tuple(removed), removed_tmp=len(tmps), freed_bytes=freed,
                        dry_run=dry_run)

    def export(
        self, name: str, ref: str, dest: Path | str, *, link: bool = False, with_manifest: bool = False,
    ) -> Path:
        """Write a version's files to a plain directory (e.g. for llama.cpp or Ollama).

        Every byte is re-hashed on the way; a corrupted blob stops the export.

        Args:
            name: Model name.
            ref: Version or alias.
            dest: Target directory; must not exist or be empty.
            link: Hard-link blobs instead of copying (read-only files; falls back to copying
                across file systems).
            with_manifest: Also write ``registry-manifest.json``.

        Returns:
            ``dest``.
        """
        from registry.export import export_version

        return export_version(self.blobs, self.manifest(name, ref), Path(dest), link=link,
                              with_manifest=with_manifest)


__all__ = ["DEFAULT_ROOT", "ENV_ROOT", "Registry", "default_root"]
