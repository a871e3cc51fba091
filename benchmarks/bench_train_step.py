#!/usr/bin/env python
"""Training step time: LoRA + SO(8) gates on every layer vs plain LoRA, same model, same batch.

Both variants are built from the same SmolLM2-135M-Instruct (the embedded default), with LoRA
(r=16, all linear layers) and AdamW; the gated one has gates on all 30 layers with non-zero
generators. Steps (forward + backward + optimizer) are timed interleaved, A B A B ..., after
warm-up, and the ratio of medians is reported, of process CPU time (robust on a shared machine,
with one torch thread) and of wall time. Target: <= 1.05.

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

    from so8t.training.gates import attach_gates, iter_gates
    from so8t.training.train import resolve_lora_targets

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


def step(model, opt, batch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one training step."""
    t0, c0 = time.perf_counter(), time.process_time()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="Timed steps per variant (after 2 warm-up steps each).")
    ap.add_argument("--batch", type=int, default=4, help="Sequences per step.")
    ap.add_argument("--seq", type=int, default=128, help="Tokens per sequence.")
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: process CPU time then measures the work even on a shared machine).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from so8t.base_models import prepare_embedded

    model_dir = str(prepare_embedded("smollm2"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    variants = {"lora": build(False, model_dir), "lora+so8t": build(True, model_dir)}
    for m, o in variants.values():
        for _ in range(2):
            step(m, o, batch)
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(args.steps):
        for k, (m, o) in variants.items():
            w, c = step(m, o, batch)
            wall[k].append(w)
            cpu[k].append(c)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)", "batch": args.batch, "seq": args.seq, "steps": args.steps,
        "threads": torch.get_num_threads(),
        "median_step_wall_s": med_wall, "median_step_cpu_s": med_cpu,
        "ratio_gated_over_lora_cpu_time": med_cpu["lora+so8t"] / med_cpu["lora"],
        "ratio_gated_over_lora_wall": med_wall["lora+so8t"] / med_wall["lora"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
