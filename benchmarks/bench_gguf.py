#!/usr/bin/env python
"""Wall time of GGUF conversion and of each quantization on SmolLM2-135M-Instruct.

Converts the prepared embedded model to F16 with llama.cpp's own converter, then quantizes to
Q4_K_M, Q5_K_M and Q8_0 through the C API, each timed separately (fidelity off, so only the
conversion work is timed), and reports sizes. Baseline in the same run: copying the F16 file.

Usage: python benchmarks/bench_gguf.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    ap.add_argument("--threads", type=int, default=2, help="Quantization threads.")
    args = ap.parse_args()

    from so8t.base_models import prepare_embedded
    from so8t.gguf import convert_to_gguf
    from so8t.gguf_quant import quantize_gguf

    model = prepare_embedded("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        result = convert_to_gguf(model, out, [], name="smollm2", fidelity=False)
        convert_s = time.perf_counter() - t0
        f16 = Path(result.f16_path)
        t0 = time.perf_counter()
        shutil.copy(f16, out / "copy.gguf")
        copy_s = time.perf_counter() - t0
        rows = {"F16 (convert_hf_to_gguf.py)": {"seconds": convert_s, "bytes": f16.stat().st_size}}
        for q in ("Q4_K_M", "Q5_K_M", "Q8_0"):
            dst = out / f"smollm2_{q}.gguf"
            t0 = time.perf_counter()
            quantize_gguf(f16, dst, q, threads=args.threads)
            rows[q] = {"seconds": time.perf_counter() - t0, "bytes": dst.stat().st_size}
        result = {"model": "SmolLM2-135M-Instruct", "copy_f16_s": copy_s, "steps": rows}
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
