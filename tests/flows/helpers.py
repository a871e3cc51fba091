"""Reading runs, artifacts and events back from the Prefect API in flow tests."""

from __future__ import annotations

import time
from typing import Any


def flow_runs_tagged(tag: str) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


def task_runs_tagged(tag: str, timeout_s: float = 30.0) -> list[Any]:
    """Task runs tagged ``tag``, once the server has recorded them all in a final state.

    The server records task runs from their state events asynchronously (in batches: see
    flows/prefect_defaults.py), so right after a flow returns the newest ones may still be missing
    or pending: wait until every one is final and two reads a second apart agree.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        with get_client(sync_client=True) as c:
            runs = c.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag])))
        snapshot = sorted((str(r.id), r.state_type, r.state_name) for r in runs)
        if (runs and all(r.state is not None and r.state.is_final() for r in runs) and snapshot == last) \
                or time.monotonic() > deadline:
            return runs
        last = snapshot
        time.sleep(1.0)


def artifacts_of(flow_run_ids: list[Any], key: str | None = None) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    f = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=list(flow_run_ids)),
                       key=ArtifactFilterKey(any_=[key]) if key else None)
    with get_client(sync_client=True) as c:
        return c.read_artifacts(artifact_filter=f)


def table_rows(artifact: Any) -> list[dict]:
    """The rows of a table artifact (the API returns its data as a JSON string or already decoded)."""
    import json

    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def events_named(name: str, resource: str, timeout_s: float = 20.0) -> list[Any]:
    """Events called ``name`` about resource id ``resource`` (waits for the events worker to deliver)."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as c:
            page = c.read_events(EventFilter(event=EventNameFilter(name=[name]),
                                             resource=EventResourceFilter(id=[resource])), limit=50)
        if page.events or time.monotonic() > deadline:
            return list(page.events)
        time.sleep(0.5)
