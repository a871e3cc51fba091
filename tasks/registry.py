"""Registry tasks: publish, promote (with a transaction rollback hook), reject, roll back; and look-ups.

Each task is one :class:`registry.Registry` call plus its Prefect concerns. Look-ups that change
nothing (:func:`resolve_version`, :func:`find_candidate`, :func:`production_version`) and the
idempotent publish itself (:func:`publish_version`) are plain functions, called by the tasks and flows
and by the benchmark's plain-Python twin. Side-effecting tasks use
``NO_CACHE`` (a cached task does not fire its rollback hook, and a registry change must happen
every time it is asked for); publishing is idempotent on its own: a version whose files and
parameters equal what is being published is returned instead of a duplicate.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import get_transaction
from pydantic import BaseModel

from release.versions import open_registry, publish_version
from registry import PRODUCTION, HistoryEntry, Registry, VersionManifest




def _run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


def version_link(reg: Registry, name: str, version: str) -> str:
    """file:// URL of a version's manifest (what the UI's link artifacts point at)."""
    return (reg.root / "models" / name / "versions" / f"{version}.json").resolve().as_uri()


def _manifest_markdown(reg: Registry, m: VersionManifest, title: str) -> str:
    rows = "\n".join(f"| `{f.path}` | {f.kind.value} | {f.size / 1e6:.2f} MB | `{f.sha256[:12]}` |" for f in m.files)
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(m.metrics.items())) or "| (none) | |"
    parents = ", ".join(m.lineage.parents) or "none"
    link = f"[{m.name} {m.version}]({version_link(reg, m.name, m.version)})"
    return (f"# {title}: {link}\n\nRegistry `{reg.root}`; parents: {parents}; "
            f"flow run `{m.flow_run_id}`\n\n{m.description}\n\n| file | kind | size | sha256 |\n|---|---|---|---|\n{rows}\n\n"
            f"| metric | value |\n|---|---|\n{metrics}\n\nInspect: `so8t registry show {m.name} {m.version} --root {reg.root}`\n")






@task(name="publish-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def publish_task(root: str | None, name: str, files: dict[str, str], *, kinds: dict[str, str] | None = None,
                 metrics: dict[str, float] | None = None, parameters: dict[str, Any] | None = None,
                 lineage: dict[str, Any] | None = None, description: str = "",
                 title: str = "Published", mirror: Any = None) -> VersionManifest:
    """Publish ``files`` ({path in version: source file}) as the next version (idempotent); with a Hub mirror
    configured, numbered above every version the Hub has (hosts sharing it never reuse a number)."""
    log = get_run_logger()
    reg = open_registry(root)
    m, published = publish_version(reg, name, files, kinds=kinds, metrics=metrics, parameters=parameters,
                                   lineage=lineage, description=description, flow_run_id=_run_id(), mirror=mirror)
    if published:
        log.info("published %s %s (%d files)", name, m.version, len(m.files))
    else:
        log.info("%s %s already holds exactly these files and parameters: not publishing again", name, m.version)
    create_markdown_artifact(_manifest_markdown(reg, m, title), key="registry-version",
                             description=f"{title}: {name} {m.version}")
    return m














class Promotion(BaseModel):
    """A promotion and what it replaced (what the rollback hook restores)."""

    root: str
    name: str
    version: str
    previous: str | None
    entry: HistoryEntry | None


@task(name="promote-version", cache_policy=NO_CACHE)
def promote_task(root: str | None, name: str, version: str, *, evidence: dict[str, Any], reason: str,
                 alias: str = PRODUCTION) -> Promotion:
    """Point ``alias`` at ``version`` with the gate evidence; staged in the enclosing transaction."""
    reg = open_registry(root)
    previous = reg.state(name).aliases.get(alias)
    entry = reg.promote(name, version, alias=alias, evidence=evidence, reason=reason, flow_run_id=_run_id())
    promotion = Promotion(root=str(reg.root), name=name, version=version, previous=previous, entry=entry)
    txn = get_transaction()
    if txn is not None:
        txn.set("promotion", promotion.model_dump(mode="json"))
    get_run_logger().info("%s: %s -> %s (%s)", alias, previous, version, reason)
    create_link_artifact(version_link(reg, name, version), link_text=f"{name} {version} ({alias})",
                         key="registry-promotion", description=f"{alias}: {previous} -> {version}")
    return promotion


@promote_task.on_rollback
def _restore_previous(txn: Any) -> None:
    """Transaction rollback: put the alias back where it was before the promotion."""
    from prefect.logging import get_logger

    log = get_logger("so8t.tasks.registry")
    p = Promotion(**txn.get("promotion"))
    reg = Registry(p.root)
    if p.previous is None:
        log.error("%s %s failed after its promotion and there is no earlier production to restore: it stays "
                  "production; roll back by hand once a good version exists", p.name, p.version)
        return
    reg.rollback(p.name, to=p.previous, reason=f"automatic rollback: {p.version} failed its post-promotion smoke test",
                 evidence={"failed_version": p.version}, flow_run_id=_run_id())
    log.warning("production of %s restored: %s -> %s", p.name, p.version, p.previous)


@task(name="reject-version", cache_policy=NO_CACHE)
def reject_task(root: str | None, name: str, version: str, *, reason: str, evidence: dict[str, Any]) -> list[HistoryEntry]:
    """Mark ``version`` rejected (drops its aliases); it can no longer be promoted."""
    return open_registry(root).reject(name, version, reason=reason, evidence=evidence, flow_run_id=_run_id())


@task(name="rollback-production", cache_policy=NO_CACHE)
def rollback_task(root: str | None, name: str, *, to: str | None, reason: str,
                  evidence: dict[str, Any] | None = None, alias: str = PRODUCTION) -> HistoryEntry | None:
    """Move ``alias`` back to its previous value, or to ``to``."""
    reg = open_registry(root)
    entry = reg.rollback(name, alias=alias, to=to, reason=reason, evidence=evidence, flow_run_id=_run_id())
    if entry is not None:
        get_run_logger().warning("%s of %s rolled back: %s -> %s", alias, name, entry.from_version, entry.to_version)
        create_link_artifact(version_link(reg, name, entry.to_version or ""), link_text=f"{name} {entry.to_version}",
                             key="registry-rollback", description=f"{alias}: {entry.from_version} -> {entry.to_version}")
    return entry

