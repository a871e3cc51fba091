"""``make demo`` / ``so8t demo``: the so8t-pipeline flow on the embedded SmolLM2 and the bundled data.

The recipe lives in :mod:`flows.demo` (the orchestration layer); this module only hands over to it,
imported lazily, so that ``so8t`` itself never imports Prefect. The training settings of the demo
are :func:`flows.demo.demo_params`; :func:`demo_train_config` is the plain-Python equivalent of its
training stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from so8t.config import TrainConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def demo_train_config(output_dir: Path, max_steps: int) -> TrainConfig:
    """The demo's training run without Prefect: short, CPU-sized, on the bundled data."""
    files = [DATA_DIR / "safety_train.jsonl", DATA_DIR / "instructions_train.jsonl"]
    return TrainConfig(
        base_model="smollm2", dataset=",".join(str(f) for f in files), output_dir=str(output_dir / "so8t_lora"),
        batch_size=4, gradient_accumulation_steps=1, max_steps=max_steps, save_steps=max(1, max_steps // 2),
        max_length=256, learning_rate=2e-4, pet_lambda=0.1,
    )


def run_demo(output_dir: Path, max_steps: int = 12) -> Any:
    """Run the so8t-pipeline flow in Prefect's ephemeral mode and print how to use the result."""
    from flows.demo import run_demo as run_pipeline_demo  # orchestration layer, imported on use only

    return run_pipeline_demo(Path(output_dir), max_steps=max_steps)
