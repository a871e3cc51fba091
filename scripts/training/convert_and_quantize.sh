#!/usr/bin/env bash
# Runbook shim: convert_and_quantize.sh MODEL_DIR OUT_DIR [QUANT ...]
# Converts a Hugging Face model to OUT_DIR/{name}_f16.gguf with llama.cpp's own converter and
# quantizes it to OUT_DIR/{name}_{QUANT}.gguf (default Q5_K_M); see `so8t convert --help`.
# Extra flags after the quant types (e.g. --name so8t_baked, --dry-run) pass through.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 MODEL_DIR OUT_DIR [QUANT ...] [so8t convert flags]  (QUANT: Q4_K_M, Q5_K_M (default), Q8_0, ...)" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if command -v so8t >/dev/null 2>&1; then
    exec so8t convert "$@"
elif [ -x "$HERE/.venv/bin/so8t" ]; then
    exec "$HERE/.venv/bin/so8t" convert "$@"
else
    exec python3 -m so8t.cli convert "$@"
fi
