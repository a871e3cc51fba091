"""Prefect overhead: so8t-pipeline on a tiny model vs the same stages called directly, same run.

    python benchmarks/bench_prefect_overhead.py [--repeats 4] [--steps 24] [--threads 1] [--write]

Both variants do all the work from scratch every repetition (fresh work directory, registry and
score cache; the llama.cpp converter source is shared): plan -> train -> bake -> convert -> quantize
-> publish candidate -> export -> calibrate -> A/B decision -> publish calibrated -> gate -> smoke
test -> promote -> smoke test. ``direct`` is the plain-Python twin of ``flows/pipeline.py``: the
same library stages and the same helper functions the tasks call, with the same parameters; only
what Prefect adds is left out (runs, cache keys, results, artifacts, events, logs). Variants
alternate (direct, prefect, direct, ...) so that load from other jobs on the machine hits both.

CPU time is the verdict (the machine is shared): this process (all threads) and its finished
subprocesses, plus the ephemeral API server for the Prefect variant, each run counted until the
process and the server are idle again (:func:`settle`). ``--threads`` (default 1) fixes the CPU
threads of torch and llama.cpp in both variants (:func:`limit_threads`). Prefect runs in ephemeral
mode; its one-time server start is measured separately (a trivial flow first) and reported, never
counted in a run. ``--write`` replaces the measured part of the ``## Orchestration`` section of
BENCHMARKS.md (between its ``bench_prefect_overhead`` markers; the reading below them is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
from flows.prefect_defaults import apply_ephemeral_defaults  # noqa: E402

apply_ephemeral_defaults()  # what `make demo` gets in ephemeral mode (flows/prefect_defaults.py)

NAME = "bench-tiny"


def build_inputs(d: Path) -> tuple[Path, Path, Path]:
    from tests.fixtures.tiny_models import build_tiny_llama, build_tokenizer_model

    model = build_tiny_llama(d / "llama", build_tokenizer_model(d / "sp"))
    train = d / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}"}) + "\n"
                             for i in range(16)))
    val = d / "val.jsonl"
    val.write_text("\n".join((REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()[:60]) + "\n",
                   encoding="utf-8")
    return model, train, val


def params(model: Path, train: Path, val: Path, root: Path, steps: int = 24):
    from release.params import CalibrationSettings, ConvertSettings, ModelRef, PipelineParams, TrainSettings
    from so8t.calibrate.promotion_gate import GateConfig

    return PipelineParams(
        model=ModelRef(name=NAME, registry_root=str(root / "registry")), work_dir=str(root / "work"),
        train=TrainSettings(base_model=str(model), dataset=str(train), batch_size=2, gradient_accumulation_steps=1,
                            max_steps=steps, save_steps=max(1, steps // 2), max_length=64, lora_r=4, lora_alpha=8, learning_rate=1e-3),
        convert=ConvertSettings(quants=("Q8_0",)), calibration=CalibrationSettings(val_data=str(val)),
        gate=GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0))


def direct(p) -> str:
    """The pipeline flow's work without Prefect: :func:`release.recipes.run_pipeline` with the plain stages.

    The same recipe the ``so8t-pipeline`` flow runs (it hands it ``tasks.stages.PrefectStages``), with
    :class:`release.stages.Stages`: every stage a plain library call. Left out is only what Prefect adds:
    task/flow runs, cache keys, results, artifacts (incl. the calibration report's inlined diagram), events,
    the promotion's transaction and run logs.
    """
    from release.recipes import run_pipeline
    from release.stages import Stages

    return run_pipeline(p, Stages()).promotion.version


def under_prefect(p, tag: str | None = None) -> str:
    from prefect import tags

    from flows.pipeline import pipeline

    if tag is None:
        return pipeline(p).promotion.version
    with tags(tag):
        return pipeline(p).promotion.version


def limit_threads(n: int) -> None:
    """Every library in this process (and the converter subprocesses) uses ``n`` CPU threads.

    torch reads OMP_NUM_THREADS (set before it is imported); the library sizes llama.cpp's thread
    pools from ``os.cpu_count()`` (fidelity checks, smoke-test generation), so that is what it is
    told. On a shared machine, idle worker threads of a pool spin-wait while their peers are
    descheduled: with the default 2 threads the same run's CPU time swung from 11 s to 42 s.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.cpu_count = lambda: n  # type: ignore[assignment]


def _live_children_cpu() -> float:
    """CPU seconds of this process's live descendants (the ephemeral API server), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    me, total, kids = os.getpid(), 0.0, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(f[1]), []).append((int(d.name), (int(f[11]) + int(f[12])) / tick))
    todo = [me]
    while todo:
        for pid, cpu in kids.get(todo.pop(), []):
            total += cpu
            todo.append(pid)
    return total


def own_cpu() -> float:
    """CPU seconds used so far by this process (all threads) and its finished children (converters)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def settle(min_s: float = 3.0, max_s: float = 30.0, quiet_cpu_s: float = 0.05) -> None:
    """Wait until this process and the API server are idle again (1 s windows under ``quiet_cpu_s``).

    Prefect sends events and logs from background threads and the server ingests them after the
    flow has returned: that CPU belongs to the run that caused it, not to the next measurement.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        a = own_cpu() + _live_children_cpu()
        time.sleep(1.0)
        if own_cpu() + _live_children_cpu() - a < quiet_cpu_s and time.monotonic() - t0 >= min_s:
            return


def count_runs(tag: str) -> dict[str, int]:
    """Flow runs, task runs and artifacts the API recorded for the runs tagged ``tag``."""
    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterTags,
                                                TaskRunFilter, TaskRunFilterTags)

    with get_client(sync_client=True) as c:
        flows = c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        tasks = c.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag])))
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[f.id for f in flows])))
    return {"flow_runs": len(flows), "task_runs": len(tasks), "artifacts": len(arts)}


def fresh(base: Path, tag: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=base))
    cache = d / "so8t-cache"
    cache.mkdir()
    src = Path(os.environ.get("SO8T_CACHE_SRC", Path.home() / ".cache" / "so8t")) / "llama_cpp_src"
    (cache / "llama_cpp_src").symlink_to(src)  # the converter source; scores and everything else start empty
    os.environ["SO8T_CACHE"] = str(cache)
    return d


BEGIN, END = "<!-- bench_prefect_overhead: begin -->", "<!-- bench_prefect_overhead: end -->"


def write_section(text: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    """Put ``text`` between the markers of the Orchestration section (the rest of it is kept).

    Without the markers the whole ``## Orchestration`` section is replaced (or appended).
    """
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text.strip()}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    elif re.search(r"^## Orchestration\n", doc, flags=re.M):
        doc = re.sub(r"^## Orchestration\n.*?(?=^## |\Z)", lambda _: f"## Orchestration\n\n{block}\n\n", doc, flags=re.M | re.S)
    else:
        doc = doc.rstrip() + f"\n\n## Orchestration\n\n{block}\n"
    path.write_text(doc.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4, help="measured repetitions of each variant")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured repetitions first (imports, llama.cpp load)")
    ap.add_argument("--steps", type=int, default=24, help="training steps of the tiny model")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads of torch and llama.cpp in both variants (0: the libraries' defaults)")
    ap.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.threads > 0:
        limit_threads(args.threads)
    os.environ["SO8T_CACHE_SRC"] = str(Path(os.environ.get("SO8T_CACHE", Path.home() / ".cache" / "so8t")))
    base = Path(tempfile.mkdtemp(prefix="so8t-bench-prefect-"))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect-home"))
    model, train, val = build_inputs(base / "inputs")

    from prefect import flow

    @flow(name="so8t-bench-warmup")
    def warmup() -> int:
        return 1

    s0, t0 = _live_children_cpu(), time.perf_counter()
    warmup()
    startup = time.perf_counter() - t0
    settle()
    startup_cpu = _live_children_cpu() - s0
    times: dict[str, list[float]] = {"direct": [], "prefect": []}
    cpu: dict[str, list[float]] = {"direct": [], "prefect": []}
    server: dict[str, list[float]] = {"direct": [], "prefect": []}
    load, counts = [], {}
    for i in range(args.warmup + args.repeats):
        for variant in ("direct", "prefect"):
            d = fresh(base, f"{variant}{i}")
            p = params(model, train, val, d, args.steps)
            tag = f"bench-{d.name}"
            load.append(os.getloadavg()[0])
            c0, s0, t0 = own_cpu(), _live_children_cpu(), time.perf_counter()
            version = direct(p) if variant == "direct" else under_prefect(p, tag)
            dt = time.perf_counter() - t0
            settle()
            dc, ds = own_cpu() - c0, _live_children_cpu() - s0
            if variant == "prefect":
                dc += ds  # the API server works for the Prefect run only; idle during a direct run (not counted)
            if i >= args.warmup:
                times[variant].append(dt)
                cpu[variant].append(dc)
                server[variant].append(ds)
            if variant == "prefect" and i == args.warmup + args.repeats - 1:
                counts = count_runs(tag)
            print(f"{variant:8s} {'warm-up' if i < args.warmup else 'run'} {i + 1}: {dt:.1f} s wall, {dc:.1f} s CPU "
                  f"(API server {ds:.2f} s{'' if variant == 'prefect' else ', not counted'}; promoted {version})", flush=True)
    text = report(args, times, cpu, server, load, counts, startup, startup_cpu)
    print(text)
    if args.write:
        write_section(text)
        print("wrote the Orchestration section of BENCHMARKS.md")
    return 0


def report(args, times, cpu, server, load, counts, startup, startup_cpu) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    cratio = cmed["prefect"] / cmed["direct"]
    paired = statistics.median(b / a for a, b in zip(cpu["direct"], cpu["prefect"]))
    over = statistics.median(b - a for a, b in zip(cpu["direct"], cpu["prefect"]))
    threads = f"{args.threads} thread(s) for torch and llama.cpp in both variants" if args.threads > 0 else "the libraries' default thread counts"
    runs = (f" Per Prefect run the API recorded {counts['flow_runs']} flow runs, {counts['task_runs']} task runs and "
            f"{counts['artifacts']} artifacts.") if counts else ""
    verdict = "met" if cratio <= 1.15 else f"missed by {100 * (cratio - 1.15):.1f} points"
    return f"""
`python benchmarks/bench_prefect_overhead.py --repeats {args.repeats} --steps {args.steps} --threads {args.threads}`:
so8t-pipeline on a tiny Llama (2 layers, hidden 256; {args.steps} training steps, bake, F16 + Q8_0 GGUF with
fidelity checks, calibration on 60 samples, publish, gate, smoke test, promote, smoke test) under Prefect
(ephemeral mode, in-process) vs its plain-Python twin (`direct()` in the script: the same library stages
and helper functions with the same parameters: run plan, checklist checks, idempotent publishes, export,
A/B decision, both smoke tests; left out is only what Prefect adds: runs, cache keys, results, artifacts,
events, logs).{runs} The variants alternate in one process, every repetition from scratch (fresh
work directory, registry and score cache), after {args.warmup} unmeasured warm-up repetition(s) of each;
{threads}. Machine: {platform.machine()} {len(os.sched_getaffinity(0))}-core dev VM shared with other jobs
(load average {min(load):.1f}-{max(load):.1f} during the runs).

The verdict uses CPU time: this process (all threads) and its converter subprocesses, plus the
ephemeral API server for the Prefect variant, each run counted until the process and the server are
idle again (events and logs are sent and ingested after the flow returns). The server's CPU during a
direct run (its idle background work) is not counted. Wall times on this shared machine swing with
other engineers' jobs; they are shown for completeness.

| measurement | Prefect | direct | ratio |
|---|---|---|---|
| pipeline CPU time, median of {args.repeats} | {cmed['prefect']:.2f} s | {cmed['direct']:.2f} s | **{cratio:.3f}** (target <= 1.15: {verdict}) |
| pipeline CPU time, median of the {args.repeats} paired ratios | | | {paired:.3f} |
| CPU time per run (direct/Prefect, s) | | | {", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(cpu["direct"], cpu["prefect"]))} |
| overhead per run (Prefect - direct CPU), median | {over:+.2f} s | | |
| of which API server CPU, median | {statistics.median(server['prefect']):.2f} s | ({statistics.median(server['direct']):.2f} s idle, not counted) | |
| pipeline wall time, best of {args.repeats} | {best['prefect']:.1f} s | {best['direct']:.1f} s | {best['prefect'] / best['direct']:.3f} |
| pipeline wall time, median of {args.repeats} | {med['prefect']:.1f} s | {med['direct']:.1f} s | {med['prefect'] / med['direct']:.3f} |
| wall time per run (direct/Prefect, s) | | | {", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(times["direct"], times["prefect"]))} |
| one-time ephemeral server start (first trivial flow of the process; not in any run above) | {startup:.1f} s wall, {startup_cpu:.1f} s server CPU | - | - |
"""


if __name__ == "__main__":
    sys.exit(main())
