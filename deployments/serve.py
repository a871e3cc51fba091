"""Serve the deployments of ``prefect.yaml`` from one process (a laptop: no work pool, no worker).

    python deployments/serve.py            # needs a Prefect API (prefect server start) for the UI,
                                           # schedules and triggers; Ctrl-C stops serving
    python deployments/serve.py --list     # print what would be served and exit

The deployments (names, entrypoints, parameters, cron schedules, event triggers, tags) are read
from ``prefect.yaml``, so both ways of running stay the same.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_deployments(path: Path = REPO / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments`` section of prefect.yaml (YAML anchors resolved)."""
    return yaml.safe_load(path.read_text())["deployments"]


def _flow(entrypoint: str) -> Any:
    file, func = entrypoint.split(":")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def to_runner_deployments(specs: list[dict[str, Any]]) -> list[Any]:
    """``flow.to_deployment(...)`` for each spec: same names, parameters, schedules and triggers."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    out = []
    for spec in specs:
        schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
                     for s in spec.get("schedules") or []]
        triggers = [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
                    for t in spec.get("triggers") or []]
        out.append(_flow(spec["entrypoint"]).to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=spec.get("parameters") or {}, schedules=schedules or None, triggers=triggers or None,
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the deployments and exit")
    args = ap.parse_args(argv)
    specs = load_deployments()
    if args.list:
        for s in specs:
            crons = ", ".join(c["cron"] for c in s.get("schedules") or []) or "-"
            trig = ", ".join(e for t in s.get("triggers") or [] for e in t.get("expect", [])) or "-"
            print(f"{s['name']:22s} {s['entrypoint']:50s} cron {crons:12s} trigger {trig}")
        return 0
    from prefect import serve

    serve(*to_runner_deployments(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
