#!/usr/bin/env python
"""Bake on SmolLM2-135M-Instruct with random non-trivial rotations (std 0.1) on all 30 layers.

Trains nothing: builds an SO8T adapter directory from SmolLM2 with a fresh LoRA (r=16 on every
linear layer, B made non-zero) and random generators (std 0.1), then

1. times the bake (load, unmerged reference pass, merge, fold, verification pass, save) against
   a plain ``from_pretrained`` + ``save_pretrained`` of the same model, interleaved
   (plain, bake, plain, bake, ...), in this process's CPU time (robust to other jobs on a shared
   machine) and in wall time; the verdict is the ratio of the medians of CPU time (target <= 2.0);
2. checks the result independently on more tokens than the bake's own probes: the baked
   directory loaded with plain ``AutoModelForCausalLM`` vs peft's ``PeftModel`` + the gates
   (the trained model as training saw it) on 512 tokens of data/text_sample.jsonl (EN and JA); reports max |delta logit|, mean
   and max KL, top-1 agreement (issue #3: <= 1e-3 and <= 1e-6).

Usage: python benchmarks/bench_bake.py [--repeats 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import shutil
import tempfile
import time
from pathlib import Path

import torch


def make_adapter(base_dir: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from so8t.training.gates import attach_gates, iter_gates, save_gates
    from so8t.training.train import resolve_lora_targets

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=resolve_lora_targets(base, "all-linear")))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.01)
    attach_gates(model, "all")
    with torch.no_grad():
        for _, g in iter_gates(model):
            g.generators.normal_(std=0.1)
    model.save_pretrained(str(out))
    save_gates(model, out)
    (out / "so8t_train_config.json").write_text(json.dumps({"config": {"base_model": str(base_dir)}}))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[float, float]:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return _cpu() - c0, time.perf_counter() - t0


def independent_check(base_dir: Path, adapter: Path, baked: Path, n_tokens: int) -> dict:
    """Baked (plain load) vs peft + gates on the first ``n_tokens`` tokens of data/text_sample.jsonl (4 rows)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from so8t.export.logit_compare import compare_logit_sets as compare_logits
    from so8t.training.gates import load_gates

    gated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32), str(adapter)).eval()
    load_gates(gated, adapter)
    plain = AutoModelForCausalLM.from_pretrained(str(baked), dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    texts = [json.loads(line)["text"] for line in (Path(__file__).resolve().parents[1] / "data" / "text_sample.jsonl").read_text(encoding="utf-8").splitlines()]
    flat = [t for text in texts for t in tok(text)["input_ids"]]
    if len(flat) < n_tokens:
        raise SystemExit(f"data/text_sample.jsonl has only {len(flat)} tokens, fewer than --check_tokens {n_tokens}")
    ids = torch.tensor(flat[:n_tokens]).reshape(4, n_tokens // 4)  # English and Japanese paragraphs
    with torch.no_grad():
        a, b = gated(ids).logits, plain(ids).logits
    return compare_logits(list(a), list(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="Interleaved repetitions of each contender (median taken).")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both contenders.")
    ap.add_argument("--check_tokens", type=int, default=512, help="Tokens of data/text_sample.jsonl for the independent check (multiple of 4).")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="Where the bake's merge, fold and verification run (the baseline is a plain load + save).")
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from so8t.export.bake import BakeConfig, bake
    from so8t.base_models import prepare_embedded

    base_dir = prepare_embedded("smollm2")
    work = Path(tempfile.mkdtemp(prefix="bench-bake-"))
    try:
        adapter = work / "adapter"
        make_adapter(base_dir, adapter)

        def plain() -> None:
            m = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
            m.save_pretrained(str(work / "plain"), safe_serialization=True)
            shutil.rmtree(work / "plain")

        reports = []

        def baking() -> None:
            reports.append(bake(BakeConfig(model_path=str(adapter), output_path=str(work / "baked"), overwrite=True,
                                              device=args.device)))

        plain_t, bake_t = [], []
        for _ in range(args.repeats):
            plain_t.append(_timed(plain))
            bake_t.append(_timed(baking))
        check = independent_check(base_dir, adapter, work / "baked", args.check_tokens)
        report = reports[-1]
        med = statistics.median
        result = {
            "model": "SmolLM2-135M-Instruct, LoRA r16 all-linear, gates std 0.1 on 30 layers",
            "threads": args.threads, "repeats": args.repeats, "device": report.device, "loadavg": os.getloadavg(),
            "bake_check": {"max_abs_logit_delta": report.max_abs_logit_delta, "mean_kl": report.mean_kl,
                           "max_kl": report.max_kl, "top1_agreement": report.top1_agreement,
                           "probe_tokens": report.probe_tokens, "lora_modules": report.lora_modules},
            "independent_check": check,
            "max_orthogonality_error": max(f.orthogonality_error for f in report.layers_folded),
            "plain_cpu_s": [c for c, _ in plain_t], "plain_wall_s": [w for _, w in plain_t],
            "bake_cpu_s": [c for c, _ in bake_t], "bake_wall_s": [w for _, w in bake_t],
            "ratio_cpu_median": med(c for c, _ in bake_t) / med(c for c, _ in plain_t),
            "ratio_wall_median": med(w for _, w in bake_t) / med(w for _, w in plain_t),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
