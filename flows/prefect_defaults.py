"""Prefect settings for ephemeral runs (``make demo``, the overhead benchmark): set before Prefect starts.

In ephemeral mode the temporary API server runs in a subprocess that inherits this process's
environment. Its task run recorder (the service that turns task-run state events into the task
runs the UI and the API show) writes each event in its own database transaction by default
(batch size 1); reading and writing up to 20 events per transaction, flushed at least every second,
cut the server's CPU per task run from about 29 ms to about 10 ms (``bench_prefect_units.py``).
Task runs still appear, with every state, at most about a second later; the service flushes what it
holds when the server stops. Nothing else changes: events, artifacts, logs, retries, caching and
the promotion transaction are untouched.

Usage analytics of the ephemeral server are off: a local demo reports nothing home, and on a machine
without internet the attempt only printed an ERROR line.

Only defaults: a value already in the environment (or a Prefect profile) wins. Not used by
``prefect server start`` deployments, which are configured on the server.
"""

from __future__ import annotations

import os

EPHEMERAL_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "20",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "20",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # No usage telemetry from a local demo: on a machine without internet the attempt only ends in
    # an ERROR line on the console ("Failed to send telemetry").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_ephemeral_defaults() -> dict[str, str]:
    """Set each default that the environment does not set already; returns what was set."""
    applied = {k: v for k, v in EPHEMERAL_DEFAULTS.items() if k not in os.environ}
    os.environ.update(applied)
    return applied
