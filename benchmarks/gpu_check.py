#!/usr/bin/env python
"""GPU checks for a lent CUDA machine: the QLoRA (bitsandbytes NF4) path and gate overhead.

1. QLoRA on CUDA: a tiny Llama built from config, `so8t.training.train` with --load_in_4bit for a few
   steps, checkpoint, SIGKILL-free resume to the end: generators stay float32 and non-zero, loss
   falls, the adapter and gates are written.
2. Step time with gates on every layer vs plain LoRA on a SmolLM2-135M-shaped model (random
   weights: timing does not depend on them), bf16 on the GPU, timed with CUDA events,
   interleaved. Also batch 16 x 512.

Usage: python benchmarks/gpu_check.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def qlora_check(work: Path) -> dict:
    from so8t.config import TrainConfig
    from so8t.training.train import read_loss_log, train
    from safetensors.torch import load_file
    from tests.fixtures.tiny_models import build_tiny_llama, build_tokenizer_model

    sp = build_tokenizer_model(work / "sp")
    model = build_tiny_llama(work / "llama", sp)
    data = work / "d.jsonl"
    recs = [{"instruction": f"add {i} and {i + 1}", "output": str(2 * i + 1), "thinking": f"{i}+{i + 1}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    kw = dict(base_model=str(model), dataset=str(data), output_dir=str(work / "q"), batch_size=4,
              gradient_accumulation_steps=1, save_steps=4, max_length=64, learning_rate=5e-3,
              load_in_4bit=True, lora_r=8, lora_alpha=16)
    train(TrainConfig(max_steps=8, **kw))
    t0 = time.time()
    train(TrainConfig(max_steps=12, resume_from_checkpoint="latest", **kw))
    log = read_loss_log(work / "q")
    gates = load_file(str(work / "q" / "so8t_gates.safetensors"))
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    m = AutoModelForCausalLM.from_pretrained(str(model), quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), device_map={"": 0})
    linear4 = sum(type(x).__name__ == "Linear4bit" for x in m.modules())
    return {
        "device": torch.cuda.get_device_name(0), "linear4bit_layers": linear4,
        "steps_logged": [r["step"] for r in log], "ce_first": log[0]["ce_loss"], "ce_last": log[-1]["ce_loss"],
        "gates_dtype": sorted({str(t.dtype) for t in gates.values()}),
        "gates_nonzero": all(float(t.abs().max()) > 0 for t in gates.values()),
        "resume_s": time.time() - t0,
    }


def step_bench(batch: int, seq: int, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from so8t.training.gates import attach_gates, iter_gates
    from so8t.training.train import resolve_lora_targets

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)

    def build(gated, per_gate=False):
        torch.manual_seed(0)
        base = LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
        m = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=resolve_lora_targets(base, "all-linear")))
        if gated:
            attach_gates(m)
            with torch.no_grad():
                for _, g in iter_gates(m):
                    g.generators.normal_(std=0.05)
                    if per_gate:  # the unbatched path: each gate computes its own expm
                        g.__dict__["_cache"] = None
        m.train()
        return m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    ids = torch.randint(0, 49152, (batch, seq), device="cuda")
    inputs = {"input_ids": ids, "labels": ids}
    variants = {"lora": build(False), "lora+so8t": build(True), "lora+so8t-per-gate-expm": build(True, per_gate=True)}

    def one(m, o):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        m(**inputs).loss.backward()
        o.step()
        o.zero_grad(set_to_none=True)
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / 1000

    for m, o in variants.values():
        for _ in range(3):
            one(m, o)
    times = {k: [] for k in variants}
    for _ in range(steps):
        for k, (m, o) in variants.items():
            times[k].append(one(m, o))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "seq": seq, "steps": steps, "median_step_s": med,
            "ratio_gated_over_lora": med["lora+so8t"] / med["lora"],
            "ratio_per_gate_over_lora": med["lora+so8t-per-gate-expm"] / med["lora"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="Directory for gpu_check.json.")
    ap.add_argument("--bench_only", action="store_true", help="Skip the QLoRA check.")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"torch": torch.__version__}
    if not args.bench_only:
        try:
            result["qlora"] = qlora_check(Path("/tmp/so8t_gpu_work"))
        except Exception as e:  # report and continue to the benchmark; the exit code says it failed
            result["qlora_error"] = repr(e)
    result["bench_small"] = step_bench(4, 128, 20)
    result["bench_large"] = step_bench(16, 512, 20)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    sys.exit(1 if "qlora_error" in result else 0)


if __name__ == "__main__":
    main()
