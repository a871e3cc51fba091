"""Waiting for a decision service (``so8t serve``) to serve what a flow just promoted or rolled back to."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from so8t.serving.serve import wait_until_served


@task(name="wait-until-served", cache_policy=NO_CACHE)
def wait_served_task(settings: Any, name: str, version: str) -> dict[str, Any] | None:
    """Wait until ``settings.url`` serves ``name`` ``version`` (None when no URL is configured).

    Fails the run (``ServiceNotFollowing``) with what the service serves instead; the registry change
    stands (the alias is the contract; the service catches up or is fixed, the flow says which).
    """
    log = get_run_logger()
    if not settings.url:
        log.info("no decision service configured (service.url): not waiting; services follow the alias")
        return None
    info = wait_until_served(settings.url, name, version, settings.timeout_s,
                             api_key=os.environ.get(settings.api_key_env) or None)
    log.info("%s serves %s %s (loaded in %s s)", settings.url, name, version, info.get("load_seconds"))
    create_markdown_artifact(
        f"# Served\n\n{settings.url} serves **{name} {version}** since {info.get('since')} "
        f"(sha256 `{(info.get('model') or {}).get('sha256', '')[:12]}`).\n",
        key="served-version", description=f"{name} {version} is being served")
    return info
