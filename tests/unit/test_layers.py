"""Imports only run downwards: so8t/ and registry/ never import Prefect; registry/ never torch; no import circles."""

from __future__ import annotations

import ast
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
    ("release", "prefect"),
])
def test_package_imports_without_blocked(package, blocked):
    r = subprocess.run([sys.executable, "-c", SCRIPT, package, blocked], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) >= 5  # really walked the package


def test_the_blocker_blocks():
    r = subprocess.run([sys.executable, "-c", SCRIPT + "\nimport prefect\n", "registry", "prefect"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "blocked import of prefect" in r.stderr


# ----------------------------------------------------------------------------- the import graph
# Parsed with `ast`, nothing imported: every `import` / `from ... import` statement of every module of
# the project's packages, kept with where it runs. All three kinds count for circles: a function-level
# import runs when the function does, and a circle through one is the same tangle, only deferred; a
# TYPE_CHECKING import is how a checker reads the module. An edge goes to the module named, or to the
# nearest package above a name that is not a module (`from registry import Registry` -> registry); the
# implicit import of a module's parent packages is not an edge (every module would depend on its
# package's __init__, and every __init__ that re-exports on its modules).

PACKAGES = ("so8t", "registry", "release", "tasks", "flows", "deployments")
KINDS = ("module", "function", "type-checking")

#: importer package -> {imported package: the kinds in which that import is forbidden}. Downwards only:
#: deployments -> flows -> tasks -> release -> (so8t, registry). registry never imports so8t (it must work
#: without torch); so8t reaches registry only inside functions (NAME@REF resolution in evaluate/decide/serve,
#: the `so8t registry` subcommand), so importing so8t never imports the registry.
FORBIDDEN: dict[str, dict[str, tuple[str, ...]]] = {
    "registry": {"so8t": KINDS, "release": KINDS, "tasks": KINDS, "flows": KINDS, "deployments": KINDS},
    "so8t": {"release": KINDS, "tasks": KINDS, "flows": KINDS, "deployments": KINDS,
             "registry": ("module", "type-checking")},
    "release": {"tasks": KINDS, "flows": KINDS, "deployments": KINDS},
    "tasks": {"flows": KINDS, "deployments": KINDS},
    "flows": {"deployments": KINDS},
}


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported project module, kind, line)`` for every import statement of ``module``."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str, int]] = []

    def add(node: ast.Import | ast.ImportFrom, kind: str) -> None:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package (a package's own __init__ is level 1 of itself)
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            full = [f"{base}.{a.name}" if base else a.name for a in node.names]
            names = [f if f in modules else base for f in full]
        for name in names:
            target = _target(name, modules)
            if target is not None and target != module:
                found.append((target, kind, node.lineno))

    def walk(nodes: list[ast.stmt], kind: str) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                add(node, kind)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(node.body, "function" if kind == "module" else kind)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                walk(node.body, "type-checking")
                walk(node.orelse, kind)
            else:  # class bodies, try/except/with/if/for/match blocks: they run where the statement runs
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    walk(getattr(node, field, None) or [], kind)

    walk(ast.parse(path.read_text(encoding="utf-8"), str(path)).body, "module")
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[tuple[str, str, int]]]:
    modules = project_modules(root, packages)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, list[tuple[str, str, int]]], kinds: tuple[str, ...] = KINDS) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``) through edges of ``kinds``, or None (depth-first, iterative)."""
    succ = {m: sorted({t for t, k, _ in edges if k in kinds}) for m, edges in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(succ):
        if state.get(start):
            continue
        path, stack = [start], [iter(succ[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(succ.get(nxt, ())))
    return None


def upward_imports(graph: dict[str, list[tuple[str, str, int]]]) -> list[str]:
    """Every import that breaks :data:`FORBIDDEN`, as ``'importer:line -> imported (kind)'``."""
    bad = []
    for module, edges in sorted(graph.items()):
        rules = FORBIDDEN.get(module.split(".")[0], {})
        for target, kind, line in edges:
            if kind in rules.get(target.split(".")[0], ()):
                bad.append(f"{module}:{line} -> {target} ({kind})")
    return bad


def test_no_import_circle_among_the_project_modules():
    """No circle through module-level, function-level or TYPE_CHECKING imports (all three count)."""
    graph = import_graph(REPO)
    assert len(graph) > 80 and sum(map(len, graph.values())) > 500  # really read the tree
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_upward_import():
    """so8t and registry never import tasks/flows/deployments; tasks never flows; registry never so8t;
    so8t imports registry only inside functions (see FORBIDDEN)."""
    graph = import_graph(REPO)
    assert upward_imports(graph) == []
    # the one allowed so8t -> registry kind is really used (the rule is not vacuous)
    assert any(t.startswith("registry") and k == "function" for m, e in graph.items() if m.startswith("so8t") for t, k, _ in e)


def test_the_graph_checks_can_fail(tmp_path):
    """A synthetic tree with a circle through a function-level and a TYPE_CHECKING import, and upward imports."""
    files = {
        "so8t/__init__.py": "",
        "so8t/a.py": "import so8t.b\n",
        "so8t/b.py": "def f():\n    from so8t import c\n",
        "so8t/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from so8t.a import X\n",
        "so8t/d.py": "from registry.store import Registry\n",
        "registry/__init__.py": "",
        "registry/store.py": "class Registry:\n    def f(self):\n        from so8t.a import X\n",
        "tasks/__init__.py": "",
        "tasks/t.py": "try:\n    from flows import run\nexcept ImportError:\n    pass\n",
        "flows/__init__.py": "from . import p\n",
        "flows/p.py": "from .. import tasks\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path, ("so8t", "registry", "tasks", "flows"))
    assert ("flows.p", "module", 1) in graph["flows"] and ("tasks", "module", 1) in graph["flows.p"]  # relative
    assert find_cycle(graph) == ["so8t.a", "so8t.b", "so8t.c", "so8t.a"]
    assert find_cycle(graph, ("module",)) is None  # the circle needs the deferred imports: they must count
    assert upward_imports(graph) == ["registry.store:3 -> so8t.a (function)", "so8t.d:1 -> registry.store (module)",
                                     "tasks.t:2 -> flows (module)"]


# ----------------------------------------------------------------------------- stages inside so8t
#: The library's stage packages in pipeline order. A stage imports only stages before it (A/B and serving both
#: come after calibration and may not import each other); the shared modules at the top of so8t/ import no stage
#: (so8t.cli, the dispatcher, excepted: it reaches every stage's command).
STAGE_ORDER = {"so8t.training": 0, "so8t.export": 1, "so8t.calibrate": 2, "so8t.ab": 3, "so8t.serving": 3}
DISPATCHERS = {"so8t.cli"}


def _stage(module: str) -> str | None:
    return next((s for s in STAGE_ORDER if module == s or module.startswith(s + ".")), None)


def stage_violations(graph: dict[str, list[tuple[str, str, int]]]) -> list[str]:
    """Every so8t import that runs against :data:`STAGE_ORDER`, as ``'importer:line -> imported'``."""
    bad = []
    for module, edges in sorted(graph.items()):
        if not module.startswith("so8t") or module in DISPATCHERS:
            continue
        src = _stage(module)
        for target, _kind, line in edges:
            dst = _stage(target)
            if dst is None or dst == src:
                continue
            if src is None or STAGE_ORDER[dst] >= STAGE_ORDER[src]:
                bad.append(f"{module}:{line} -> {target}")
    return bad


def test_library_stages_import_only_earlier_stages():
    graph = import_graph(REPO)
    assert {_stage(m) for m in graph if m.startswith("so8t")} >= set(STAGE_ORDER)  # every stage is a package
    assert stage_violations(graph) == []


def test_the_stage_check_can_fail():
    graph = {
        "so8t.export.bake": [("so8t.calibrate.metrics", "module", 3), ("so8t.training.gates", "module", 4)],
        "so8t.ab.runner": [("so8t.serving.decide", "function", 7)],
        "so8t.llama": [("so8t.serving.inference", "function", 9)],
        "so8t.cli": [("so8t.serving.serve_cli", "function", 1)],
    }
    assert stage_violations(graph) == ["so8t.ab.runner:7 -> so8t.serving.decide",
                                       "so8t.export.bake:3 -> so8t.calibrate.metrics",
                                       "so8t.llama:9 -> so8t.serving.inference"]
