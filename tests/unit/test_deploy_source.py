"""deployments/source.py (what the workers clone) and the process helpers of deployments/stack.py."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.source import SourceError, git_source, snapshot_worktree
from deployments.stack import HEARTBEAT_S, StackError, alive, kill_tree, zombie_automation

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("SO8T_GIT_REPOSITORY", raising=False)
    monkeypatch.delenv("SO8T_GIT_COMMIT", raising=False)
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "--initial-branch=main")
    (r / ".gitignore").write_text("outputs/\n")
    (r / "a.py").write_text("A = 1\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "one")
    return r


def test_source_defaults_to_this_checkout_at_head(repo, capsys):
    src = git_source(str(repo))
    assert src == {"repository": repo.resolve().as_uri(), "commit": git(repo, "rev-parse", "HEAD")}
    assert "uncommitted" not in capsys.readouterr().err


def test_source_prefers_origin_and_warns_about_uncommitted_changes(repo, capsys):
    git(repo, "remote", "add", "origin", "https://example.invalid/so8t.git")
    (repo / "a.py").write_text("A = 2\n")
    src = git_source(str(repo))
    assert src["repository"] == "https://example.invalid/so8t.git"
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and src["commit"][:12] in err


def test_source_commit_from_the_environment(repo, monkeypatch):
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("SO8T_GIT_COMMIT", head[:8])
    assert git_source(str(repo))["commit"] == head  # abbreviated ids are resolved in this checkout
    monkeypatch.setenv("SO8T_GIT_COMMIT", "deadbeef")
    with pytest.raises(SourceError, match="rev-parse"):
        git_source(str(repo))
    monkeypatch.setenv("SO8T_GIT_REPOSITORY", "file:///elsewhere.git")  # another repository: must be a full id
    with pytest.raises(SourceError, match="full 40-hex-digit"):
        git_source(str(repo))


def test_snapshot_holds_the_working_tree_and_leaves_the_checkout_alone(repo, tmp_path):
    before = (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), git(repo, "for-each-ref"))
    (repo / "a.py").write_text("A = 2\n")           # modified, uncommitted
    (repo / "new.py").write_text("B = 3\n")         # untracked
    (repo / "outputs").mkdir()
    (repo / "outputs" / "big.bin").write_bytes(b"x")  # ignored
    bare = tmp_path / "snap.git"
    first = snapshot_worktree(bare, repo)
    assert git(repo, "rev-parse", "HEAD") == before[0] and git(repo, "for-each-ref") == before[2]
    assert git(repo, "diff", "--cached", "--name-only") == ""  # the checkout's index: nothing staged
    assert git(repo, "status", "--porcelain").splitlines() == ["M a.py", "?? new.py"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", bare.as_uri(), str(clone)], check=True)
    git(clone, "checkout", "-q", first)
    assert (clone / "a.py").read_text() == "A = 2\n" and (clone / "new.py").read_text() == "B = 3\n"
    assert not (clone / "outputs").exists()
    (repo / "new.py").write_text("B = 4\n")
    second = snapshot_worktree(bare, repo)
    assert second != first and git(clone, "-C", str(bare), "rev-parse", f"{second}^") == first


def test_zombie_automation_is_valid_for_prefect_and_its_window_exceeds_the_heartbeat():
    from prefect.events.schemas.automations import AutomationCore

    spec = AutomationCore.model_validate(zombie_automation(75))
    assert spec.trigger.within.total_seconds() == 75 and spec.trigger.posture.value == "Proactive"
    assert spec.trigger.expect >= {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"}
    assert spec.actions[0].type == "change-flow-run-state" and spec.actions[0].state.value == "CRASHED"
    with pytest.raises(StackError, match="must exceed"):
        zombie_automation(HEARTBEAT_S)


def test_kill_tree_reaches_children_in_their_own_sessions(tmp_path):
    """Prefect starts each flow run in a new session: killing only the worker's group leaves it running."""
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert os.getpgid(child) != os.getpgid(parent.pid)
        groups = kill_tree(parent.pid, signal.SIGKILL)
        assert set(groups) == {parent.pid, child}
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(child):
            assert time.monotonic() < deadline, "the child in its own session survived"
            time.sleep(0.05)
    finally:
        for p in (parent.pid,):
            try:
                os.killpg(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_stack_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from deployments.stack import main

    assert main(["status", "--dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no stack here" in err and str(tmp_path / "none") in err
    with pytest.raises(SystemExit) as e:
        main(["up", "--dir", str(tmp_path), "--workers", "gpu,tpu"])
    assert e.value.code == 2 and "--workers: choose from gpu, cpu" in capsys.readouterr().err
    assert not (tmp_path / "stack.json").exists()  # nothing started, nothing written


def test_stack_help_explains_every_flag():
    from deployments.stack import build_parser

    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"up", "status", "down"}
    for name, parser in sub.choices.items():
        flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert flags, name
        for a in flags:
            assert a.help and len(a.help) > 10, (name, a.option_strings)
    assert {"--snapshot", "--zombie-after", "--workers", "--pg-dir"} <= {
        o for a in sub.choices["up"]._actions for o in a.option_strings}


def test_work_dir_defaults_to_the_workers_own(monkeypatch):
    from release.params import CalibrateAndPromoteParams, RetrainParams

    monkeypatch.delenv("SO8T_WORK_DIR", raising=False)
    assert RetrainParams().work_dir == "outputs/so8t"
    monkeypatch.setenv("SO8T_WORK_DIR", "/srv/worker-a/work")
    assert RetrainParams().work_dir == CalibrateAndPromoteParams().work_dir == "/srv/worker-a/work"
    assert RetrainParams(work_dir="/elsewhere").work_dir == "/elsewhere"  # an explicit parameter wins
    assert "work_dir" not in RetrainParams.model_json_schema().get("required", [])  # the UI form may leave it empty
