#!/usr/bin/env python
"""Runbook shim: accepts the runbook's bake command verbatim.

    python scripts/training/bakein_o_proj.py --model_path runs/so8t_lora \
        --output_path models/so8t_baked --base_model models/Borea-Phi-3.5-mini-Instruct-Jp

Same as ``so8t bake ...``.
"""

import sys

from so8t.cli import main

if __name__ == "__main__":
    sys.exit(main(["bake", *sys.argv[1:]]))
