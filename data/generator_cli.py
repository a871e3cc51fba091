"""The command line shared by the data generators (build_demo_data.py, build_ab_eval.py).

``python data/build_X.py`` writes its files, ``--check`` exits 1 when a file on disk differs from
what the generator would write, ``--stats`` prints the counts table. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def run(argv: list[str] | None, *, script: str, description: str, data_dir: Path,
        build_files: Callable[[], dict[str, bytes]], summary_markdown: Callable[[], str]) -> int:
    """Parse ``argv`` and write, check or summarise the generator's files; returns the exit code."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="exit 1 if files on disk differ")
    ap.add_argument("--stats", action="store_true", help="print the counts table only")
    args = ap.parse_args(argv)
    if args.stats:
        print(summary_markdown())
        return 0
    files = build_files()
    if args.check:
        stale = [n for n, b in files.items() if not (data_dir / n).is_file() or (data_dir / n).read_bytes() != b]
        for n in stale:
            print(f"out of date: data/{n}", file=sys.stderr)
        if stale:
            print(f"run: python data/{script}", file=sys.stderr)
            return 1
        print(f"ok: {len(files)} files up to date")
        return 0
    for n, b in files.items():
        (data_dir / n).write_bytes(b)
        n_records = b.count(b"\n")
        print(f"wrote data/{n} ({n_records} records)")
    print()
    print(summary_markdown())
    return 0
