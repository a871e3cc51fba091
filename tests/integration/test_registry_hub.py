"""The Hub mirror against a local stand-in speaking the Hub API, with the real huggingface_hub client.

Plus one live test against the real Hub, run only when HF_TOKEN and SO8T_HF_TEST_REPO are set.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from registry import Registry
from registry.cli import main as cli_main
from registry.hub import HubMirror, MirrorConfig

from .hub_standin import HubStandin

SECRET = "hf_standinSECRETtoken0123456789abcdef"
REPO_ID = "so8t/mirror-test"
NAME = "so8t-mini"
LIVE = bool(os.environ.get("HF_TOKEN") and os.environ.get("SO8T_HF_TEST_REPO"))


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """Environment for talking to the stand-in, also if huggingface_hub was imported earlier."""
    import huggingface_hub.constants as hc
    from huggingface_hub.utils import disable_progress_bars

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hc, "HF_HUB_DISABLE_XET", True)  # read at import time by the client
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    disable_progress_bars()
    with HubStandin(lfs_threshold=1 << 20) as hub:  # *.gguf always LFS
        yield hub


def _publish(reg: Registry, tag: str, gguf_size: int = 4000) -> str:
    m = reg.publish(NAME, {
        "model.gguf": (tag.encode() * gguf_size)[:gguf_size],
        "Modelfile": b"FROM ./model.gguf\nPARAMETER temperature 0.2\n",
        "calibration.json": json.dumps({"version": tag, "ece": 0.02}).encode(),
    }, metrics={"ece": 0.02, "accuracy": 0.91}, parameters={"method": "SO8T"},
        lineage={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    return m.version


def _mirror(reg: Registry, hub: HubStandin, **kw) -> HubMirror:  # noqa: ANN003
    cfg = MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, backoff_s=0.01, backoff_max_s=0.05, **kw)
    return HubMirror(reg, cfg, sleep=lambda s: None)


def _main_files(hub: HubStandin) -> dict[str, bytes]:
    repo = hub.repos[REPO_ID]
    return {p: hub.file_bytes(REPO_ID, "main", p) for p in repo.resolve("main").tree}


def test_versions_are_tagged_and_main_follows_production(hub_env: HubStandin, tmp_path: Path) -> None:
    hub = hub_env
    reg = Registry(tmp_path / "store")
    v1, v2 = _publish(reg, "a"), _publish(reg, "b")
    mirror = _mirror(reg, hub)
    r = mirror.sync(NAME)
    assert r.ok and r.uploaded == ("v1", "v2") and r.main_commits == ()
    repo = hub.repos[REPO_ID]
    tags = dict(repo.tags)
    assert set(tags) == {"v1", "v2"}
    for v in (v1, v2):  # each tag holds exactly that version
        tree = repo.resolve(v).tree
        assert set(tree) == {".gitattributes", "model.gguf", "Modelfile", "calibration.json",
                             "README.md", "so8t-registry.json"}
        assert hub.file_bytes(REPO_ID, v, "model.gguf") == reg.get(NAME, v).path("model.gguf").read_bytes()

    reg.promote(NAME, v1, evidence={"ece": 0.02}, reason="gate passed")
    r = mirror.sync(NAME)
    assert r.ok and len(r.main_commits) == 1
    main = _main_files(hub)
    assert main["model.gguf"] == reg.get(NAME, v1).path("model.gguf").read_bytes()
    card = main["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["so8t"]["method"] == "SO8T" and meta["so8t"]["metrics"]["accuracy"] == 0.91
    assert meta["so8t"]["version"] == "v1"

    reg.promote(NAME, v2, reason="better")
    reg.rollback(NAME, reason="regression in prod")
    r = mirror.sync(NAME)
    assert r.ok and len(r.main_commits) == 2  # one commit per alias change
    assert _main_files(hub)["model.gguf"] == reg.get(NAME, v1).path("model.gguf").read_bytes()
    reg.rollback(NAME, to=v2)
    mirror.sync(NAME)
    main = _main_files(hub)
    assert main["model.gguf"] == reg.get(NAME, v2).path("model.gguf").read_bytes()
    assert json.loads(main["so8t-registry.json"])["aliases"] == {"production": "v2"}
    msgs = [c.message for c in repo.log("main")]
    assert sum("production" in m for m in msgs) == 4
    assert dict(repo.tags) == tags  # tags never moved
    assert mirror.sync(NAME).main_commits == ()  # nothing pending: no commit

    # a plain download through the client gets the production GGUF
    from huggingface_hub import HfApi

    path = HfApi(endpoint=hub.url).hf_hub_download(REPO_ID, "model.gguf", cache_dir=str(tmp_path / "dl"))
    assert Path(path).read_bytes() == reg.get(NAME).path("model.gguf").read_bytes()


def test_outage_then_sync_uploads_only_what_is_missing(hub_env: HubStandin, tmp_path: Path) -> None:
    hub = hub_env
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    mirror = _mirror(reg, hub, max_attempts=3)
    assert mirror.sync(NAME).ok
    assert len(hub.lfs_puts) == 1
    _publish(reg, "b", 5000)
    _publish(reg, "c", 6000)
    reg.promote(NAME, "v2")
    before_store = sorted(p.relative_to(reg.root).as_posix() for p in reg.root.rglob("*")
                          if "mirror" not in p.parts)

    hub.fail_when = lambda method, path: "/commit/" in path or "/tag/" in path  # outage
    r = mirror.sync(NAME)
    assert r.error and "HTTP 500" in r.error and not r.ok
    assert set(r.pending_versions) == {"v2", "v3"} and r.pending_changes == 1
    assert mirror.load_state(NAME).last_error
    after_store = sorted(p.relative_to(reg.root).as_posix() for p in reg.root.rglob("*")
                         if "mirror" not in p.parts)
    assert after_store == before_store and reg.verify().ok  # local store untouched
    assert cli_main(["--root", str(reg.root), "mirror", NAME, "--sync", "--repo", REPO_ID,
                     "--endpoint", hub.url, "--attempts", "2", "--backoff", "0"]) == 2
    puts_during_outage = list(hub.lfs_puts)

    hub.fail_when = None  # recovery
    assert cli_main(["--root", str(reg.root), "mirror", NAME, "--sync", "--repo", REPO_ID,
                     "--endpoint", hub.url, "--backoff", "0"]) == 0
    new_puts = hub.lfs_puts[len(puts_during_outage):]
    expected_missing = {reg.manifest(NAME, v).file("model.gguf").sha256 for v in ("v2", "v3")} - set(puts_during_outage)
    assert len(puts_during_outage) == 2  # v2's GGUF got through before its commit failed
    assert set(new_puts) == expected_missing and len(new_puts) == len(expected_missing) == 1
    assert len(hub.lfs_puts) == len(set(hub.lfs_puts)) == 3  # no object was ever sent twice
    assert set(hub.repos[REPO_ID].tags) == {"v1", "v2", "v3"}
    assert _main_files(hub)["model.gguf"] == reg.get(NAME, "v2").path("model.gguf").read_bytes()
    assert mirror.pending(NAME) == ([], 0)


def test_transient_errors_are_retried_with_backoff(hub_env: HubStandin, tmp_path: Path) -> None:
    hub = hub_env
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    reg.promote(NAME, "v1")
    failures = {"n": 0}

    def flaky(method: str, path: str) -> bool:
        if ("/commit/" in path or "/refs" in path or "/tag/" in path) and failures["n"] < 4:
            failures["n"] += 1
            return True
        return False

    hub.fail_when = flaky
    delays: list[float] = []
    mirror = HubMirror(reg, MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, backoff_s=0.5, backoff_max_s=2),
                       sleep=delays.append)
    r = mirror.sync(NAME)
    assert r.ok and failures["n"] == 4
    assert delays[:3] == [0.5, 1.0, 2.0]  # exponential, capped


def test_main_update_is_compare_and_swap(hub_env: HubStandin, tmp_path: Path) -> None:
    hub = hub_env
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    mirror = _mirror(reg, hub)
    assert mirror.sync(NAME).ok
    reg.promote(NAME, "v1")
    repo = hub.repos[REPO_ID]
    raced = {"done": False}

    def concurrent_writer(method: str, path: str) -> bool:
        # Another client commits to main just before our commit arrives.
        if method == "POST" and "/commit/main" in path and not raced["done"]:
            raced["done"] = True
            with hub.lock:
                head = repo.branches["main"]
                tree = dict(repo.commits[head].tree)
                from .hub_standin import Entry

                tree["NOTES.md"] = Entry(5, content=b"hello")
                repo.branches["main"] = hub.new_commit(repo, head, tree, "foreign commit")
        return False

    hub.fail_when = concurrent_writer
    r = mirror.sync(NAME)
    assert r.ok and raced["done"]
    assert any(r[2] == 412 for r in hub.requests), "the stale parent commit was refused"
    messages = [c.message for c in repo.log("main")]
    assert "foreign commit" in messages and "production" in messages[0]  # nothing overwritten blindly
    assert _main_files(hub)["model.gguf"] == reg.get(NAME).path("model.gguf").read_bytes()


def test_token_never_leaks(hub_env: HubStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           capsys: pytest.CaptureFixture[str]) -> None:
    hub = hub_env
    caplog.set_level(logging.DEBUG)
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    reg.promote(NAME, "v1", evidence={"ece": 0.01})
    mirror = HubMirror(reg, MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, max_attempts=2, backoff_s=0),
                       token=SECRET)
    hub.fail_when = lambda m, p: "/commit/" in p
    failed = mirror.sync(NAME)
    from registry.errors import MirrorError

    with pytest.raises(MirrorError) as exc:
        mirror.sync(NAME, raise_on_error=True)
    assert cli_main(["--root", str(reg.root), "-v", "mirror", NAME, "--sync", "--repo", REPO_ID,
                     "--endpoint", hub.url, "--attempts", "1"]) == 2
    hub.fail_when = None
    ok = mirror.sync(NAME)
    assert ok.ok
    reg.export(NAME, "production", tmp_path / "export", with_manifest=True)
    out = capsys.readouterr()
    assert any(SECRET in h for h in hub.auth_headers), "the token was used (the test is meaningful)"
    haystacks = [caplog.text, out.out, out.err, repr(failed), repr(ok), str(exc.value), repr(exc.value),
                 repr(mirror), "".join(str(a) for a in exc.value.args)]
    for text in haystacks:
        assert SECRET not in text
    for p in [*reg.root.rglob("*"), *(tmp_path / "export").rglob("*")]:
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
    for p, data in _main_files(hub).items():
        assert SECRET.encode() not in data, p


def test_endpoints_with_credentials_are_refused_without_echoing_them(tmp_path: Path, capsys) -> None:
    from pydantic import ValidationError

    from registry.errors import MirrorError

    bad = f"http://user:{SECRET}@127.0.0.1:9/"
    with pytest.raises(MirrorError, match="must not carry credentials") as exc:
        MirrorConfig.from_env(REPO_ID, bad)
    assert SECRET not in str(exc.value)
    with pytest.raises(ValidationError) as verr:
        MirrorConfig(repo_id=REPO_ID, endpoint=bad)
    assert SECRET not in str(verr.value)
    for endpoint in ("ftp://hub.example", "not a url", "https://"):
        with pytest.raises(MirrorError, match="endpoint"):
            MirrorConfig.from_env(REPO_ID, endpoint)
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    assert cli_main(["--root", str(reg.root), "mirror", NAME, "--sync", "--repo", REPO_ID, "--endpoint", bad]) == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "credentials" in out.err
    assert MirrorConfig.from_env(REPO_ID, "https://hub.example:8443/base").endpoint == "https://hub.example:8443/base"


@pytest.mark.skipif(not LIVE, reason="set HF_TOKEN and SO8T_HF_TEST_REPO to run against the real Hub")
def test_live_hub_round_trip(tmp_path: Path) -> None:
    """Publishes two tiny versions to a real (preferably private, throwaway) Hub repo."""
    import time

    from huggingface_hub import HfApi

    repo_id = os.environ["SO8T_HF_TEST_REPO"]
    reg = Registry(tmp_path / "store")
    name = f"live-{int(time.time())}"
    for tag in ("a", "b"):
        reg.publish(name, {"model.gguf": os.urandom(2048), "Modelfile": f"FROM ./model.gguf # {tag}\n".encode()})
    reg.promote(name, "v1")
    mirror = HubMirror(reg, MirrorConfig(repo_id=repo_id, private=True))
    api = HfApi()
    before = {t.name for t in api.list_repo_refs(repo_id).tags} if api.repo_exists(repo_id) else set()
    if before & {"v1", "v2"}:
        pytest.skip(f"{repo_id} already has v1/v2 tags from an earlier run: use a fresh repo")
    r = mirror.sync(name)
    assert r.ok, r.error
    refs = api.list_repo_refs(repo_id)
    assert {"v1", "v2"} <= {t.name for t in refs.tags}
    path = api.hf_hub_download(repo_id, "model.gguf", cache_dir=str(tmp_path / "dl"))
    assert Path(path).read_bytes() == reg.get(name).path("model.gguf").read_bytes()


def test_a_version_that_cannot_be_pushed_is_skipped_and_said(hub_env: HubStandin, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A version holding a path the mirror writes itself (published before publish refused it) never
    blocks the versions after it: it is skipped, recorded and reported at every sync."""
    hub = hub_env
    reg = Registry(tmp_path / "store")
    _publish(reg, "a")
    bad = reg.publish(NAME, {"model.gguf": b"b" * 4000, "Modelfile": b"FROM ./model.gguf\n"}).version
    # what an older registry let through: rewrite the manifest's file name to a reserved path
    mpath = reg.root / "models" / NAME / "versions" / f"{bad}.json"
    mpath.write_text(mpath.read_text().replace('"Modelfile"', '"so8t-registry.json"'))
    _publish(reg, "c", 5000)
    reg.promote(NAME, bad)  # even production may be the unpushable one
    mirror = _mirror(reg, hub)
    with caplog.at_level(logging.WARNING, logger="registry.hub"):
        r = mirror.sync(NAME)
    assert r.error is None and r.ok, r
    assert r.uploaded == ("v1", "v3") and r.skipped_versions == (bad,)
    assert set(hub.repos[REPO_ID].tags) == {"v1", "v3"}
    assert any(f"mirror skips {NAME} {bad}" in m and "so8t-registry.json" in m for m in caplog.messages)
    main = _main_files(hub)
    assert "model.gguf" not in main and json.loads(main["so8t-registry.json"])["aliases"]["production"] == bad
    assert mirror.pending(NAME) == ([], 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="registry.hub"):
        again = mirror.sync(NAME)
    assert again.uploaded == () and again.skipped_versions == (bad,)
    assert any(f"mirror skips {NAME} {bad}" in m for m in caplog.messages)  # said at every sync
