"""mirror_task: push the registry's versions and production history to the Hugging Face Hub; pull_task: fetch a
version this host lacks from it."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from registry import MirrorError, Registry
from release.stages import mirror_configured
from registry.hub import ENV_REPO, HubMirror, MirrorConfig, PullReport, SyncReport
from release.versions import ensure_local


@task(name="mirror-to-hub", cache_policy=NO_CACHE, retries=4,
      retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5)
def mirror_task(root: str | None, name: str, repo_id: str | None = None, endpoint: str | None = None) -> SyncReport:
    """Sync ``name`` to its Hub repository; raises (and is retried with backoff) when work is left."""
    cfg = MirrorConfig.from_env(repo_id=repo_id, endpoint=endpoint)
    report = HubMirror(Registry(root), cfg).sync(name, raise_on_error=True)
    base = (cfg.endpoint or "https://huggingface.co").rstrip("/")
    create_link_artifact(f"{base}/{cfg.repo_id}", link_text=cfg.repo_id, key="hub-mirror",
                         description=f"Hub mirror: uploaded {list(report.uploaded)}, {len(report.main_commits)} commit(s) on main")
    return report


def mirror_if_configured(settings: Any, root: str | None, name: str) -> SyncReport | None:
    """Mirror when a repository is configured (settings.repo_id or $SO8T_HF_REPO); never fails the flow.

    The local registry is the source of truth: a mirror that still fails after its retries is
    logged and shown as an artifact, and ``so8t registry mirror NAME --sync`` catches up later.
    """
    log = get_run_logger()
    if not mirror_configured(settings):
        log.info("Hub mirror skipped: no repository configured (mirror.repo_id or $%s)", ENV_REPO)
        return None
    state = mirror_task(root, name, settings.repo_id, settings.endpoint, return_state=True)
    if state.is_completed():
        return state.result()
    log.error("Hub mirror of %s failed after retries: %s; catch up with `so8t registry mirror %s --sync`",
              name, state.message, name)
    create_markdown_artifact(f"# Hub mirror pending\n\n{state.message}\n\nCatch up: `so8t registry mirror {name} --sync`\n",
                             key="hub-mirror", description="Hub mirror failed; local registry unchanged")
    return None


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a pull only when the Hub failed (an outage); a bad digest or a missing version fails at once."""
    try:
        state.result()
    except MirrorError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not going to change on a retry
        return False
    return False


@task(name="pull-from-hub", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_jitter_factor=0.5, retry_condition_fn=_transient)
def pull_task(root: str | None, name: str, ref: str, repo_id: str | None = None,
              endpoint: str | None = None) -> PullReport:
    """Pull ``name@ref`` from the Hub mirror into the local registry (every file verified; a retry resumes)."""
    report = HubMirror(Registry(root), MirrorConfig.from_env(repo_id=repo_id, endpoint=endpoint)).pull(name, ref)
    get_run_logger().info("pulled %s %s from %s: %d file(s) downloaded (%d bytes), %d already here", name,
                          report.version, report.repo_id, len(report.fetched), report.fetched_bytes, len(report.skipped))
    return report


def ensure_local_or_pull(settings: Any, root: str | None, name: str, ref: str) -> str:
    """The local version ``ref`` names; when this registry lacks it and a mirror is configured, :func:`pull_task`
    fetches it first (a task run only then)."""
    return ensure_local(root, name, ref, settings, pull=lambda r, n, f, s: pull_task(
        r, n, f, getattr(s, "repo_id", None), getattr(s, "endpoint", None)))
