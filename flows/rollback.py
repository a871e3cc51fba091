"""so8t-rollback: move production back by hand (the twin of ``so8t registry rollback``)."""

from __future__ import annotations

from prefect import flow

from flows.params import RollbackParams
from registry import HistoryEntry
from tasks.mirror import mirror_if_configured
from tasks.registry import rollback_task
from tasks.serving import wait_served_task


@flow(name="so8t-rollback", description="Roll production back to the previous or a given version.")
def rollback(params: RollbackParams = RollbackParams()) -> HistoryEntry | None:  # noqa: B008
    entry = rollback_task(params.model.registry_root, params.model.name, to=params.to, reason=params.reason)
    mirror_if_configured(params.mirror, params.model.registry_root, params.model.name)
    if entry is not None:
        wait_served_task(params.service, params.model.name, entry.to_version)
    return entry
