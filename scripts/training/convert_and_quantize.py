#!/usr/bin/env python
"""Runbook shim: convert_and_quantize MODEL_DIR OUT_DIR [QUANT ...] (the Python twin of the .sh and .bat).

Converts a Hugging Face model to OUT_DIR/{name}_f16.gguf with llama.cpp's own converter and quantizes it
to OUT_DIR/{name}_{QUANT}.gguf (default Q5_K_M); see ``so8t convert --help``. Extra flags after the quant
types (e.g. --name so8t_baked, --dry-run) pass through.
"""

import sys

from so8t.cli import main

USAGE = ("usage: convert_and_quantize MODEL_DIR OUT_DIR [QUANT ...] [so8t convert flags]  "
         "(QUANT: Q4_K_M, Q5_K_M (default), Q8_0, ...)")

if __name__ == "__main__":
    if len(sys.argv) < 3 and not {"-h", "--help"} & set(sys.argv[1:]):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(["convert", *sys.argv[1:]]))
