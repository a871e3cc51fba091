#!/usr/bin/env python
"""Runbook shim: accepts the runbook's training command verbatim.

    python scripts/training/train_so8t_lora.py --base_model models/X --dataset data/train.jsonl \
        --output_dir runs/so8t_lora --lora_r 16 --lora_alpha 32 --lora_dropout 0.05 --batch_size 1 \
        --gradient_accumulation_steps 8 --learning_rate 2e-4 --num_epochs 3 --load_in_4bit

Same as ``so8t train ...``; also works under ``accelerate launch``.
"""

import sys

from so8t.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
