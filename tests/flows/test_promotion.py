"""Gated promotion on a copy of the pipeline scenario's registry (v1 candidate, v2 calibrated production).

Variants of a model are published as new candidates that serve another quantization of the same
tiny model (Q4_0 instead of Q8_0): different files, different real calibration results.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.flows.conftest import copy_registry
from tests.flows.helpers import artifacts_of, events_named, flow_runs_tagged, table_rows

NAME = "tiny-so8t"
Q8, Q4 = "gguf/tiny-so8t_Q8_0.gguf", "gguf/tiny-so8t_Q4_0.gguf"


@pytest.fixture()
def reg_root(pipeline_scenario, tmp_path) -> Path:
    return copy_registry(Path(pipeline_scenario["params"].model.registry_root), tmp_path / "registry")


def publish_variant(root: Path, main: str, parent: str = "v1") -> str:
    """A new raw candidate: the parent's files, serving ``main``."""
    from registry import Registry

    reg = Registry(root)
    src = reg.get(NAME, parent)
    files = {rel: p for rel, p in src.paths.items() if not rel.startswith("calibration/")}
    m = reg.publish(NAME, files, kinds={f.path: f.kind for f in src.manifest.files if f.path in files},
                    parameters={**src.manifest.parameters, "main_gguf": main, "variant": uuid.uuid4().hex},
                    lineage={"parents": [parent]}, description=f"variant serving {main}")
    return m.version


def cp_params(scenario, root: Path, work: Path, **kw):
    from release.params import CalibrateAndPromoteParams, ModelRef
    from release.ab import ABSettings

    p = scenario["params"]
    values = dict(model=ModelRef(name=NAME, registry_root=str(root)), work_dir=str(work), calibration=p.calibration,
                  gate=p.gate, ab=ABSettings(enabled=False), evaluation=p.evaluation)
    values.update(kw)
    return CalibrateAndPromoteParams(**values)


def run_tagged(flow_fn, params):
    from prefect import tags

    tag = f"t-{uuid.uuid4().hex[:8]}"
    with tags(tag):
        state = flow_fn(params, return_state=True)
    return state, tag


def holdout_ece(scenario, root: Path, version: str, work: Path) -> float:
    """ECE after calibration, computed with the library directly (same settings as the flow)."""
    from release.params import calibrate_config
    from registry import Registry
    from so8t.calibrate.stage import calibrate_gguf
    from release.smoke import main_gguf

    reg = Registry(root)
    m = reg.manifest(NAME, version)
    cfg = calibrate_config(scenario["params"].calibration, scenario["params"].gate,
                           reg.get(NAME, version).path(main_gguf(m)), work / f"direct-{version}")
    return calibrate_gguf(cfg).result.after.holdout.ece


def test_gate_failure_rejects_candidate_keeps_production_and_emits_event(pipeline_scenario, reg_root, tmp_path):
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from so8t.calibrate.promotion_gate import GateConfig

    v3 = publish_variant(reg_root, Q4)
    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, gate=GateConfig()))

    assert state.is_failed()
    reg = Registry(reg_root)
    st = reg.state(NAME)
    v4 = f"v{int(v3[1:]) + 1}"
    assert st.aliases["production"] == "v2"
    assert st.state_of(v3).value == "rejected" and st.state_of(v4).value == "rejected"
    assert reg.manifest(NAME, v4).lineage.parents == (v3,)
    gate = artifacts_of([r.id for r in flow_runs_tagged(tag)], "gate-verdict")[0]
    rows = table_rows(gate)
    failed = [row["criterion"] for row in rows if row["passed"] is False]
    assert failed and "failed the promotion gate on " + ", ".join(failed) in state.message
    assert "production unchanged (v2)" in state.message
    assert [e.action for e in reg.history(NAME)][-2:] == ["reject", "reject"]
    events = events_named("so8t.gate.failed", f"so8t.model.{NAME}")
    assert any(e.payload["version"] == v4 and e.payload["candidate"] == v3 for e in events)


def test_smoke_test_failure_rolls_production_back(pipeline_scenario, reg_root, tmp_path):
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from release.ab import ABSettings
    from release.smoke import SmokePrompt, SmokeSettings

    v3 = publish_variant(reg_root, Q4)
    v4 = f"v{int(v3[1:]) + 1}"
    smoke = SmokeSettings(prompts=(SmokePrompt(prompt="What is the capital of France?", expect="correct horse battery staple"),), n_predict=8)
    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, version=v3,
                                                             smoke=smoke, ab=ABSettings(limit=4, max_new_tokens=8)))
    assert state.is_failed()
    assert "smoke test" in state.message and "restored by the transaction rollback" in state.message
    reg = Registry(reg_root)
    assert reg.state(NAME).aliases["production"] == "v2"
    prod_history = [(e.action, e.from_version, e.to_version) for e in reg.history(NAME, "production")]
    assert prod_history[-2:] == [("promote", "v2", v4), ("rollback", v4, "v2")]
    assert reg.state(NAME).state_of(v4).value == "rejected"
    assert reg.state(NAME).state_of("v2").value == "production"
    runs = [r.id for r in flow_runs_tagged(tag)]
    ab = artifacts_of(runs, "ab-evaluation")[0]
    assert "skipped" not in (ab.description or "").lower()  # production exists and serves another GGUF: A/B ran


def test_production_failing_on_new_data_rolls_back_to_newest_passing_version(pipeline_scenario, reg_root, tmp_path):
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from so8t.calibrate.promotion_gate import GateConfig

    reg = Registry(reg_root)
    ece = {q: holdout_ece(pipeline_scenario, reg_root, v, tmp_path) for q, v in ((Q8, "v2"), (Q4, publish_variant(reg_root, Q4)))}
    assert abs(ece[Q8] - ece[Q4]) > 1e-6
    good, bad = sorted(ece, key=ece.get)
    v_good, v_bad = publish_variant(reg_root, good), publish_variant(reg_root, bad)
    reg.promote(NAME, v_good)
    reg.promote(NAME, v_bad)
    gate = GateConfig(ece_max=(ece[good] + ece[bad]) / 2, far_max=1.0, macro_f1_min=0.0)

    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, version="production", gate=gate))
    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.action, summary.version) == ("rolled_back", v_good)
    last = reg.history(NAME, "production")[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", v_bad, v_good)
    assert last.evidence["failed_production"] == v_bad
    events = events_named("so8t.production.rolled_back", f"so8t.model.{NAME}")
    assert any(e.payload["version"] == v_good and e.payload["from"] == v_bad for e in events)

    # none passing: production stays, the run fails and says so
    strict = GateConfig(ece_max=min(ece.values()) / 2, far_max=1.0, macro_f1_min=0.0)
    reg.promote(NAME, v_bad)
    state, _ = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, version="production", gate=strict))
    assert state.is_failed()
    assert "no earlier production version passes" in state.message and f"production stays {v_bad}" in state.message
    assert reg.state(NAME).aliases["production"] == v_bad


def test_manual_rollback_flow(pipeline_scenario, reg_root):
    from release.params import ModelRef, RollbackParams
    from flows.rollback import rollback
    from registry import Registry

    reg = Registry(reg_root)
    v3 = publish_variant(reg_root, Q4)
    reg.promote(NAME, v3)
    entry = rollback(RollbackParams(model=ModelRef(name=NAME, registry_root=str(reg_root)), reason="test"))
    assert (entry.from_version, entry.to_version) == (v3, "v2")
    assert reg.state(NAME).aliases["production"] == "v2"


def test_rollback_flow_waits_until_the_service_serves_the_restored_version(pipeline_scenario, reg_root):
    """A service follows production; a hand-promoted version without a calibration cannot be served (the
    service stays on v2, stale); the rollback flow restores v2 and waits until the service serves it. A
    service that cannot be reached fails the run with a clear message, the registry change standing."""
    from release.params import ModelRef, RollbackParams, ServiceSettings
    from flows.rollback import rollback
    from registry import Registry
    from tests.integration.test_serve import Running

    reg = Registry(reg_root)
    srv = Running(model=NAME, registry_root=str(reg_root))
    try:
        assert srv.client.get("/v1/model").json()["version"] == "v2"
        v3 = publish_variant(reg_root, Q4)  # no calibration: the service refuses it
        reg.promote(NAME, v3)
        deadline = time.monotonic() + 10
        while srv.client.get("/readyz").json()["error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        entry = rollback(RollbackParams(model=ModelRef(name=NAME, registry_root=str(reg_root)), reason="test",
                                        service=ServiceSettings(url=srv.url, timeout_s=10)))
        assert entry.to_version == "v2" and srv.client.get("/v1/model").json()["version"] == "v2"
    finally:
        srv.close()
    reg.promote(NAME, v3)
    state, _ = run_tagged(rollback, RollbackParams(model=ModelRef(name=NAME, registry_root=str(reg_root)),
                                                   service=ServiceSettings(url="http://127.0.0.1:9", timeout_s=1)))
    assert state.is_failed() and "does not serve tiny-so8t v2 after 1 s: unreachable" in state.message
    assert reg.state(NAME).aliases["production"] == "v2"


def test_ab_settings_mirror_the_ab_config_defaults():
    from so8t.ab.runner import ABConfig
    from release.ab import VERDICT_FIELDS, ABSettings

    for name in VERDICT_FIELDS:
        assert ABSettings.model_fields[name].default == ABConfig.model_fields[name].default, name


def test_failed_ab_with_must_pass_blocks_the_promotion(pipeline_scenario, reg_root, tmp_path):
    """A candidate that passes the calibration gate but fails A/B non-inferiority (must_pass) is not promoted."""
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from so8t.calibrate.promotion_gate import GateConfig
    from release.ab import ABSettings

    v3 = publish_variant(reg_root, Q4)
    lenient = GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0)
    # no model is a million times faster than another: the throughput check fails for certain
    ab = ABSettings(limit=4, max_new_tokens=4, must_pass=True, min_throughput_ratio=1e6)
    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, version=v3, gate=lenient, ab=ab))
    assert state.is_failed()
    assert "ab_non_inferiority" in state.message and "throughput" in state.message
    reg = Registry(reg_root)
    assert reg.state(NAME).aliases["production"] == "v2"
    assert reg.state(NAME).state_of(v3).value == "rejected"
    ab_art = artifacts_of([r.id for r in flow_runs_tagged(tag)], "ab-evaluation")[0]
    assert "A fails: " in (ab_art.description or "") and "throughput" in ab_art.description
    # the gate table shows the A/B verdict as the failed criterion, not a passing gate
    (gate,) = artifacts_of([r.id for r in flow_runs_tagged(tag)], "gate-verdict")
    rows = table_rows(gate)
    assert [r["criterion"] for r in rows if r["passed"] is False] == ["ab_non_inferiority"]
    assert "throughput" in rows[-1]["reason"] and "ab_non_inferiority" not in [r["criterion"] for r in rows[:-1]]
    assert "FAIL" in gate.description and "throughput" in gate.description

    # the same comparison without must_pass only informs: the candidate is promoted
    v5 = publish_variant(reg_root, Q4)
    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path / "again", version=v5,
                                                             gate=lenient, ab=ab.model_copy(update={"must_pass": False})))
    assert state.is_completed(), state.message
    (gate,) = artifacts_of([r.id for r in flow_runs_tagged(tag)], "gate-verdict")
    rows = table_rows(gate)
    assert rows[-1]["criterion"] == "ab_non_inferiority" and rows[-1]["passed"] == "not required (failed)"
    assert all(r["passed"] is True for r in rows[:-1]) and gate.description.endswith(": PASS")
    assert reg.state(NAME).aliases["production"] != "v2"


def test_recalibrated_production_that_still_passes_is_kept(pipeline_scenario, reg_root, tmp_path):
    """The nightly re-calibration's "kept" branch: production passes again, nothing moves."""
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from so8t.calibrate.promotion_gate import GateConfig

    reg = Registry(reg_root)
    before = [(e.action, e.to_version) for e in reg.history(NAME)]
    lenient = GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0)
    state, tag = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, reg_root, tmp_path, version="production", gate=lenient))
    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.action, summary.version, summary.candidate) == ("kept", "v2", None)
    assert reg.state(NAME).aliases["production"] == "v2"
    assert [(e.action, e.to_version) for e in reg.history(NAME)] == before  # no promotion, rollback or rejection
    (gate,) = artifacts_of([r.id for r in flow_runs_tagged(tag)], "gate-verdict")
    assert gate.description.endswith(": PASS")


def test_first_ever_promotion_with_failing_smoke_test_leaves_production_unset(pipeline_scenario, tmp_path):
    """No production yet: the smoke test runs before the promotion; its failure rejects the version."""
    from flows.calibrate_and_promote import calibrate_and_promote
    from registry import Registry
    from so8t.calibrate.promotion_gate import GateConfig
    from release.smoke import SmokePrompt, SmokeSettings

    src = Registry(pipeline_scenario["params"].model.registry_root).get(NAME, "v1")
    fresh = Registry(tmp_path / "fresh-registry")
    cand = fresh.publish(NAME, dict(src.paths), kinds={f.path: f.kind for f in src.manifest.files},
                         parameters=dict(src.manifest.parameters), description="first candidate")
    assert "production" not in fresh.state(NAME).aliases
    # a 512-token random model does not write this sentence in 8 tokens
    smoke = SmokeSettings(prompts=(SmokePrompt(prompt="Say the password.", expect="correct horse battery staple"),), n_predict=8)
    lenient = GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0)
    state, _ = run_tagged(calibrate_and_promote, cp_params(pipeline_scenario, tmp_path / "fresh-registry", tmp_path / "work",
                                                           gate=lenient, smoke=smoke))  # version omitted: the newest candidate
    assert state.is_failed()
    assert "smoke test" in state.message and "production is still unset" in state.message
    st = fresh.state(NAME)
    assert "production" not in st.aliases
    calibrated = f"v{int(cand.version[1:]) + 1}"
    assert st.state_of(calibrated).value == "rejected"
    assert [e.action for e in fresh.history(NAME)] == ["reject"]  # never promoted, nothing to roll back
