#!/usr/bin/env python
"""Training step time: LoRA + SO(8) gates on every layer vs plain LoRA, same model, same batch.

Both variants are built from the same SmolLM2-135M-Instruct (the embedded default), with LoRA
(r=16, all linear layers) and AdamW; the gated one has gates on all 30 layers with non-zero
generators. Steps (forward + backward + optimizer) are timed interleaved, A B A B ..., after
warm-up, and the ratio of medians is reported. Target: <= 1.05.

Usage: python benchmarks/bench_train_step.py [--steps 8] [--batch 4] [--seq 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(gated: bool, model_dir: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from so8t.gates import attach_gates, iter_gates
    from so8t.train import resolve_lora_targets

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                            target_modules=resolve_lora_targets(base, "all-linear")))
    if gated:
        attach_gates(model, "all")
        with torch.no_grad():
            for _, g in iter_gates(model):
                g.generators.normal_(std=0.05)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="Timed steps per variant (after 2 warm-up steps each).")
    ap.add_argument("--batch", type=int, default=4, help="Sequences per step.")
    ap.add_argument("--seq", type=int, default=128, help="Tokens per sequence.")
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    args = ap.parse_args()

    from so8t.base_models import prepare_embedded

    model_dir = str(prepare_embedded("smollm2"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    variants = {"lora": build(False, model_dir), "lora+so8t": build(True, model_dir)}
    for m, o in variants.values():
        for _ in range(2):
            step(m, o, batch)
    times = {k: [] for k in variants}
    for _ in range(args.steps):
        for k, (m, o) in variants.items():
            times[k].append(step(m, o, batch))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)", "batch": args.batch, "seq": args.seq, "steps": args.steps,
        "threads": torch.get_num_threads(),
        "median_step_s": med, "ratio_gated_over_lora": med["lora+so8t"] / med["lora"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
