"""What one Prefect unit costs in CPU: a flow run, a sub-flow, a task run, an artifact, a log line.

    python benchmarks/bench_prefect_units.py [--rounds 2]

Ephemeral mode, in-process, like the overhead benchmark (``bench_prefect_overhead.py``): each case
runs after the process and the API server are idle, and is counted until they are idle again
(events and logs are sent and ingested after the flow returns). Reported per unit: the client
process's CPU (all threads) and the API server's, in milliseconds; the minimum over the rounds (the
machine is shared). The idle server's background CPU during a case is included, so cases that take
longer (flow runs: about 1 s wall each, see below) carry a little of it. For units inside a flow,
the enclosing flow run's cost is subtracted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="so8t-prefect-units-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench_prefect_overhead import _live_children_cpu, own_cpu, settle  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE)
    def noop(i: int) -> int:
        return i

    @flow
    def empty() -> int:
        return 1

    @flow
    def tasks(n: int) -> None:
        for i in range(n):
            noop(i)

    @flow
    def artifacts(n: int) -> None:
        for i in range(n):
            create_markdown_artifact(f"# artifact {i}\n\n" + "x" * 2000, key=f"unit-{i % 5}")

    @flow
    def logs(n: int) -> None:
        log = get_run_logger()
        for i in range(n):
            log.info("line %d", i)

    @flow
    def subflows(n: int) -> None:
        for _ in range(n):
            empty()

    empty()  # starts the ephemeral server (not measured)
    settle()
    base = {"flow run": (lambda: [empty() for _ in range(5)], 5, None),
            "sub-flow run": (lambda: subflows(5), 5, "flow run"),
            "task run": (lambda: tasks(20), 20, "flow run"),
            "artifact (2 KB markdown)": (lambda: artifacts(20), 20, "flow run"),
            "log line": (lambda: logs(100), 100, "flow run")}
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(args.rounds):
        for name, (fn, n, _) in base.items():
            settle()
            c0, s0, t0 = own_cpu(), _live_children_cpu(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            settle()
            c, s = own_cpu() - c0, _live_children_cpu() - s0
            if name not in best or c + s < sum(best[name][:2]):
                best[name] = (c, s, wall)
    flow_c, flow_s, flow_w = (v / 5 for v in best["flow run"])
    print("| unit | client CPU | API server CPU | wall |\n|---|---|---|---|")
    for name, (fn, n, container) in base.items():
        c, s, w = best[name]
        if container:  # the enclosing flow run is not part of the unit
            c, s, w = c - flow_c, s - flow_s, w - flow_w
        print(f"| {name} | {1000 * c / n:.1f} ms | {1000 * s / n:.1f} ms | {max(w, 0.0) / n:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
