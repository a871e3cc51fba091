"""Benchmarks of the registry, each a ratio against a baseline measured in the same run.

1. Publish of one large file (default 300 MB) vs ``cp`` of it (and vs ``cp`` + fsync of the copy,
   since publish is durable). Every publish goes to a fresh store, so nothing is deduplicated.
2. Alias change latency (promote) in a store with 1 version vs one with 1,000 versions (the same
   flip between two versions in both), rounds interleaved so machine noise hits both equally;
   plus, as a worst case, promotions spread over hundreds of distinct versions (each one then
   keeps a state entry in state.json).

Usage: ``python benchmarks/bench_registry.py [--size-mb 300] [--versions 1000] [--dir DIR]``.
Prints a Markdown table (paste into BENCHMARKS.md) and a JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import Registry  # noqa: E402


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_publish(work: Path, size_mb: int, repeats: int) -> dict:
    src = work / "big.gguf"
    with open(src, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    src.read_bytes()  # warm the page cache for every contender alike
    cp, cp_sync, pub, sha = [], [], [], []

    def sha256_only() -> None:
        h = hashlib.sha256()
        with open(src, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)

    for i in range(repeats):
        sha.append(_timed(sha256_only))
        dst = work / f"copy{i}"
        cp.append(_timed(lambda: subprocess.run(["cp", str(src), str(dst)], check=True)))
        dst.unlink()
        cp_sync.append(_timed(lambda: subprocess.run(["cp", str(src), str(dst)], check=True)
                              or subprocess.run(["sync", str(dst)], check=True)))
        dst.unlink()
        root = work / f"store{i}"
        pub.append(_timed(lambda: Registry(root).publish("bench", {"model.gguf": src})))
        shutil.rmtree(root)
    src.unlink()
    c, cs, p = statistics.median(cp), statistics.median(cp_sync), statistics.median(pub)
    h = statistics.median(sha)
    return {"size_mb": size_mb, "repeats": repeats, "cp_s": c, "cp_fsync_s": cs, "publish_s": p,
            "sha256_s": h, "ratio_vs_cp": p / c, "ratio_vs_cp_fsync": p / cs, "ratio_vs_sha256": p / h}


def bench_alias(work: Path, n_versions: int, changes: int) -> dict:
    small, big = Registry(work / "one"), Registry(work / "many")
    small.publish("bench", {"a.gguf": b"v1"})
    small.publish("bench", {"a.gguf": b"v2"})  # two versions to flip between
    t = time.perf_counter()
    for i in range(n_versions):
        big.publish("bench", {"a.gguf": f"v{i}".encode(), "Modelfile": b"FROM ./a.gguf\n"})
    fill_s = time.perf_counter() - t
    lat_small, lat_big, lat_spread = [], [], []
    n = n_versions
    for i in range(changes):  # interleave A, B, C so machine noise hits all three alike
        flip = i % 2
        spread = f"v{1 + (i * 7919) % (n - 2)}"  # many distinct versions: state.json grows
        lat_small.append(_timed(lambda: small.promote("bench", f"v{1 + flip}", reason="bench")))
        lat_big.append(_timed(lambda: big.promote("bench", f"v{n - flip}", "production", reason="bench")))
        lat_spread.append(_timed(lambda: big.promote("bench", spread, "spread", reason="bench")))
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]  # noqa: E731
    a, b, c = statistics.median(lat_small), statistics.median(lat_big), statistics.median(lat_spread)
    return {"versions": n_versions, "changes": changes, "fill_s": fill_s,
            "median_1_ms": a * 1e3, "median_n_ms": b * 1e3, "median_spread_ms": c * 1e3,
            "p90_1_ms": q(lat_small, 0.9) * 1e3, "p90_n_ms": q(lat_big, 0.9) * 1e3,
            "ratio_median": b / a, "ratio_p90": q(lat_big, 0.9) / q(lat_small, 0.9), "ratio_spread": c / a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300, help="size of the published file in MB")
    ap.add_argument("--repeats", type=int, default=5, help="publish/cp repetitions (median taken)")
    ap.add_argument("--versions", type=int, default=1000, help="versions in the big store")
    ap.add_argument("--changes", type=int, default=300, help="alias changes measured per store")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=args.dir))
    try:
        pub = bench_publish(work, args.size_mb, args.repeats)
        alias = bench_alias(work, args.versions, args.changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| publish {pub['size_mb']} MB (median of {pub['repeats']}) | {pub['publish_s']:.3f} s | "
          f"`cp` {pub['cp_s']:.3f} s | **{pub['ratio_vs_cp']:.2f}x** (target <= 1.5) |")
    print(f"| same, baseline `cp` + `sync FILE` | {pub['publish_s']:.3f} s | {pub['cp_fsync_s']:.3f} s | "
          f"**{pub['ratio_vs_cp_fsync']:.2f}x** |")
    print(f"| same, baseline: sha256 of the file alone (hashlib) | {pub['publish_s']:.3f} s | "
          f"{pub['sha256_s']:.3f} s | **{pub['ratio_vs_sha256']:.2f}x** |")
    print(f"| alias change, {alias['versions']} versions vs 1 (median of {alias['changes']}) | "
          f"{alias['median_n_ms']:.2f} ms | {alias['median_1_ms']:.2f} ms | **{alias['ratio_median']:.2f}x** |")
    print(f"| alias change p90, {alias['versions']} vs 1 | {alias['p90_n_ms']:.2f} ms | "
          f"{alias['p90_1_ms']:.2f} ms | **{alias['ratio_p90']:.2f}x** |")
    print(f"| alias change over {alias['changes']} distinct versions of {alias['versions']} vs flip in a "
          f"1-version store | {alias['median_spread_ms']:.2f} ms | {alias['median_1_ms']:.2f} ms | "
          f"**{alias['ratio_spread']:.2f}x** |")
    print(json.dumps({"publish": pub, "alias": alias}))


if __name__ == "__main__":
    main()
