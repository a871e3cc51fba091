"""Load and fault benchmark of ``so8t serve``: concurrent clients while production flips between versions.

The embedded SmolLM2 GGUF (Q4_1) in a fresh registry as ``--versions`` good versions, each its own GGUF
blob (byte-different copies, as retrained versions are) with a calibration fitted by hand on its scores,
and a broken one ("fitted on another model"), which the service must refuse. ``so8t serve`` runs as its
own process (as a user runs it) following ``production``; ``--clients`` threads post one request each at
a time for ``--seconds`` while the alias moves ``--flips`` times through the good versions and is pointed
at the broken one once (``--broken 1``; then moved on). Measured:

- failed requests (anything but 200 and deliberate 429s), and responses whose version was not
  production at any moment between the request's start and end (the alias timeline is recorded on
  the client side around each registry call, so the check is conservative);
- latency p50 / p99, throughput (decisions/s), the server's RSS before, during and after the swaps;
- the baseline: the same texts decided in-process by :class:`so8t.serving.decide.Decider` (what ``so8t decide``
  does) on the same machine, one at a time, right before; the target is server / in-process >= 0.8.

    python benchmarks/bench_serve.py --json benchmarks/results_serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _texts(n: int) -> list[str]:
    rows = (ROOT / "data" / "decision_test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(r)["text"] for r in rows[:n]]


def _variant(gguf: Path, out: Path, k: int) -> Path:
    """A byte-different copy of ``gguf`` (same weights, one more description): another blob, another model to
    load, as a retrained version would be. Written by the gguf package's own metadata tool."""
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--general-description",
                    f"so8t bench_serve variant {k}", "--force", str(gguf), str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def build_registry(root: Path, texts: list[str], threads: int, good: int = 2) -> dict:
    """``good`` versions v1..vN, each its own GGUF blob (v1 the embedded GGUF, the others byte-different copies)
    with a hand-fitted calibration of its scores, and a broken one (calibration "fitted on another model")."""
    import numpy as np

    from registry import Registry
    from so8t.base_models import embedded_gguf, sha256_file
    from so8t.decision import DEFAULT_DECISION_PROMPT
    from so8t.calibrate.metrics import softmax
    from so8t.calibrate.scoring import score_gguf
    from so8t.version_layout import LAYOUT

    gguf = embedded_gguf("smollm2")
    work = root.parent / "cal"
    work.mkdir(exist_ok=True)
    z = score_gguf(gguf, texts[:64], ["ALLOW"] * 64, n_threads=threads, progress=False).z
    (work / "prompt.json").write_text(json.dumps(DEFAULT_DECISION_PROMPT.model_dump()))
    reg = Registry(root)
    versions = []
    for k in range(good + 1):
        broken = k == good
        g = gguf if k == 0 or broken else _variant(gguf, work / f"variant{k}.gguf", k)
        t = 1.0 + k
        p = softmax(z, t)  # the variants carry the same weights: the same scores
        cal = {"temperature": t, "tau_deny": float(np.quantile(p[:, 2], 0.5 + 0.2 / (k + 1))),
               "tau_escalate": float(np.quantile(p[:, 0], 0.3)), "model_sha256": "0" * 64 if broken else sha256_file(g)}
        (work / f"cal{k}.json").write_text(json.dumps(cal))
        m = reg.publish("so8t-bench", {LAYOUT.gguf("smollm2_Q4_1.gguf"): g, LAYOUT.decision_prompt: work / "prompt.json",
                                       LAYOUT.calibration: work / f"cal{k}.json"})
        versions.append(m.version)
    reg.promote("so8t-bench", versions[0])
    return {"gguf": str(gguf), "calibration_v1": str(work / "cal0.json"), "prompt": str(work / "prompt.json"),
            "good": versions[:good], "broken": versions[good]}


def in_process_rate(built: dict, texts: list[str], seconds: float, threads: int) -> dict:
    from so8t.serving.decide import Decider

    with Decider(built["gguf"], built["calibration_v1"], built["prompt"], n_threads=threads) as d:
        d.decide_one(texts[0])
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            d.decide_one(texts[n % len(texts)])
            n += 1
        wall = time.monotonic() - t0
    return {"decisions": n, "seconds": wall, "per_second": n / wall}


def run(args) -> dict:
    import httpx
    import numpy as np

    from registry import Registry

    texts = _texts(256)
    tmp = Path(tempfile.mkdtemp(prefix="so8t-bench-serve-"))
    root = tmp / "registry"
    built = build_registry(root, texts, args.threads, args.versions)
    good, broken = built["good"], built["broken"]
    baseline = in_process_rate(built, texts, args.baseline_seconds, args.threads)
    print(f"in-process: {baseline['per_second']:.1f} decisions/s", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SO8T_LOG_DIR": str(tmp / "logs")}
    env.pop("SO8T_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "so8t.cli", "serve", "--model", "so8t-bench", "--registry_root", str(root), "--port",
         str(port), "--n_threads", str(args.threads), "--max_queue", str(args.clients * 2), "--poll_interval", "0.5",
         "--warm_versions", str(args.warm_versions)],
        cwd=ROOT, env=env, stdout=(tmp / "server.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        rss = {"ready": _rss_mb(server.pid)}
        stop = threading.Event()
        results: list[tuple[float, float, int, str | None]] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as h:
                i = k
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        r = h.post("/v1/decide", json={"text": texts[i % len(texts)]})
                        status, version = r.status_code, (r.json().get("version") if r.status_code == 200 else None)
                    except httpx.HTTPError:
                        status, version = -1, None
                    with lock:
                        results.append((t0, time.monotonic(), status, version))
                    i += args.clients

        reg = Registry(root)
        timeline: list[tuple[float, float, str]] = [(0.0, 0.0, good[0])]  # (before, after, new production)
        workers = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        t_start = time.monotonic()
        for w in workers:
            w.start()
        changes = args.flips + (1 if args.broken else 0)
        gap = args.seconds / (changes + 1)
        broken_at = changes // 2 if args.broken else -1
        rss_samples, served = [], 0
        for f in range(changes):
            time.sleep(gap)
            if f == broken_at:
                target = broken
            else:
                served = (served + 1) % len(good)
                target = good[served]
            t0 = time.monotonic()
            reg.promote("so8t-bench", target, reason="bench flip")
            timeline.append((t0, time.monotonic(), target))
            if target == broken:  # keep the broken version named until the service has tried it and said so
                seen = time.monotonic() + 60
                while httpx.get(url + "/readyz", timeout=60).json().get("error") is None and time.monotonic() < seen:
                    time.sleep(0.1)
            rss_samples.append(_rss_mb(server.pid))
        time.sleep(max(0.0, args.seconds - (time.monotonic() - t_start)))
        stop.set()
        for w in workers:
            w.join()
        wall = time.monotonic() - t_start
        rss["after"] = _rss_mb(server.pid)
        model_info = httpx.get(url + "/v1/model").json()
        metrics = httpx.get(url + "/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    # Which versions were production during [start, end]. A change is committed somewhere in its
    # (before, after) window. The broken version is never served: while the alias names it, the version served
    # before it stays in effect (the service says stale), so that one counts as production then.
    effective, current = [], good[0]
    for before, _after, v in timeline:
        current = v if v != broken else current
        effective.append((before, current))

    def production_during(start: float, end: float) -> set[str]:
        out = set()
        for i, (before, v) in enumerate(effective):
            until = timeline[i + 1][1] if i + 1 < len(timeline) else float("inf")
            if before <= end and start <= until:
                out.add(v)
        return out

    ok = [r for r in results if r[2] == 200]
    failed = [r for r in results if r[2] not in (200, 429)]
    violations = [r for r in ok if r[3] not in production_during(r[0], r[1])]
    lat = np.array([(e - s) * 1000 for s, e, *_ in ok])
    per_second = len(ok) / wall
    swaps = [ln for ln in metrics.splitlines()
             if ln.startswith(("so8t_model_swaps_total", "so8t_model_swaps_warm_total", "so8t_model_swap_failures_total",
                               "so8t_models_loaded"))]
    return {
        "clients": args.clients, "seconds": wall, "flips": args.flips, "broken_promotions": int(args.broken),
        "good_versions": len(good), "warm_versions": args.warm_versions,
        "requests": len(results), "ok": len(ok), "rejected_429": sum(r[2] == 429 for r in results),
        "failed": len(failed), "version_violations": len(violations),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "max": float(lat.max())},
        "throughput_per_second": per_second, "in_process": baseline,
        "server_over_in_process": per_second / baseline["per_second"],
        "rss_mb": {**rss, "during_min": min(rss_samples, default=float("nan")),
                   "during_max": max(rss_samples, default=float("nan")), "samples": rss_samples},
        "swap_metrics": swaps, "final_model": {k: model_info.get(k) for k in ("version", "alias_version", "stale", "error")},
        "threads": args.threads, "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="Concurrent clients (one request in flight each).")
    ap.add_argument("--seconds", type=float, default=60.0, help="How long the clients run.")
    ap.add_argument("--flips", type=int, default=20, help="Production changes between good versions during the run "
                                                          "(0: none, the HTTP overhead alone).")
    ap.add_argument("--broken", type=int, choices=(0, 1), default=1, help="Promote the broken version once (1) or not.")
    ap.add_argument("--versions", type=int, default=2, help="Good versions production cycles through, each its own "
                                                            "GGUF blob (3 with --warm_versions 2: every flip loads).")
    ap.add_argument("--warm_versions", type=int, default=2, help="The server's --warm_versions.")
    ap.add_argument("--baseline_seconds", type=float, default=20.0, help="How long the in-process baseline runs.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads (server and baseline).")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = ap.parse_args()
    out = run(args)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
