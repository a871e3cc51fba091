#!/usr/bin/env python
"""Runbook shim: accepts the runbook's calibration command verbatim.

    python scripts/training/calibrate_aed.py --model models/so8t.Q4_K_M.gguf \
        --val_data data/val.jsonl --output_dir calibration_results --initial_temperature 1.0 \
        --initial_deny_threshold 0.5 --initial_escalate_threshold 0.7

Same as ``so8t calibrate ...`` (see ``so8t calibrate --help`` for the other flags).
"""

import sys

from so8t.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
