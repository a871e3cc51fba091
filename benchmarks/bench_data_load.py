"""Peak memory and time of loading a large training file: ``datasets`` (so8t.training.train_data) vs the in-memory path.

Builds a JSONL file of ``--mb`` megabytes from the bundled decision records (each copy made distinct),
then, each in a fresh process, loads it the way ``so8t train`` does (:func:`so8t.training.train_data.load_training_data`:
check, Arrow, cached map; cold cache, then warm) and the old way (``read_jsonl`` + ``encode_dataset``, every
record and token list in Python objects), and reports peak RSS and wall time of each.

    python benchmarks/bench_data_load.py --mb 200 --json benchmarks/results_data_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_file(path: Path, mb: int) -> int:
    src = [json.loads(line) for line in (ROOT / "data" / "decision_train.jsonl").read_text(encoding="utf-8").splitlines()]
    n, size = 0, 0
    with path.open("w", encoding="utf-8") as f:
        while size < mb * 1_000_000:
            r = dict(src[n % len(src)])
            r["text"] = f"{r['text']} (copy {n // len(src)})"
            line = json.dumps(r, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            n += 1
    return n


def child(mode: str, path: str, cache: str) -> dict:
    from transformers import AutoTokenizer

    from so8t.base_models import prepare_embedded
    from so8t.decision import load_decision_prompt

    tok = AutoTokenizer.from_pretrained(str(prepare_embedded("smollm2")))
    prompt = load_decision_prompt(None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    if mode == "datasets":
        from so8t.training.train_data import load_training_data

        data, stats = load_training_data(path, tok, 512, prompt, "label_token", cache_dir=cache, progress=False)
        n = len(data)
        data.dataset[n - 1]  # touch the end: memory-mapped, paged in on demand
    else:
        from so8t.training.data import encode_dataset, read_jsonl

        ds, stats = encode_dataset(read_jsonl(path), tok, 512, prompt, "label_token")
        n = len(ds)
    return {"mode": mode, "records": n, "tokens": stats.tokens, "wall_s": time.time() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_load_mb": base_rss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=200, help="Size of the generated training file in MB.")
    ap.add_argument("--modes", default="datasets,datasets,in-memory",
                    help="Loads to run in order, each in a fresh process (the second 'datasets' is the warm cache).")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here.")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="so8t-bench-data-") as tmp:
        path = Path(tmp) / "big.jsonl"
        n = build_file(path, args.mb)
        rows = []
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(Path(tmp) / "cache")],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(file_mb=path.stat().st_size / 1e6, loadavg=os.getloadavg())
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"records_in_file": n, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
