"""The runbook's operational checklists (運用チェックリスト) as a Prefect artifact.

The items are checked by :mod:`release.checklists` (pure functions); :func:`show_checklist` adds one checklist to the ``runbook-checklist`` Markdown artifact of the run
that checked it: created with the run's first checklist, updated in place with each later one, so
the run page shows one runbook checklist that grows as the run goes (a killed run keeps what it
had checked).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from release.checklists import CheckItem, checklist_markdown


















CHECKLIST_KEY = "runbook-checklist"
_shown: OrderedDict[str, tuple[UUID, list[str], list[str]]] = OrderedDict()  # run id -> (artifact, sections, summaries)
_shown_lock = threading.Lock()
_MAX_RUNS = 256  # a long-running worker or serve process forgets the oldest runs


def _current_run_id() -> str | None:
    from prefect.context import FlowRunContext, TaskRunContext

    task = TaskRunContext.get()
    if task is not None:
        return str(task.task_run.id)
    flow = FlowRunContext.get()
    return str(flow.flow_run.id) if flow is not None and flow.flow_run is not None else None


def show_checklist(stage: str, title: str, items: list[CheckItem]) -> list[CheckItem]:
    """Add a checklist to the current flow (or task) run's ``runbook-checklist`` artifact.

    The run's first checklist creates the artifact; each later one rewrites its Markdown in place
    (one artifact per run instead of one per checklist: each new keyed artifact costs a database
    row, a collection update and an event). Failed items are also logged as warnings. Not a task of
    its own: the checklist belongs to the run that checked it.
    """
    failed = [i for i in items if i.ok is False]
    for i in failed:
        get_run_logger().warning("checklist %s: %s failed (%s)", stage, i.item, i.detail)
    section = checklist_markdown(title, items)
    summary = f"{stage} {len(items) - len(failed)}/{len(items)}"
    run_id = _current_run_id()
    with _shown_lock:
        known = _shown.get(run_id) if run_id else None
        sections = [*known[1], section] if known else [section]
        summaries = [*known[2], summary] if known else [summary]
    doc = "# Runbook checklist (運用チェックリスト)\n\n" + "\n".join(sections)
    description = "Runbook checklist: " + ", ".join(summaries) + " ok"
    if known is None:
        artifact_id = create_markdown_artifact(doc, key=CHECKLIST_KEY, description=description)
    else:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        artifact_id = known[0]
        with get_client(sync_client=True) as client:
            client.update_artifact(artifact_id, ArtifactUpdate(data=doc, description=description))
    if run_id:
        with _shown_lock:
            _shown[run_id] = (artifact_id, sections, summaries)
            _shown.move_to_end(run_id)
            while len(_shown) > _MAX_RUNS:
                _shown.popitem(last=False)
    return items
