#!/usr/bin/env python
"""Pick the PET default by experiment: short SO8T runs on SmolLM2 with several pet_lambda values.

Each run trains the same steps on the bundled training data (same seed), then measures on held-out
data (data/instructions_val.jsonl + data/safety_val.jsonl subsets): the assistant-token CE (what we
care about) and the PET energy of the final hidden states (what PET lowers).

Usage: python benchmarks/pet_lambda_sweep.py [--lambdas 0,0.01,0.1] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@torch.no_grad()
def heldout(run: Path, base_dir: Path, n: int = 48) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from so8t.training.data import PadCollator, encode_dataset, read_jsonl
    from so8t.training.gates import load_gates
    from so8t.training.pet import pet_energy

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    recs = read_jsonl(REPO / "data" / "instructions_val.jsonl")[: n // 2] + read_jsonl(REPO / "data" / "safety_val.jsonl")[: n // 2]
    ds, _ = encode_dataset(recs, tok, 256)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32), str(run)).eval()
    load_gates(model, run)
    col = PadCollator(tok.pad_token_id)
    ce_sum, tokens, energy = 0.0, 0, []
    for i in range(0, len(ds), 8):
        b = col([ds[j] for j in range(i, min(i + 8, len(ds)))])
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        logits = out.logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        mask = labels != -100
        ce = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
        ce_sum += float(ce)
        tokens += int(mask.sum())
        energy.append(float(pet_energy(out.hidden_states[-1], b["attention_mask"])))
    return {"heldout_ce": ce_sum / tokens, "heldout_pet_energy": sum(energy) / len(energy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambdas", default="0,0.01,0.1", help="Comma-separated pet_lambda values.")
    ap.add_argument("--steps", type=int, default=20, help="Optimizer steps per run.")
    ap.add_argument("--json", help="Also write the results as JSON here.")
    args = ap.parse_args()

    from so8t.base_models import prepare_embedded
    from so8t.config import TrainConfig
    from so8t.training.train import read_loss_log, train

    base_dir = prepare_embedded("smollm2")
    data = ",".join(str(REPO / "data" / f) for f in ("safety_train.jsonl", "instructions_train.jsonl"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for lam in [float(x) for x in args.lambdas.split(",")]:
            out = Path(tmp) / f"pet{lam}"
            train(TrainConfig(base_model="smollm2", dataset=data, output_dir=str(out), batch_size=4,
                              gradient_accumulation_steps=1, max_steps=args.steps, save_steps=args.steps,
                              max_length=256, pet_lambda=lam, seed=0))
            log = read_loss_log(out)
            row = {"pet_lambda": lam, "train_ce_last5": sum(r["ce_loss"] for r in log[-5:]) / 5, **heldout(out, base_dir)}
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
