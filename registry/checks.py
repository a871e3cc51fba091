"""Whole-store consistency check behind :meth:`registry.store.Registry.verify`.

Checks, per model: every manifest parses and is named after its version; every blob it references
exists and re-hashes to its name and size; ``state.json`` parses; every alias and state names an
existing version; ``history.jsonl`` has consecutive sequence numbers and replaying it gives exactly
the aliases in ``state.json``. Then every other blob in the store is re-hashed too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from registry.aliases import AliasLog
from registry.blobs import BlobStore
from registry.errors import NotFoundError, RegistryError
from registry.models import VerifyReport, VersionManifest, is_version

logger = logging.getLogger(__name__)


class Store(Protocol):
    """What the check reads of a :class:`registry.store.Registry`.

    Named here, not imported from :mod:`registry.store`: the store calls this module, so importing
    it back (even only for type checking) would make an import circle.
    """

    root: Path
    blobs: BlobStore

    def _model_dir(self, name: str) -> Path: ...

    def _log(self, name: str) -> AliasLog: ...

    def list_models(self) -> list[str]: ...


def verify_store(reg: Store, name: str | None = None) -> VerifyReport:
    """Check the store (or one model) and return a report; never raises on a finding."""
    problems: list[str] = []
    wanted: dict[str, int] = {}  # sha256 -> size
    if not reg.root.is_dir():
        raise NotFoundError(f"registry root {reg.root} does not exist: nothing to verify (check --root / $SO8T_REGISTRY)")
    if name is not None and not reg._model_dir(name).is_dir():
        raise NotFoundError(f"model {name!r} not found in {reg.root}: see `so8t registry list`")
    names = [name] if name is not None else reg.list_models()
    n_versions = 0
    for model in names:
        versions: set[str] = set()
        vdir = reg._model_dir(model) / "versions"
        for p in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
            try:
                m = VersionManifest.model_validate_json(p.read_bytes())
            except (ValidationError, OSError) as e:
                problems.append(f"{model}: manifest {p.name} unreadable: {type(e).__name__}")
                continue
            n_versions += 1
            if m.name != model or f"{m.version}.json" != p.name:
                problems.append(f"{model}: manifest {p.name} claims {m.name} {m.version}")
            versions.add(m.version)
            for f in m.files:
                if wanted.setdefault(f.sha256, f.size) != f.size:
                    problems.append(f"{model} {m.version}: {f.path} size disagrees across manifests")
        problems.extend(_check_aliases(reg, model, versions))
    blobs_checked = bytes_checked = 0
    for digest, size in sorted(wanted.items()):
        try:
            reg.blobs.verify(digest, size)
        except RegistryError as e:
            problems.append(str(e))
        blobs_checked += 1
        bytes_checked += size
    if name is None:
        for digest in reg.blobs.iter_blobs():
            if digest in wanted:
                continue
            try:
                reg.blobs.verify(digest)
            except RegistryError as e:
                problems.append(f"unreferenced {e}")
            blobs_checked += 1
    for line in problems:
        logger.error("verify: %s", line)
    return VerifyReport(ok=not problems, problems=tuple(problems), versions_checked=n_versions,
                        blobs_checked=blobs_checked, bytes_checked=bytes_checked)


def _check_aliases(reg: Store, model: str, versions: set[str]) -> list[str]:
    problems: list[str] = []
    log = reg._log(model)
    try:
        state = log.read_state()
        history = log.history()
    except (ValidationError, OSError, ValueError) as e:
        return [f"{model}: state.json/history.jsonl unreadable: {type(e).__name__}: {e}"]
    for alias, v in sorted(state.aliases.items()):
        if v not in versions:
            problems.append(f"{model}: alias {alias!r} points to missing version {v}")
    for v in sorted(state.states):
        if not is_version(v) or v not in versions:
            problems.append(f"{model}: state recorded for missing version {v}")
    replay: dict[str, str] = {}
    for i, e in enumerate(history, start=1):
        if e.seq != i:
            problems.append(f"{model}: history seq {e.seq} at position {i}: entries lost or reordered")
            break
        if e.alias is not None:
            if e.to_version is None:
                replay.pop(e.alias, None)
            else:
                replay[e.alias] = e.to_version
    if history and history[-1].seq != state.seq:
        problems.append(f"{model}: history ends at seq {history[-1].seq}, state.json at {state.seq}")
    if replay != state.aliases:
        problems.append(f"{model}: replaying history gives aliases {replay}, state.json has {state.aliases}")
    return problems
