"""Prefect events of the model lifecycle (what deployment triggers and automations react to).

Resource ids: ``so8t.model.<name>`` (the model), related ``so8t.model.<name>.<version>``.

- ``so8t.candidate.published``: the retrain flow published a candidate (triggers calibrate-and-promote).
- ``so8t.gate.failed``: a candidate failed the promotion gate and was rejected.
- ``so8t.production.rolled_back``: production was moved back to an earlier version.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event
from prefect.logging import get_run_logger

CANDIDATE_PUBLISHED = "so8t.candidate.published"
GATE_FAILED = "so8t.gate.failed"
PRODUCTION_ROLLED_BACK = "so8t.production.rolled_back"


def emit_model_event(event: str, name: str, version: str, payload: dict[str, Any] | None = None) -> Any:
    """Emit ``event`` about ``name``'s ``version``; returns the Event (None when events are off)."""
    ev = emit_event(
        event,
        resource={"prefect.resource.id": f"so8t.model.{name}", "prefect.resource.name": name, "so8t.version": version},
        related=[{"prefect.resource.id": f"so8t.model.{name}.{version}", "prefect.resource.role": "model-version"}],
        payload={"model": name, "version": version, **(payload or {})},
    )
    get_run_logger().info("event %s (%s %s)", event, name, version)
    return ev
