"""Imports only run downwards: so8t/ and registry/ never import Prefect; registry/ never torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = set(sys.argv[2].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    pkg = importlib.import_module(sys.argv[1])
    names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(len(names))
    """
)


@pytest.mark.parametrize("package, blocked", [
    ("so8t", "prefect"),
    ("registry", "prefect,torch,transformers"),
])
def test_package_imports_without_blocked(package, blocked):
    r = subprocess.run([sys.executable, "-c", SCRIPT, package, blocked], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) >= 5  # really walked the package


def test_the_blocker_blocks():
    r = subprocess.run([sys.executable, "-c", SCRIPT + "\nimport prefect\n", "registry", "prefect"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "blocked import of prefect" in r.stderr
