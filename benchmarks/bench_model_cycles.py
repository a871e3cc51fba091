"""Resident memory over model load/close cycles, with and without returning the freed heap.

What ``so8t serve`` does on every swap that loads: a :class:`so8t.serving.decide.Decider` is loaded on one thread,
used from another, and the model it replaces is closed (two kept at a time, as with ``--warm_versions 2``).
Each mode runs in its own process: ``trim`` is the library as it is (``Decider.close`` calls
:func:`so8t.serving.decide.release_freed_heap`), ``no-trim`` the same with that call disabled. Reported: RSS after
every cycle; the growth from the first kept cycle to the last.

    python benchmarks/bench_model_cycles.py --json benchmarks/results_model_cycles.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, tempfile, threading
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import so8t.serving.decide as decide
from so8t.base_models import embedded_gguf, sha256_file
from so8t.decision import DEFAULT_DECISION_PROMPT

if sys.argv[2] == "no-trim":
    decide.release_freed_heap = lambda: None
cycles, threads = int(sys.argv[3]), int(sys.argv[4])
g = embedded_gguf("smollm2")
d = Path(tempfile.mkdtemp())
(d / "p.json").write_text(json.dumps(DEFAULT_DECISION_PROMPT.model_dump()))
(d / "c.json").write_text(json.dumps({"temperature": 1.0, "tau_deny": 0.5, "tau_escalate": 0.5,
                                      "model_sha256": sha256_file(g)}))

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

live, out = [], []
for _ in range(cycles):
    t = threading.Thread(target=lambda: live.append(decide.Decider(str(g), str(d / "c.json"), str(d / "p.json"),
                                                                   n_threads=threads)))
    t.start(); t.join()
    t = threading.Thread(target=lambda: live[-1].decide_one("Explain how tides work."))
    t.start(); t.join()
    if len(live) > 2:
        live.pop(0).close()
    out.append(rss())
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=40, help="Models loaded (and all but the last two closed).")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads.")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = ap.parse_args()
    results = {}
    for mode in ("no-trim", "trim"):
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(args.cycles), str(args.threads)],
                           capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        rss = json.loads(r.stdout.strip().splitlines()[-1])
        results[mode] = {"rss_mb": [round(x, 1) for x in rss], "growth_after_cycle_4_mb": round(rss[-1] - rss[3], 1)}
        print(f"{mode}: RSS {rss[3]:.0f} MB after 4 cycles -> {rss[-1]:.0f} MB after {args.cycles}", flush=True)
    out = {"cycles": args.cycles, "threads": args.threads, **results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
