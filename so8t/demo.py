"""``make demo``: the pipeline on the embedded SmolLM2-135M-Instruct and the bundled data.

At this stage: prepare the base model, run a short SO8T training, and say where the result is.
Later stages (bake, GGUF, calibration, A/B, registry) extend this recipe.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from so8t.config import TrainConfig
from so8t.train import read_loss_log, train

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def demo_train_config(output_dir: Path, max_steps: int) -> TrainConfig:
    """The demo's training run: short, CPU-sized, on the bundled safety and think-format data."""
    files = [DATA_DIR / "safety_train.jsonl", DATA_DIR / "instructions_train.jsonl"]
    return TrainConfig(
        base_model="smollm2",
        dataset=",".join(str(f) for f in files),
        output_dir=str(output_dir / "so8t_lora"),
        batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        save_steps=max(1, max_steps // 2),
        max_length=256,
        learning_rate=2e-4,
        pet_lambda=0.1,
    )


def run_demo(output_dir: Path, max_steps: int = 12) -> Path:
    """Run the demo; returns the training output directory."""
    t0 = time.monotonic()
    cfg = demo_train_config(output_dir, max_steps)
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)  # the demo always starts fresh
    train(cfg)
    log = read_loss_log(out)
    first, last = log[0], log[-1]
    print()
    print(f"SO8T training done in {time.monotonic() - t0:.0f} s: {len(log)} logged steps")
    print(f"  CE loss {first['ce_loss']:.3f} -> {last['ce_loss']:.3f}; PET term {last['pet_loss']:.2e}")
    print(f"  adapter + gates: {out}")
    print(f"  loss log:        {out / 'loss_log.jsonl'}")
    print(f"  resume with:     so8t train ... --output_dir {out} --resume_from_checkpoint latest")
    return out
