"""`so8t registry pull` / HubMirror.pull: versions reach other hosts through the Hub mirror.

Against the local Hub stand-in with the real huggingface_hub client: registry A syncs, an empty registry B
pulls; every file is verified against the version manifest, nothing partial is ever visible, an outage is
resumed by a rerun that downloads only what is missing, and the release recipes pull what they lack.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from registry import IntegrityError, NotFoundError, Registry, StateError
from registry.cli import main as cli_main
from registry.hub import HubMirror, MirrorConfig

from .hub_standin import Entry, HubStandin
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
    assert "\n" not in err and "model.gguf" in err and f"so8t registry pull {NAME}@v2" in err
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
