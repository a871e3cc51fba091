"""The base model as the floor: what the fine-tune bought on every held-out file.

The base SmolLM2-135M-Instruct is converted with the same quantization as the served model,
calibrated on the same validation data with the same settings (``so8t calibrate``), and both are
evaluated (``so8t evaluate``) on the held-out files. Prints a Markdown table per file and source and
writes the JSON of both evaluations.

Usage::

    python benchmarks/bench_base_floor.py --model outputs/demo/registry::so8t-smollm2@production \\
        [--quant Q8_0] [--data data/decision_test.jsonl] [--out benchmarks/results_base_floor.json]

``--model`` is a registry reference ``ROOT::NAME@REF`` (registry root, model, alias or version) or a
GGUF path with its ``calibration_results.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _evaluate(model: str, data: str, out: Path, registry_root: str | None, calibration: str | None = None) -> dict:
    from so8t.calibrate.evaluate import EvaluateConfig, run_evaluation

    cfg = EvaluateConfig(model=model, data=data, output_dir=str(out), registry_root=registry_root,
                         calibration=calibration, n_threads=os.cpu_count() or 1)
    return run_evaluation(cfg).model_dump(mode="json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="ROOT::NAME@REF (registry) or a GGUF with calibration_results.json beside it "
                                                 "(omitted: only the base is calibrated and evaluated).")
    ap.add_argument("--base", default="smollm2", help="Embedded base model (so8t base list).")
    ap.add_argument("--quant", default="Q8_0", help="Quantization of the base GGUF (the served model's).")
    ap.add_argument("--val", default=str(ROOT / "data" / "decision_val.jsonl"), help="Calibration data of the base.")
    ap.add_argument("--data", default=str(ROOT / "data" / "decision_test.jsonl"), help="Held-out files, comma-separated.")
    ap.add_argument("--work", type=Path, default=Path("outputs/base_floor"), help="Working directory.")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_base_floor.json"), help="Results JSON.")
    args = ap.parse_args()

    from so8t.base_models import prepare_embedded
    from so8t.calibrate.stage import CalibrateCommandConfig, calibrate_gguf, write_calibration
    from so8t.export.gguf import convert_to_gguf

    t0 = time.time()
    base = convert_to_gguf(prepare_embedded(args.base), args.work / "gguf", [args.quant], name=f"{args.base}-base",
                           fidelity=False).path(args.quant)
    cal_dir = args.work / "calibration"
    outcome = calibrate_gguf(CalibrateCommandConfig(model=str(base), val_data=args.val, output_dir=str(cal_dir),
                                                    n_threads=os.cpu_count() or 1))
    write_calibration(outcome, cal_dir)
    floor = _evaluate(str(base), args.data, args.work / "eval-base", None, str(cal_dir / "calibration_results.json"))
    if args.model:
        root, _, ref = args.model.rpartition("::")
        tuned = _evaluate(ref, args.data, args.work / "eval-tuned", root or None)
    else:
        tuned = floor
    h = outcome.result.after.holdout
    result = {"base_model": args.base, "base_gguf": str(base), "base_calibration_holdout": {"ece": h.ece, "far": h.false_allow_rate,
              "macro_f1": h.macro_f1, "passed": outcome.result.passed}, "tuned": tuned if args.model else None, "base": floor,
              "seconds": time.time() - t0, "loadavg": os.getloadavg()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    print("| file | group | n | FAR tuned / base | over-refusal tuned / base | macro F1 tuned / base |")
    print("|---|---|---:|---|---|---|")
    for ft, fb in zip(tuned["files"], floor["files"]):
        for gt, gb in zip(ft["groups"], fb["groups"]):
            if gt["kind"] not in ("overall", "source"):
                continue
            print(f"| {Path(ft['path']).name} | {gt['group']} | {gt['n']} | {fmt(gt['false_allow_rate'])} / "
                  f"{fmt(gb['false_allow_rate'])} | {fmt(gt['over_refusal_rate'])} / {fmt(gb['over_refusal_rate'])} | "
                  f"{fmt(gt['macro_f1'])} / {fmt(gb['macro_f1'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
