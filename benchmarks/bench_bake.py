#!/usr/bin/env python
"""Bake on SmolLM2-135M-Instruct with random non-trivial rotations (std 0.1) on all 30 layers.

Trains nothing: builds an SO8T adapter directory from SmolLM2 with a fresh LoRA (B made non-zero)
and random generators (std 0.1), then (1) bakes it with verification and reports max |delta
logit|, KL and top-1 agreement, and (2) times the bake against a plain load + save of the same
model in the same run (target <= 2.0).

Usage: python benchmarks/bench_bake.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def make_adapter(base_dir: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from so8t.gates import attach_gates, iter_gates, save_gates
    from so8t.train import resolve_lora_targets

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from so8t.bake import BakeConfig, bake
    from so8t.base_models import prepare_embedded

    base_dir = prepare_embedded("smollm2")
    work = Path(tempfile.mkdtemp(prefix="bench-bake-"))
    try:
        adapter = work / "adapter"
        make_adapter(base_dir, adapter)
        t0 = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        m.save_pretrained(str(work / "plain"), safe_serialization=True)
        plain_s = time.perf_counter() - t0
        del m
        t0 = time.perf_counter()
        report = bake(BakeConfig(model_path=str(adapter), output_path=str(work / "baked")))
        bake_s = time.perf_counter() - t0
        result = {
            "model": "SmolLM2-135M-Instruct, LoRA r16 all-linear, gates std 0.1 on 30 layers",
            "max_abs_logit_delta": report.max_abs_logit_delta, "mean_kl": report.mean_kl, "max_kl": report.max_kl,
            "top1_agreement": report.top1_agreement, "probe_tokens": report.probe_tokens,
            "max_orthogonality_error": max(f.orthogonality_error for f in report.layers_folded),
            "plain_load_save_s": plain_s, "bake_s": bake_s, "ratio_bake_over_plain": bake_s / plain_s,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
