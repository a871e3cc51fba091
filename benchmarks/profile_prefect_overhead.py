"""Where the CPU of one pipeline run goes, under Prefect and called directly (the overhead benchmark's twins).

    python benchmarks/profile_prefect_overhead.py [--steps 24] [--variant both|prefect|direct] [--out DIR]
                                                  [--threads 1]

Per variant: one unmeasured warm-up run, then one profiled run from scratch (fresh work directory,
registry and score cache), counted until the process and the API server are idle again; threads
limited as in the benchmark. What it reports, all in CPU seconds:

- the main thread (``cProfile`` with a thread-CPU clock, which inflates Python-heavy code about 2x),
  split by category along the call edges from ``tasks/``, ``flows/`` and the direct twin: library
  stages (``so8t`` / ``registry``), the library work of ``tasks/`` helpers, artifacts, events, run
  loggers; and from Prefect into cache keys and result persistence; the rest is Prefect's task and
  flow engines (run creation, state transitions, parameter traversal, contexts);
- every other thread of the process (Prefect's event loop, event and log workers, the progress
  artifact watcher), by thread name, from ``/proc/self/task``;
- the ephemeral API server (a child process) and the converter subprocesses.

The raw profiles are written to ``DIR/<variant>.prof`` (open with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import bench_prefect_overhead as bench  # noqa: E402

ORCH = ("<repo>/tasks/", "<repo>/flows/", "bench_prefect_overhead.py")
# functions in tasks/ that do library-like work of their own (no Prefect in them): counted as such
OWN_WORK = {"before_training_items", "after_training_items", "after_conversion_items", "after_calibration_items",
            "before_inference_items", "find_identical", "code_revision", "plan_run", "plan_training", "training_result",
            "newest_uncalibrated_candidate", "export_version", "write_calibrated_modelfile", "resolve_version",
            "production_version", "run_smoke_test", "ab_skip_reason", "convert_f16", "quantize_gguf"}
# Prefect-only work done in tasks/ (building artifact contents): counted with the artifacts
ARTIFACT_CONTENT = {"calibration_markdown", "_manifest_markdown", "checklist_markdown", "version_link", "_files_table"}


def _is_orch(key: tuple) -> bool:
    f = key[0].replace(str(REPO), "<repo>")
    return any(o in f for o in ORCH) and key[2] not in OWN_WORK and key[2] not in ARTIFACT_CONTENT


def _callee_category(key: tuple, caller: tuple) -> str | None:
    """Category of the call edge caller -> key, or None when it is not a category boundary."""
    f, name = key[0].replace(str(REPO), "<repo>"), key[2]
    if f.endswith("tasks/caching.py") and name == "compute_key" and "/prefect/" in caller[0]:
        return "cache keys (ContentHash.compute_key)"
    if "/prefect/results.py" in f and "/prefect/results.py" not in caller[0] and "/prefect/" in caller[0]:
        return "result persistence (prefect.results)"
    if not _is_orch(caller):
        return None
    if name in OWN_WORK and "<repo>/tasks/" in f:
        return "library work of tasks/ helpers (plan, checks, idempotency, export, smoke)"
    if name in ARTIFACT_CONTENT and "<repo>/tasks/" in f:
        return "artifacts (create/update)"
    if ("<repo>/so8t/" in f or "<repo>/registry/" in f):
        return "library stages (so8t, registry)"
    if "/prefect/artifacts.py" in f or "/prefect/_internal/compatibility/async_dispatch.py" in f:
        return "artifacts (create/update)"  # create_*_artifact / update_progress_artifact are async_dispatch wrappers
    if "/prefect/events/" in f:
        return "events (emit_event)"
    if "/prefect/logging/" in f or f.endswith("logging/__init__.py"):
        return "run loggers"
    return None


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, keyed by Python thread name (or the OS name)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for d in Path("/proc/self/task").iterdir():
        try:
            stat = (d / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat.rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(d.name), f"os:{comm}")
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def children_cpu() -> tuple[float, float]:
    """(finished children, live descendants) CPU seconds."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime, bench._live_children_cpu()


def _categorise(stats: pstats.Stats) -> dict[str, float]:
    """Main-thread CPU by category, summed over the call edges that enter a category.

    An edge enters a category when an orchestration function (tasks/, flows/, the direct twin)
    calls into it (library, artifacts, events, loggers), or Prefect calls a cache key or result
    function; categories do not nest, so nothing is counted twice.
    """
    out: dict[str, float] = {}
    for key, (_, _, _, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        for caller, edge in callers.items():
            cat = _callee_category(key, caller)
            if cat is not None:
                out[cat] = out.get(cat, 0.0) + edge[3]
    return out


def profile_variant(variant: str, base: Path, model, train, val, steps: int, out_dir: Path) -> dict:
    fn = bench.direct if variant == "direct" else bench.under_prefect
    d = bench.fresh(base, f"{variant}-warm")
    fn(bench.params(model, train, val, d, steps))  # warm-up: imports, llama.cpp load, first task/flow creation
    d = bench.fresh(base, f"{variant}-prof")
    p = bench.params(model, train, val, d, steps)
    th0, (fc0, lc0), t0 = thread_cpu(), children_cpu(), time.perf_counter()
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    fn(p)
    prof.disable()
    wall = time.perf_counter() - t0
    bench.settle()  # events and logs are sent and ingested after the flow returns
    th1, (fc1, lc1) = thread_cpu(), children_cpu()
    prof.dump_stats(out_dir / f"{variant}.prof")
    stats = pstats.Stats(prof)
    main_name = threading.main_thread().name
    threads = {k: th1.get(k, 0.0) - th0.get(k, 0.0) for k in th1}
    main_cpu = threads.pop(main_name, 0.0)
    cats = _categorise(stats)
    profiled = stats.total_tt  # main-thread CPU as cProfile saw it (inflated by its own overhead)
    return {"wall": wall, "main": main_cpu, "profiled": profiled, "cats": cats, "threads": threads,
            "subprocesses": fc1 - fc0, "server": lc1 - lc0, "stats": stats}


def report(variant: str, r: dict) -> None:
    print(f"\n=== {variant}: wall {r['wall']:.1f} s; CPU main thread {r['main']:.2f} s (cProfile clock {r['profiled']:.2f} s), "
          f"other threads {sum(r['threads'].values()):.2f} s, API server {r['server']:.2f} s, subprocesses {r['subprocesses']:.2f} s")
    scale = r["main"] / r["profiled"] if r["profiled"] else 1.0  # cProfile's own overhead spread evenly
    rest = r["profiled"] - sum(r["cats"].values())
    print("  main thread by category (profile seconds scaled to the thread's real CPU):")
    for cat, s in sorted(r["cats"].items(), key=lambda kv: -kv[1]):
        print(f"    {cat:38s} {s * scale:7.2f} s")
    print(f"    {'engine + flow code + imports (rest)':38s} {rest * scale:7.2f} s")
    print("  other threads:")
    for name, s in sorted(r["threads"].items(), key=lambda kv: -kv[1]):
        if s >= 0.005:
            print(f"    {name:38s} {s:7.2f} s")
    print("  top main-thread functions by cumulative CPU (profile clock):")
    r["stats"].sort_stats("cumulative").print_stats(35)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--variant", choices=("both", "prefect", "direct"), default="both")
    ap.add_argument("--out", default=None, help="directory for the .prof files (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch / llama.cpp threads (as the benchmark)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        bench.limit_threads(args.threads)
    os.environ["SO8T_CACHE_SRC"] = str(Path(os.environ.get("SO8T_CACHE", Path.home() / ".cache" / "so8t")))
    base = Path(tempfile.mkdtemp(prefix="so8t-prof-prefect-"))
    out_dir = Path(args.out) if args.out else base
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect-home"))
    model, train, val = bench.build_inputs(base / "inputs")
    from prefect import flow

    @flow(name="so8t-bench-warmup")
    def warmup() -> int:
        return 1

    lc0, t0 = bench._live_children_cpu(), time.perf_counter()
    warmup()
    print(f"ephemeral server start + trivial flow: {time.perf_counter() - t0:.1f} s wall "
          f"(server process CPU so far {bench._live_children_cpu() - lc0:.1f} s)")
    variants = ("direct", "prefect") if args.variant == "both" else (args.variant,)
    results = {v: profile_variant(v, base, model, train, val, args.steps, out_dir) for v in variants}
    for v, r in results.items():
        report(v, r)
    print(f"\nprofiles: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
