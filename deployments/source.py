"""Where the workers get the code: a git repository and the commit that was deployed.

``prefect deploy`` runs :func:`git_source` as a build step (``prefect.yaml``); its output fills in the
``git_clone`` pull step, so every flow run clones the repository at exactly the deployed commit into
the worker's scratch directory and runs that code (a worker needs no checkout of its own):

- repository: ``$SO8T_GIT_REPOSITORY``, else the checkout's ``origin`` remote, else the checkout itself
  (``file://`` URL: workers on the same machine);
- commit: ``$SO8T_GIT_COMMIT``, else ``HEAD``. Uncommitted changes are not deployed (a warning says so);
  :func:`snapshot_worktree` commits the working tree, untracked files included, into a separate bare
  repository, for deploying work in progress (``python -m deployments.stack up --snapshot``) and for the
  tests, without touching the checkout's own repository.

Nothing here imports Prefect: the build step is a plain function that returns a dict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV_REPOSITORY = "SO8T_GIT_REPOSITORY"
ENV_COMMIT = "SO8T_GIT_COMMIT"


class SourceError(RuntimeError):
    """The code to deploy cannot be located."""


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {cwd}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def git_source(directory: str = ".") -> dict[str, str]:
    """The repository URL and full commit id the workers clone (a ``prefect.yaml`` build step).

    Returns ``{"repository": URL, "commit": SHA}``; raises :class:`SourceError` naming what is missing.
    """
    top = Path(_git(["rev-parse", "--show-toplevel"], Path(directory).resolve()))
    repository = os.environ.get(ENV_REPOSITORY) or ""
    if not repository:
        try:
            repository = _git(["config", "--get", "remote.origin.url"], top)
        except SourceError:
            repository = top.as_uri()
    wanted = os.environ.get(ENV_COMMIT) or ""
    if wanted:
        if os.environ.get(ENV_REPOSITORY):
            commit = wanted  # a commit of another repository (a snapshot): checked by the clone
        else:
            commit = _git(["rev-parse", "--verify", f"{wanted}^{{commit}}"], top)
    else:
        commit = _git(["rev-parse", "HEAD"], top)
        if _git(["status", "--porcelain", "--untracked-files=no"], top):
            print(f"warning: {top} has uncommitted changes; the workers run commit {commit[:12]} without them "
                  f"(commit them, or deploy a snapshot: python -m deployments.stack up --snapshot)", file=sys.stderr)
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        raise SourceError(f"${ENV_COMMIT}={commit!r} is not a full 40-hex-digit commit id")
    return {"repository": repository, "commit": commit}


def snapshot_worktree(bare_repo: Path, worktree: Path = REPO, message: str = "so8t deployment snapshot") -> str:
    """Commit ``worktree`` as it is (tracked and untracked files, ``.gitignore`` respected) as the ``main``
    branch of the bare repository ``bare_repo`` (created when missing; the checkout's own repository,
    index and refs are untouched). Returns the commit id; clone it with ``bare_repo.as_uri()``."""
    bare_repo = Path(bare_repo).resolve()
    if not (bare_repo / "HEAD").exists():
        bare_repo.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", "--initial-branch=main", str(bare_repo)], bare_repo)
    env = {"GIT_DIR": str(bare_repo), "GIT_WORK_TREE": str(Path(worktree).resolve()),
           "GIT_INDEX_FILE": str(bare_repo / "snapshot.index"),
           "GIT_AUTHOR_NAME": "so8t", "GIT_AUTHOR_EMAIL": "so8t@localhost",
           "GIT_COMMITTER_NAME": "so8t", "GIT_COMMITTER_EMAIL": "so8t@localhost"}
    _git(["add", "--all", "."], Path(worktree), env)
    tree = _git(["write-tree"], Path(worktree), env)
    parent = []
    try:
        parent = ["-p", _git(["rev-parse", "--verify", "--quiet", "refs/heads/main"], Path(worktree), env)]
    except SourceError:
        pass  # the first snapshot
    commit = _git(["commit-tree", tree, *parent, "-m", message], Path(worktree), env)
    _git(["update-ref", "refs/heads/main", commit], Path(worktree), env)
    return commit
