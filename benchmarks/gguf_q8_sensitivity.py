#!/usr/bin/env python
"""Why one probe position dominates SmolLM2's Q8_0 probe KL: sensitivity of the model itself.

Everything here runs in PyTorch on the fp32 HF model (no llama.cpp), against its own unperturbed
logits; KL(reference || perturbed) of the next-token distribution, nats, on the ``so8t convert``
probes:

1. Q8_0 simulated in the HF model (blocks of 32, scale = max|x|/127 rounded to fp16, as ggml's
   ``quantize_row_q8_0``): weights only; activations only (the inputs of every linear layer, which
   llama.cpp's CPU Q8_0 matmul quantizes to Q8_0 as well); both.
2. Random perturbations: every linear layer's input multiplied by (1 + s * N(0, 1)) for s = 0.3 %
   and 1 %, 8 seeds each: KL at the most sensitive position and the residual-stream activation that
   decides it (layer 12, dimension 507 of that position).

Usage: python benchmarks/gguf_q8_sensitivity.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def q8_0(x):
    """Round-trip through ggml Q8_0 along the last dimension (blocks of 32)."""
    import torch

    b = x.reshape(-1, 32).float()
    d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
    q = torch.round(b / torch.where(d > 0, d, torch.ones_like(d))).clamp(-127, 127)
    return (q * d).reshape(x.shape).to(x.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from so8t.base_models import prepare_embedded
    from so8t.export.fidelity import compare_logits, probe_set

    model_dir = Path(prepare_embedded("smollm2"))
    probes = probe_set(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]

    def logits(hook=None) -> list[np.ndarray]:
        handles = [m.register_forward_pre_hook(hook) for m in linears] if hook else []
        try:
            with torch.no_grad():
                return [model(torch.tensor([p.ids])).logits[0].double().numpy() for p in probes.probes]
        finally:
            for h in handles:
                h.remove()

    ref = logits()
    labels = [p.label for p in probes.probes]

    def kl_of(outs: list[np.ndarray]) -> dict:
        kls = [compare_logits(r, o)["kl"] for r, o in zip(ref, outs)]
        allk = np.concatenate(kls)
        worst = max(range(len(kls)), key=lambda i: kls[i].max())
        return {"mean_kl": float(allk.mean()), "median_kl": float(np.median(allk)), "max_kl": float(allk.max()),
                "per_probe_mean_kl": {lab: float(k.mean()) for lab, k in zip(labels, kls)},
                "worst": f"{labels[worst]} position {int(kls[worst].argmax())}"}

    result: dict = {"model": str(model_dir), "simulated_q8_0": {}, "random_perturbation": {}}
    act_hook = lambda _m, a: (q8_0(a[0]),)  # noqa: E731
    originals = {id(m): m.weight.detach().clone() for m in linears}
    result["simulated_q8_0"]["activations only"] = kl_of(logits(act_hook))
    with torch.no_grad():
        for m in linears:
            m.weight.copy_(q8_0(m.weight))
    result["simulated_q8_0"]["weights only"] = kl_of(logits())
    result["simulated_q8_0"]["weights and activations"] = kl_of(logits(act_hook))
    with torch.no_grad():
        for m in linears:
            m.weight.copy_(originals[id(m)])

    # the most sensitive position (by the activations-only simulation) and the activation behind it
    label, _, pos = result["simulated_q8_0"]["activations only"]["worst"].split()
    idx, pos = labels.index(label), int(pos)
    ids = torch.tensor([probes.probes[idx].ids])
    with torch.no_grad():
        base = model(ids, output_hidden_states=True).hidden_states[12][0, pos, 507].item()
    result["random_perturbation"]["position"] = f"{label} position {pos}"
    result["random_perturbation"]["reference_h12_d507"] = base
    for scale in (0.003, 0.01):
        runs = []
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            hook = lambda _m, a, s=scale, g=g: (a[0] * (1 + s * torch.randn(a[0].shape, generator=g)),)  # noqa: E731
            handles = [m.register_forward_pre_hook(hook) for m in linears]
            with torch.no_grad():
                out = model(ids, output_hidden_states=True)
            for h in handles:
                h.remove()
            kl = compare_logits(ref[idx], out.logits[0].double().numpy())["kl"]
            runs.append({"kl_at_position": float(kl[pos]), "probe_mean_kl": float(kl.mean()),
                         "h12_d507": float(out.hidden_states[12][0, pos, 507])})
        result["random_perturbation"][f"relative noise {scale:g}"] = runs
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
