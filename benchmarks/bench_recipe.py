"""Learning curves of the decision recipe, and the ablation that tells whether SO8T earns its place.

For each variant and seed: train on ``data/decision_train.jsonl`` with checkpoints every
``--eval_every`` steps, then read every checkpoint's label logits in torch (``recipe_eval.py``: the
same prompt and label tokens as calibration, shared prefix evaluated once) on the validation split,
calibrate them exactly as ``so8t calibrate`` does (half held out), and apply that calibration to
the test split. One JSON row per (variant, seed, step) with wall and CPU time.

Variants (equal data, steps, learning rate, LoRA layers):

- ``lora``: LoRA only (no rotation gates, PET off);
- ``lora+gates``: LoRA + SO(8) gates on the same layers, PET off;
- ``so8t``: LoRA + gates + PET (the method).

Usage::

    python benchmarks/bench_recipe.py --variants so8t --seeds 1 --steps 100 --eval_every 25 --json out.json
    python benchmarks/bench_recipe.py --plot out.json --png benchmarks/recipe_curve.png   # plot + table

Results are appended to the JSON (a run already there is skipped), so a long sweep can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "lora": {"so8t_layers": "none", "pet_lambda": 0.0},
    "lora+gates": {"pet_lambda": 0.0},
    "so8t": {},
}

def _demo_recipe() -> dict:
    """The demo recipe's training settings (release/demo.py, minus max_steps): the variants change only
    what the ablation is about."""
    from release.demo import RECIPE_COMMON, RECIPES

    return dict(base_model="smollm2", dataset=str(ROOT / "data" / "decision_train.jsonl"), **RECIPE_COMMON,
                warmup_steps=RECIPES["demo"]["warmup_steps"])


def run_one(variant: str, seed: int, steps: int, eval_every: int, test_limit: int | None) -> list[dict]:
    import torch
    from peft import PeftModel

    from recipe_eval import decision_metrics, label_logits, read_labelled
    from so8t.base_models import prepare_embedded
    from so8t.config import TrainConfig
    from so8t.decision import DEFAULT_DECISION_PROMPT
    from so8t.training.gates import load_gates
    from so8t.training.train import list_checkpoints, load_base, train

    out = Path(tempfile.mkdtemp(prefix=f"so8t-recipe-{variant}-{seed}-"))
    kw = {**_demo_recipe(), **VARIANTS[variant], "seed": seed, "max_steps": steps, "save_steps": eval_every,
          "save_total_limit": steps // eval_every + 1, "output_dir": str(out / "run")}
    cfg = TrainConfig(**kw)
    t0, c0 = time.time(), time.process_time()
    train(cfg)
    wall, cpu = time.time() - t0, time.process_time() - c0
    val = read_labelled(ROOT / "data" / "decision_val.jsonl")
    test = read_labelled(ROOT / "data" / "decision_test.jsonl", limit=test_limit)
    rows = []
    for ck in list_checkpoints(out / "run"):
        step = int(ck.name.split("-")[1])
        base, tok = load_base(prepare_embedded("smollm2"), cfg)
        model = PeftModel.from_pretrained(base, str(ck))
        if cfg.so8t_layers != "none":
            load_gates(model, ck)
        with torch.no_grad():
            zv = label_logits(model, tok, val.texts, DEFAULT_DECISION_PROMPT)
            zt = label_logits(model, tok, test.texts, DEFAULT_DECISION_PROMPT)
        m = decision_metrics(zv, val.labels, zt, test.labels)
        rows.append({"variant": variant, "seed": seed, "step": step, "records": step * cfg.batch_size,
                     # time to this checkpoint, pro rata of the whole run (steps cost about the same)
                     "train_wall_s": wall * step / steps, "train_cpu_s": cpu * step / steps, **m,
                     "config": {k: v for k, v in kw.items() if k != "output_dir"}, "loadavg": os.getloadavg()})
        print(json.dumps({k: rows[-1][k] for k in ("variant", "seed", "step", "train_cpu_s")}),
              json.dumps(rows[-1]["holdout"]), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return rows


def plot(results: list[dict], png: Path) -> str:
    """Curves of held-out macro F1 / FAR / over-refusal vs steps per variant (mean and range over seeds);
    returns a Markdown table of the final step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = (("macro_f1", "macro F1"), ("far", "FAR (point)"), ("over_refusal", "over-refusal"), ("ece", "ECE"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    table = ["| variant | seeds | step | records | CPU min | macro F1 | FAR | FAR upper95 | over-refusal | ECE | test FAR | test over-refusal |",
             "|---|---:|---:|---:|---:|---|---|---|---|---|---|---|"]
    for variant in sorted({r["variant"] for r in results}):
        rows = [r for r in results if r["variant"] == variant]
        steps = sorted({r["step"] for r in rows})
        for ax, (key, label) in zip(axes, metrics):
            vals = [[r["holdout"][key] for r in rows if r["step"] == s and r["holdout"][key] is not None] for s in steps]
            mean = [np.mean(v) if v else np.nan for v in vals]
            ax.plot(steps, mean, marker="o", label=variant)
            ax.fill_between(steps, [min(v) if v else np.nan for v in vals], [max(v) if v else np.nan for v in vals], alpha=0.2)
            ax.set_title(label)
            ax.set_xlabel("training steps (batch 16)")
        last = [r for r in rows if r["step"] == steps[-1]]

        def cell(get) -> str:
            v = [get(r) for r in last if get(r) is not None]
            return "n/a" if not v else (f"{np.mean(v):.3f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else ""))

        table.append(f"| {variant} | {len(last)} | {steps[-1]} | {last[0]['records']} | "
                     f"{np.mean([r['train_cpu_s'] for r in last]) / 60:.1f} | {cell(lambda r: r['holdout']['macro_f1'])} | "
                     f"{cell(lambda r: r['holdout']['far'])} | {cell(lambda r: r['holdout']['far_upper95'])} | "
                     f"{cell(lambda r: r['holdout']['over_refusal'])} | {cell(lambda r: r['holdout']['ece'])} | "
                     f"{cell(lambda r: r.get('test', {}).get('far'))} | {cell(lambda r: r.get('test', {}).get('over_refusal'))} |")
    axes[0].legend()
    fig.suptitle("SmolLM2-135M decision recipe: calibration hold-out of data/decision_val.jsonl", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return "\n".join(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="so8t", help="Comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", default="1", help="Comma-separated training seeds.")
    ap.add_argument("--steps", type=int, default=100, help="Training steps per run (batch 16).")
    ap.add_argument("--eval_every", type=int, default=25, help="Checkpoint (and evaluate) every this many steps.")
    ap.add_argument("--test_limit", type=int, default=None, help="Evaluate on the first N test records only.")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results_recipe.json"), help="Results file (appended).")
    ap.add_argument("--plot", type=Path, default=None, help="Only plot this results file (with --png) and print the table.")
    ap.add_argument("--png", type=Path, default=Path("benchmarks/recipe_curve.png"), help="Where the plot goes.")
    args = ap.parse_args()
    if args.plot:
        print(plot(json.loads(args.plot.read_text()), args.png))
        return 0
    results = json.loads(args.json.read_text()) if args.json.is_file() else []
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if any(r["variant"] == variant and r["seed"] == seed and r["config"]["max_steps"] == args.steps for r in results):
                print(f"skip {variant} seed {seed}: already in {args.json}")
                continue
            results += run_one(variant, seed, args.steps, args.eval_every, args.test_limit)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
