"""The mirror task inside a flow, against the local Hub stand-in (real huggingface_hub client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.helpers import artifacts_of, flow_runs_tagged
from tests.flows.test_promotion import NAME, Q4, publish_variant, reg_root  # noqa: F401 (fixture)
from tests.integration.hub_standin import HubStandin

SECRET = "hf_flowSECRETtoken0123456789abcdef"
REPO_ID = "so8t/flow-mirror"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc
    from huggingface_hub.utils import disable_progress_bars

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hc, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    disable_progress_bars()
    with HubStandin(lfs_threshold=1 << 20) as h:
        yield h


def test_rollback_flow_mirrors_production_to_the_hub_through_a_brief_outage(pipeline_scenario, reg_root, hub):  # noqa: F811
    import uuid

    from prefect import tags

    from release.params import MirrorSettings, ModelRef, RollbackParams
    from flows.rollback import rollback
    from registry import Registry

    reg = Registry(reg_root)
    v3 = publish_variant(reg_root, Q4)
    reg.promote(NAME, v3)
    failed: list[str] = []

    def outage(method: str, path: str) -> bool:  # the first two Hub calls fail with HTTP 500
        if len(failed) < 2:
            failed.append(f"{method} {path}")
            return True
        return False

    hub.fail_when = outage
    tag = f"t-{uuid.uuid4().hex[:8]}"
    with tags(tag):
        entry = rollback(RollbackParams(model=ModelRef(name=NAME, registry_root=str(reg_root)), reason="test",
                                        mirror=MirrorSettings(repo_id=REPO_ID, endpoint=hub.url)))
    assert (entry.from_version, entry.to_version) == (v3, "v2")
    assert len(failed) == 2  # the outage happened and the mirror rode it out

    repo = hub.repos[REPO_ID]
    assert {"v1", "v2", v3} <= set(dict(repo.tags))  # every version tagged once
    served = reg.get(NAME, "production")
    main_tree = repo.resolve("main").tree
    for f in served.manifest.files:  # main holds production (v2) after the rollback
        assert f.path in main_tree, f.path
    gguf = next(f.path for f in served.manifest.files if f.path.endswith("_Q8_0.gguf"))
    assert hub.file_bytes(REPO_ID, "main", gguf) == served.path(gguf).read_bytes()

    link = artifacts_of([r.id for r in flow_runs_tagged(tag)], "hub-mirror")[0]
    assert REPO_ID in str(link.data)
    for art in artifacts_of([r.id for r in flow_runs_tagged(tag)], "hub-mirror"):
        assert SECRET not in str(art.data) and SECRET not in (art.description or "")
    assert any(SECRET in h for h in hub.auth_headers)  # the token went to the Hub, in the Authorization header only
    assert not any(SECRET in Path(p).read_text(errors="ignore") for p in Path(reg_root).rglob("*.json"))


def test_prefect_stages_pull_a_missing_version_as_one_task_and_never_retry_a_bad_digest(prefect_api, hub, tmp_path):
    """PrefectStages.ensure_local: nothing to do (no task run) when the version is here; a pull-from-hub task run
    when it is not; a tampered file fails that task at once (a retry cannot fix a bad digest) with nothing visible."""
    import uuid

    from prefect import flow, tags

    from registry import Registry
    from registry.hub import HubMirror, MirrorConfig
    from release.params import MirrorSettings
    from tasks.stages import PrefectStages
    from tests.flows.helpers import task_runs_tagged

    a = Registry(tmp_path / "a")
    for payload in (b"one" * 2000, b"two" * 2000):
        a.publish("pulled", {"model.gguf": payload, "Modelfile": b"FROM ./model.gguf\n"})
    cfg = MirrorConfig(repo_id=REPO_ID, endpoint=hub.url, backoff_s=0)
    assert HubMirror(a, cfg).sync("pulled").ok
    settings = MirrorSettings(repo_id=REPO_ID, endpoint=hub.url)
    b = tmp_path / "b"

    @flow(name="pull-check")
    def check(ref: str) -> str:
        return PrefectStages().ensure_local(str(b), "pulled", ref, settings)

    tag = f"t-{uuid.uuid4().hex[:8]}"
    with tags(tag):
        assert check("v1") == "v1"
        assert check("v1") == "v1"  # here now: no task run
    runs = task_runs_tagged(tag)
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["pull-from-hub"] and runs[0].state_type.value == "COMPLETED"
    assert Registry(b).manifest("pulled", "v1") == a.manifest("pulled", "v1")

    gguf = a.manifest("pulled", "v2").file("model.gguf").sha256
    hub.lfs[gguf] = b"x" * len(hub.lfs[gguf])
    tag2 = f"t-{uuid.uuid4().hex[:8]}"
    with tags(tag2), pytest.raises(Exception, match="model.gguf refused: expected sha256"):
        check("v2")
    runs = task_runs_tagged(tag2)
    assert len(runs) == 1 and runs[0].run_count == 1 and runs[0].state_type.value == "FAILED"  # not retried
    assert [v.version for v in Registry(b).list_versions("pulled")] == ["v1"]
