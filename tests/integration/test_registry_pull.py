"""`so8t registry pull` / HubMirror.pull: versions reach other hosts through the Hub mirror.

Against the local Hub stand-in with the real huggingface_hub client: registry A syncs, an empty registry B
pulls; every file is verified against the version manifest, nothing partial is ever visible, an outage is
resumed by a rerun that downloads only what is missing, and the release recipes pull what they lack.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry import IntegrityError, NotFoundError, Registry, StateError
from registry.cli import main as cli_main
from registry.hub import HubMirror, MirrorConfig

from .hub_standin import Entry, HubStandin
from .test_release import NO_PREFECT, TINY_INPUTS
from .test_registry_hub import NAME, REPO_ID, _mirror, _publish, hub_env  # noqa: F401 (fixture)


def _downloads(hub: HubStandin) -> list[str]:
    """Paths of the version files fetched with GET (the registry file is metadata, not counted)."""
    return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, st in hub.requests
            if m == "GET" and "/resolve/" in p and st == 200 and not p.endswith("so8t-registry.json")]


def _store_listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.parts[len(root.parts)] in ("models",))


@pytest.fixture
def synced(hub_env: HubStandin, tmp_path: Path) -> tuple[HubStandin, Registry]:
    """Registry A with v1 (production) and v2, mirrored to the stand-in."""
    a = Registry(tmp_path / "a")
    _publish(a, "a")
    _publish(a, "b", 5000)
    a.promote(NAME, "v1", reason="gate passed")
    assert _mirror(a, hub_env).sync(NAME).ok
    return hub_env, a


def _cli(root: Path, hub: HubStandin, target: str, *extra: str) -> int:
    return cli_main(["--root", str(root), "pull", target, "--repo_id", REPO_ID, "--endpoint", hub.url,
                     "--backoff", "0", "--no-progress", *extra])


def test_round_trip_a_pulled_version_is_the_built_one(synced, tmp_path: Path, capsys) -> None:
    hub, a = synced
    b = Registry(tmp_path / "b")
    hub.requests.clear()
    r = _mirror(b, hub).pull(NAME, "v2")
    assert (r.version, r.ref, r.already_local) == ("v2", "v2", False)
    assert sorted(r.fetched) == sorted(f.path for f in a.manifest(NAME, "v2").files) and r.skipped == ()
    assert r.fetched_bytes == a.manifest(NAME, "v2").total_size
    assert r.commit == hub.repos[REPO_ID].tags["v2"]
    assert sorted(_downloads(hub)) == sorted(r.fetched)  # each file downloaded once
    assert b.manifest(NAME, "v2") == a.manifest(NAME, "v2")  # the very manifest, number, dates and lineage
    got, want = b.get(NAME, "v2"), a.get(NAME, "v2")  # get() re-hashes every blob
    for f in want.manifest.files:
        data = got.path(f.path).read_bytes()
        assert data == want.path(f.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256  # independent of the registry's own hashing
    assert b.verify().ok
    assert b.state(NAME).aliases == {}  # only the version is pulled; local aliases are local decisions
    # `so8t registry list/show` agree on both sides
    for args in (["list", NAME], ["show", NAME, "v2"]):
        outs = []
        for reg in (a, b):
            assert cli_main(["--root", str(reg.root), "--json", *args]) == 0
            outs.append(json.loads(capsys.readouterr().out))
        if args[0] == "list":  # A has v1 too, in production
            outs[0] = [v for v in outs[0] if v["version"] == "v2"]
        assert outs[0] == outs[1], args

    # a second pull is a no-op: no file downloaded
    hub.requests.clear()
    again = _mirror(b, hub).pull(NAME, "v2")
    assert again.already_local and again.fetched == () and _downloads(hub) == []
    # a sync from B does not upload what it pulled
    assert _mirror(b, hub).pending(NAME)[0] == []

    # v1 shares no gguf blob with v2 but the same Modelfile: that one is not downloaded again
    hub.requests.clear()
    r1 = _mirror(b, hub).pull(NAME, "v1")
    assert "Modelfile" in r1.skipped and "model.gguf" in r1.fetched
    assert sorted(_downloads(hub)) == sorted(r1.fetched)


def test_pull_by_alias_and_latest_resolved_on_the_hub(synced, tmp_path: Path, capsys) -> None:
    hub, a = synced
    b = Registry(tmp_path / "b")
    assert _mirror(b, hub).pull(NAME, "production").version == "v1"
    assert _mirror(b, hub).pull(NAME, "latest").version == "v2"
    a.promote(NAME, "v2", alias="canary")
    _mirror(a, hub).sync(NAME)
    c = Registry(tmp_path / "c")
    assert _cli(c.root, hub, f"{NAME}@canary") == 0
    assert "pulled so8t-mini v2" in capsys.readouterr().out
    assert _cli(c.root, hub, NAME) == 0  # default: the Hub's production
    assert [v.version for v in c.list_versions(NAME)] == ["v1", "v2"]
    assert c.state(NAME).aliases == {}

    with pytest.raises(NotFoundError, match="alias 'staging' .* not set on so8t/mirror-test .*production -> v1"):
        _mirror(b, hub).pull(NAME, "staging")
    with pytest.raises(NotFoundError, match=r"version v9 .* not on so8t/mirror-test \(versions there: v1, v2\)"):
        _mirror(b, hub).pull(NAME, "v9")


def test_tampered_or_truncated_remote_files_are_refused_and_nothing_is_visible(synced, tmp_path: Path,
                                                                               capsys) -> None:
    hub, a = synced
    m2 = a.manifest(NAME, "v2")
    gguf = m2.file("model.gguf")
    good = hub.lfs[gguf.sha256]
    b = Registry(tmp_path / "b")

    hub.lfs[gguf.sha256] = good[:-1] + bytes([good[-1] ^ 1])  # one bit flipped on the Hub's storage
    with pytest.raises(IntegrityError) as e:
        _mirror(b, hub).pull(NAME, "v2")
    msg = str(e.value)
    assert "\n" not in msg and "model.gguf" in msg and gguf.sha256 in msg
    assert hashlib.sha256(hub.lfs[gguf.sha256]).hexdigest() in msg and "nothing published" in msg
    assert b.list_models() == [] and _store_listing(b.root) == []
    with pytest.raises(NotFoundError):
        b.manifest(NAME, "v2")

    hub.lfs[gguf.sha256] = good[:1000]  # truncated
    assert _cli(b.root, hub, f"{NAME}@v2") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("so8t registry: error:") and "model.gguf" in err
    assert f"({gguf.size} bytes)" in err and "(1000 bytes)" in err
    assert b.list_models() == []
    assert cli_main(["--root", str(b.root), "list"]) == 0 and "no models" in capsys.readouterr().out

    # a small file stored inline in git (not LFS), altered in the tagged tree
    hub.lfs[gguf.sha256] = good
    repo = hub.repos[REPO_ID]
    tree = repo.commits[repo.tags["v2"]].tree
    original = tree["Modelfile"]
    tree["Modelfile"] = Entry(len(b"FROM ./evil.gguf\n"), content=b"FROM ./evil.gguf\n")
    assert "Modelfile" in _mirror(b, hub).pull(NAME, "v2").skipped  # B verified it before: never fetched again
    c = Registry(tmp_path / "c")
    with pytest.raises(IntegrityError, match="Modelfile refused: expected sha256"):
        _mirror(c, hub).pull(NAME, "v2")
    assert c.list_models() == []
    tree["Modelfile"] = original  # the Hub repaired: the pull goes through
    assert _mirror(c, hub).pull(NAME, "v2").version == "v2" and c.verify().ok and b.verify().ok


def test_outage_mid_pull_then_a_rerun_downloads_only_what_is_missing(synced, tmp_path: Path, capsys) -> None:
    hub, a = synced
    m2 = a.manifest(NAME, "v2")
    b = Registry(tmp_path / "b")
    # files are fetched in path order (Modelfile, calibration.json, model.gguf): the last one hits the outage
    hub.fail_when = lambda method, path: "/resolve/" in path and path.endswith("/model.gguf")
    hub.requests.clear()
    assert _cli(b.root, hub, f"{NAME}@v2", "--attempts", "2") == 2
    err = capsys.readouterr().err.strip()
    # the error is one line (the retry's warning may come before it when an earlier test left a log handler on
    # stderr: the suite's order, not the command, decides that)
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("so8t registry: error:")
    assert "model.gguf" in last and f"so8t registry pull {NAME}@v2" in last
    assert all("WARNING" in line and "retrying" in line for line in err.splitlines()[:-1])
    assert b.list_models() == [] and _store_listing(b.root) == []  # nothing visible
    before = set(b.blobs.iter_blobs())
    assert before == {m2.file("Modelfile").sha256, m2.file("calibration.json").sha256}  # verified, kept

    hub.fail_when = None
    hub.requests.clear()
    r = _mirror(b, hub).pull(NAME, "v2")
    assert r.fetched == ("model.gguf",) and set(r.skipped) == {"Modelfile", "calibration.json"}
    assert r.fetched_bytes == m2.file("model.gguf").size
    assert _downloads(hub) == ["model.gguf"]  # one file's bytes on the wire, nothing else
    assert b.manifest(NAME, "v2") == m2 and b.verify().ok
    assert not any(p.name.startswith("pull-") for p in b.blobs.tmp_dir.iterdir())  # download folder cleaned


def test_a_different_local_version_of_the_same_number_is_refused(synced, tmp_path: Path, capsys) -> None:
    hub, a = synced
    b = Registry(tmp_path / "b")
    b.publish(NAME, {"model.gguf": b"built here", "Modelfile": b"FROM ./model.gguf\n"})
    before = b.manifest(NAME, "v1")
    with pytest.raises(StateError, match=r"v1 already exists .* different content \(files \['Modelfile', 'calibration.json', 'model.gguf'\] differ\)"):
        _mirror(b, hub).pull(NAME, "v1")
    assert _cli(b.root, hub, f"{NAME}@production") == 2
    assert "already exists" in capsys.readouterr().err
    assert b.manifest(NAME, "v1") == before and [v.version for v in b.list_versions(NAME)] == ["v1"]
    assert _mirror(b, hub).pull(NAME, "v2").version == "v2"  # other numbers are fine


def test_cli_bad_input_is_one_line_and_exit_2(synced, tmp_path: Path, capsys, monkeypatch) -> None:
    hub, _a = synced
    root = tmp_path / "b"
    monkeypatch.delenv("SO8T_HF_REPO", raising=False)
    cases = [
        (["--root", str(root), "pull", NAME], "no Hub repository configured"),
        (["--root", str(root), "pull", f"{NAME}@", "--repo_id", REPO_ID], "nothing after '@'"),
        (["--root", str(root), "pull", f"{NAME}@Bad!", "--repo_id", REPO_ID, "--endpoint", hub.url], "alias"),
        (["--root", str(root), "pull", f"{NAME}@v7", "--repo_id", REPO_ID, "--endpoint", hub.url,
          "--no-progress"], "version v7"),
        (["--root", str(root), "pull", f"{NAME}@staging", "--repo_id", REPO_ID, "--endpoint", hub.url,
          "--no-progress"], "alias 'staging'"),
        (["--root", str(root), "pull", NAME, "--repo_id", "so8t/nothing-here", "--endpoint", hub.url,
          "--no-progress"], "no repository so8t/nothing-here"),
        (["--root", str(root), "pull", NAME, "--repo_id", REPO_ID, "--endpoint", "ftp://x"], "endpoint"),
    ]
    for argv, needle in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("so8t registry: error:") and needle in err and "\n" not in err, (argv, err)
    assert not (root / "models").exists()
    assert cli_main(["pull", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for flag in ("--repo_id", "--endpoint", "--root", "--attempts", "--backoff", "--no-progress", "@latest"):
        assert flag in shown, flag


def test_gc_keeps_nothing_of_an_abandoned_pull_and_a_live_pull_is_safe(synced, tmp_path: Path) -> None:
    """gc collects the verified blobs and the download folder an interrupted pull left (once stale)."""
    import os
    import time

    hub, _a = synced
    b = Registry(tmp_path / "b")
    hub.fail_when = lambda method, path: "/resolve/" in path and path.endswith("/model.gguf")
    with pytest.raises(Exception):
        HubMirror(b, MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, max_attempts=1), sleep=lambda s: None).pull(
            NAME, "v2")
    leftovers = [p for p in b.blobs.tmp_dir.iterdir() if p.name.startswith("pull-")]
    assert leftovers and all(p.is_dir() for p in leftovers)  # kept for a resume
    old = time.time() - 3600
    for p in leftovers:
        os.utime(p, (old, old))
    r = b.gc()
    assert len(r.removed_blobs) == 2 and not any(p.exists() for p in leftovers)
    hub.fail_when = None
    assert _mirror(b, hub).pull(NAME, "v2").version == "v2" and b.verify().ok


# ----------------------------------------------------------------------------- the release recipes pull what they lack
def test_ensure_local_pulls_only_when_the_version_is_not_here(synced, tmp_path: Path, monkeypatch) -> None:
    from release.params import MirrorSettings
    from release.versions import ensure_local

    hub, _a = synced
    monkeypatch.delenv("SO8T_HF_REPO", raising=False)
    root = str(tmp_path / "b")
    settings = MirrorSettings(repo_id=REPO_ID, endpoint=hub.url)
    with pytest.raises(NotFoundError, match="version v2 of model 'so8t-mini' does not exist"):
        ensure_local(root, NAME, "v2", MirrorSettings())  # no mirror configured: the local error, unchanged
    assert ensure_local(root, NAME, "v2", settings) == "v2"
    hub.requests.clear()
    assert ensure_local(root, NAME, "2", settings) == "v2" and hub.requests == []  # local now: no Hub call
    assert ensure_local(root, NAME, "production", settings) == "v1"  # not set here: the Hub's production
    assert Registry(root).state(NAME).aliases == {}
    with pytest.raises(NotFoundError, match="neither in the local registry nor on the Hub mirror: version v9"):
        ensure_local(root, NAME, "v9", settings)
    monkeypatch.setenv("SO8T_HF_REPO", REPO_ID)  # the environment configures the mirror too
    monkeypatch.setenv("SO8T_HF_ENDPOINT", hub.url)
    c = str(tmp_path / "c")
    assert ensure_local(c, NAME, "v1", MirrorSettings()) == "v1"


def test_hosts_sharing_a_mirror_never_give_one_number_to_two_versions(synced, tmp_path: Path, monkeypatch) -> None:
    """Host A built v1, v2 and mirrored them; host B pulls v1 and publishes its own version: it is v3, not B's local
    next number v2 (which the Hub already holds with other content), and A's next publish after B mirrored is v4."""
    from release.params import MirrorSettings
    from release.versions import publish_version

    hub, a = synced
    monkeypatch.delenv("SO8T_HF_REPO", raising=False)
    settings = MirrorSettings(repo_id=REPO_ID, endpoint=hub.url)
    b = Registry(tmp_path / "b")
    assert HubMirror(b, MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, backoff_s=0)).pull(NAME, "v1").version == "v1"
    src = tmp_path / "calibrated.gguf"
    src.write_bytes(b"calibrated on host b")
    m, published = publish_version(b, NAME, {"model.gguf": str(src)}, mirror=settings)
    assert published and m.version == "v3"
    assert publish_version(b, NAME, {"model.gguf": str(src)}, mirror=settings) == (m, False)  # idempotent, no new number
    unmirrored = publish_version(b, NAME, {"model.gguf": str(src)}, parameters={"x": 1})[0]  # no mirror: local numbering
    assert unmirrored.version == "v4"
    assert _mirror(b, hub).sync(NAME).ok
    src.write_bytes(b"next candidate on host a")
    assert publish_version(a, NAME, {"model.gguf": str(src)}, mirror=settings)[0].version == "v5"
    assert publish_version(a, NAME, {"model.gguf": str(src)}, parameters={"y": 2})[0].version == "v6"  # a's own next
    fresh = Registry(tmp_path / "fresh")  # a repository with no tags yet: numbering starts at 1
    cfg = MirrorSettings(repo_id="someone/empty-repo", endpoint=hub.url)
    assert publish_version(fresh, NAME, {"model.gguf": str(src)}, mirror=cfg)[0].version == "v1"


def test_rollback_recipe_pulls_a_target_this_host_never_had(synced, tmp_path: Path) -> None:
    from release.params import MirrorSettings, ModelRef, RollbackParams
    from release.recipes import rollback
    from release.stages import Stages

    hub, a = synced
    b = Registry(tmp_path / "b")
    settings = MirrorSettings(repo_id=REPO_ID, endpoint=hub.url)
    _mirror(b, hub).pull(NAME, "v1")
    b.promote(NAME, "v1", reason="serving what the Hub serves")
    entry = rollback(RollbackParams(model=ModelRef(name=NAME, registry_root=str(b.root)), to="v2",
                                    reason="roll to v2 built elsewhere", mirror=settings), Stages())
    assert (entry.from_version, entry.to_version) == ("v1", "v2")
    assert b.state(NAME).aliases["production"] == "v2" and b.manifest(NAME, "v2") == a.manifest(NAME, "v2")
    assert b.get(NAME, "production").path("model.gguf").read_bytes() == a.get(NAME, "v2").path("model.gguf").read_bytes()


SCRIPT = NO_PREFECT + "out, hub_url, repo_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n" + TINY_INPUTS + textwrap.dedent(
    """

    from registry import Registry
    from release.evaluation import EvaluationSettings
    from release.params import (CalibrateAndPromoteParams, CalibrationSettings, ConvertSettings, MirrorSettings, ModelRef,
                                RetrainParams, TrainSettings)
    from release.recipes import build_candidate, calibrate_gate_promote
    from release.stages import Stages
    from so8t.calibrate.promotion_gate import GateConfig

    mirror = MirrorSettings(repo_id=repo_id, endpoint=hub_url)
    builder = ModelRef(name="pull-tiny", registry_root=str(out / "builder"))
    worker = ModelRef(name="pull-tiny", registry_root=str(out / "worker"))
    settings = dict(base_model=str(model), dataset=str(train), batch_size=2, gradient_accumulation_steps=1, max_steps=2,
                    save_steps=1, max_length=64, lora_r=4, lora_alpha=8, learning_rate=1e-3)
    # host 1 builds the candidate; the recipe mirrors it to the Hub before it reports it
    cand = build_candidate(RetrainParams(model=builder, work_dir=str(out / "work-builder"), mirror=mirror,
                                         train=TrainSettings(**settings), convert=ConvertSettings(quants=("Q8_0",), fidelity=False)),
                           Stages())
    # host 2 (another registry, never saw it) calibrates and promotes it, as the candidate.published trigger asks
    promoted = calibrate_gate_promote(CalibrateAndPromoteParams(
        model=worker, version=cand.version, work_dir=str(out / "work-worker"), mirror=mirror,
        calibration=CalibrationSettings(val_data=str(val)), gate=GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0),
        evaluation=EvaluationSettings(data=None)), Stages())
    b, w = Registry(builder.registry_root), Registry(worker.registry_root)
    report = {
        "candidate": cand.version, "promoted": promoted.model_dump(mode="json"),
        "same_manifest": b.manifest("pull-tiny", cand.version) == w.manifest("pull-tiny", cand.version),
        "worker_versions": {v.version: v.state.value for v in w.list_versions("pull-tiny")},
        "worker_production": w.state("pull-tiny").aliases.get("production"),
        "lineage": list(w.manifest("pull-tiny", "production").lineage.parents),
        "worker_verify": w.verify().ok,
        "prefect_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "prefect"),
    }
    print("REPORT " + json.dumps(report))
    """
)


@pytest.mark.slow
def test_calibrate_and_promote_on_a_host_that_lacks_the_candidate_pulls_it(hub_env: HubStandin, tmp_path: Path) -> None:
    """Two registries (two hosts) and the Hub stand-in: build_candidate on one mirrors its candidate; the
    calibrate-and-promote recipe (plain Stages, no Prefect) on the other is given that version number (as the
    so8t.candidate.published trigger does), pulls it, calibrates, gates, promotes and mirrors its production."""
    hub = hub_env
    env = {**os.environ, "SO8T_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_XET": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("SO8T_HF_REPO", None)
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), hub.url, REPO_ID], cwd=repo, capture_output=True,
                       text=True, timeout=1500, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("REPORT "))[len("REPORT "):])
    cand = report["candidate"]
    assert report["same_manifest"] and report["worker_verify"] and report["prefect_loaded"] == []
    promoted = report["promoted"]
    assert promoted["action"] == "promoted" and promoted["candidate"] == cand
    assert report["worker_production"] == promoted["version"] != cand and report["lineage"] == [cand]
    assert report["worker_versions"] == {cand: "candidate", promoted["version"]: "production"}
    tags = hub.repos[REPO_ID].tags
    assert cand in tags and promoted["version"] in tags  # the builder mirrored the candidate, the worker its release
    pulled = [p for m, p, st in hub.requests if m == "GET" and "/resolve/" in p and st == 200
              and not p.endswith("so8t-registry.json")]
    assert pulled and all(tags[cand] in p for p in pulled)  # the worker downloaded the candidate's tag, nothing else
