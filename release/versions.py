"""Registry lookups and the idempotent publish of a release (plain functions over :class:`registry.Registry`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from registry import PRODUCTION, NotFoundError, Registry, VersionManifest, VersionState
from so8t.digests import file_digest

logger = logging.getLogger("so8t.release")


def open_registry(root: str | None) -> Registry:
    """The registry at ``root`` (None: ``$SO8T_REGISTRY`` or ``~/.cache/so8t/registry``)."""
    return Registry(root)


def find_identical(reg: Registry, name: str, files: dict[str, str], parameters: dict[str, Any]) -> VersionManifest | None:
    """An existing version with exactly these files (by content) and parameters, if any."""
    try:
        versions = reg.list_versions(name)
    except NotFoundError:
        return None
    wanted = {rel: file_digest(Path(src)) for rel, src in files.items()}
    for summary in reversed(versions):
        m = reg.manifest(name, summary.version)
        if {f.path: f.sha256 for f in m.files} == wanted and m.parameters == parameters:
            return m
    return None


def publish_version(reg: Registry, name: str, files: dict[str, str], *, kinds: dict[str, str] | None = None,
                    metrics: dict[str, float] | None = None, parameters: dict[str, Any] | None = None,
                    lineage: dict[str, Any] | None = None, description: str = "",
                    flow_run_id: str | None = None, mirror: Any = None) -> tuple[VersionManifest, bool]:
    """Publish ``files`` as the next version unless an identical version exists (idempotent).

    With a Hub mirror configured (``mirror``: :class:`release.params.MirrorSettings` or None, see
    :func:`mirror_configured`), the number is at least the Hub's highest version + 1
    (:func:`hub_next_version`): hosts that share the mirror then never give one number to two versions.

    Returns:
        The manifest and whether it was published now (False: an identical version was found).

    Raises:
        registry.MirrorError: A mirror is configured and the Hub cannot be reached to number the version.
    """
    parameters = parameters or {}
    m = find_identical(reg, name, files, parameters)
    if m is not None:
        return m, False
    floor = hub_next_version(reg, name, mirror) if mirror_configured(mirror) else 1
    return reg.publish(name, files, kinds=kinds, metrics=metrics, parameters=parameters, lineage=lineage,
                       flow_run_id=flow_run_id, description=description, min_version=floor), True


def hub_next_version(reg: Registry, name: str, mirror: Any) -> int:
    """The lowest version number the Hub mirror has not seen (its highest ``vN`` tag + 1)."""
    from registry.hub import HubMirror, MirrorConfig

    cfg = MirrorConfig.from_env(repo_id=getattr(mirror, "repo_id", None), endpoint=getattr(mirror, "endpoint", None))
    n = HubMirror(reg, cfg).next_version(name)
    logger.info("%s: the Hub mirror %s has versions up to v%d; the next version here is at least v%d",
                name, cfg.repo_id, n - 1, n)
    return n


class VersionInfo(BaseModel):
    """A version's manifest and its lifecycle state at lookup time."""

    manifest: VersionManifest
    state: VersionState
    is_production: bool


def resolve_version(root: str | None, name: str, ref: str) -> VersionInfo:
    """Resolve ``ref`` (``vN``, ``N``, an alias) to a manifest and state."""
    reg = open_registry(root)
    m = reg.manifest(name, ref)
    st = reg.state(name)
    return VersionInfo(manifest=m, state=st.state_of(m.version), is_production=st.aliases.get(PRODUCTION) == m.version)


def newest_uncalibrated_candidate(reg: Registry, name: str) -> str | None:
    """The newest version in state candidate that has no calibration and was not calibrated since."""
    versions = reg.list_versions(name)
    manifests = [reg.manifest(name, v.version) for v in versions]
    parents = {p for m in manifests for p in m.lineage.parents}
    for v, m in zip(reversed(versions), reversed(manifests)):
        calibrated = any(f.kind.value == "calibration" for f in m.files)
        if v.state == VersionState.CANDIDATE and not calibrated and m.version not in parents:
            return m.version
    return None


def find_candidate(root: str | None, name: str) -> str:
    """The newest candidate that still awaits calibration (NotFoundError when there is none)."""
    version = newest_uncalibrated_candidate(open_registry(root), name)
    if version is None:
        raise NotFoundError(f"model {name!r} has no candidate awaiting calibration: run the retrain flow, "
                            "or pass an explicit version")
    return version


def production_version(root: str | None, name: str) -> str | None:
    """The version the production alias points at, or None."""
    try:
        return open_registry(root).state(name).aliases.get(PRODUCTION)
    except NotFoundError:
        return None


def earlier_production_versions(reg: Registry, name: str, before: str) -> list[str]:
    """Versions older than ``before`` that once served in production (archived), newest first."""
    n = int(before[1:])
    return [v.version for v in reversed(reg.list_versions(name))
            if int(v.version[1:]) < n and v.state == VersionState.ARCHIVED]


def mirror_configured(settings: Any) -> bool:
    """Whether a Hub repository is configured for the mirror (``settings.repo_id`` or ``$SO8T_HF_REPO``)."""
    from registry.hub import ENV_REPO

    return bool((settings is not None and settings.repo_id) or os.environ.get(ENV_REPO))


def pull_version(root: str | None, name: str, ref: str, mirror: Any) -> Any:
    """Pull ``name@ref`` from the Hub mirror into the registry at ``root`` (a :class:`registry.hub.PullReport`).

    ``mirror`` has ``repo_id`` and ``endpoint`` (:class:`release.params.MirrorSettings`; None fields fall back to
    ``$SO8T_HF_REPO`` / ``$SO8T_HF_ENDPOINT``).
    """
    from registry.hub import HubMirror, MirrorConfig

    cfg = MirrorConfig.from_env(repo_id=getattr(mirror, "repo_id", None), endpoint=getattr(mirror, "endpoint", None))
    return HubMirror(open_registry(root), cfg).pull(name, ref)


def ensure_local(root: str | None, name: str, ref: str, mirror: Any, *,
                 pull: Callable[[str | None, str, str, Any], Any] = pull_version) -> str:
    """The local version ``ref`` names, pulled from the Hub mirror first when it is not here.

    ``ref`` (``vN``, ``N`` or an alias) is resolved in the local registry; when that fails and a mirror is
    configured (:func:`mirror_configured`), the version is pulled (an alias is then resolved on the Hub's
    side, e.g. the Hub's production) and its number returned. Local aliases are not changed.

    Args:
        root: Registry root (None: ``$SO8T_REGISTRY`` or ``~/.cache/so8t/registry``).
        name: Model name.
        ref: Version or alias.
        mirror: Mirror settings (``repo_id``, ``endpoint``) or None.
        pull: What pulls (the Prefect stages pass their task); returns a report with ``.version``.

    Raises:
        NotFoundError: Not here, and no mirror is configured or the Hub does not have it either.
    """
    try:
        return open_registry(root).resolve(name, ref)
    except NotFoundError as e:
        if not mirror_configured(mirror):
            raise
        local = str(e)
    logger.info("%s %s is not in the local registry (%s): pulling it from the Hub mirror", name, ref, local)
    try:
        return pull(root, name, ref, mirror).version
    except NotFoundError as e:
        raise NotFoundError(f"{name} {ref} is neither in the local registry nor on the Hub mirror: {e}") from None
